// Write aNode plugins in JavaScript (a mirror of the Rust `anode-plugin-sdk`).
//
// An aNode plugin is a WebAssembly component (`anode:plugin@0.2.0`, world `connector` or
// `transform`) built with componentize-js (`jco componentize`). This module keeps the plugin
// logic plain JavaScript:
//
// - extend `Connector` (or `Transform`): static `manifest()`, static `open(config, cursor)` /
//   `configure(config)`, `plan()`, `onFrame(frame, out)` / `onResponse(response, out)` (or
//   `process(events, out)`);
// - throw `BadInput` (skip this input), `Retryable` (back off and retry) or `Fatal` (stop);
// - `export const source = exportConnector(MyConnector)` (or
//   `export const transformer = exportTransform(MyTransform)`) is what the component exports.
//
// Nothing here imports the WIT host interface: `component.js` (the build entry) does, and
// hands it over with `setHost`, so this module and the plugin's logic run under `node --test`
// with no build; `runFrames`, `runResponses` and `runProcess` drive a plugin as the host does.
//
// Timestamps are microseconds since the epoch as plain numbers (exact until the year 2255);
// the glue converts them from and to the BigInt the component boundary uses for s64.

// --- errors ---------------------------------------------------------------------------------

/** A failure, shaped by what the host should do about it (WIT `plugin-error`). */
export class PluginError extends Error {
  get kind() {
    return 'fatal';
  }
}

/** This input cannot be understood: the host counts it and skips it. */
export class BadInput extends PluginError {
  get kind() {
    return 'bad-input';
  }
}

/** A passing failure: the host backs off and tries again. */
export class Retryable extends PluginError {
  get kind() {
    return 'retryable';
  }
}

/** The source or transform cannot go on: the host stops it with this message. */
export class Fatal extends PluginError {
  get kind() {
    return 'fatal';
  }
}

// --- plain mirrors of the WIT types ---------------------------------------------------------

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

// Bytes from the component boundary are typed arrays that need not be `instanceof Uint8Array`
// (StarlingMonkey lifts `list<u8>` into another typed-array class): view any of them as bytes.
function asBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  return undefined;
}

function jsonBytes(value) {
  return asBytes(value) ?? encoder.encode(JSON.stringify(value));
}

function bytesOf(data) {
  return typeof data === 'string' ? encoder.encode(data) : asBytes(data) ?? new Uint8Array(data);
}

function jsonText(value) {
  if (value === undefined || value === null) return '{}';
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/** What a plugin says about itself; schema and example may be values or JSON text. */
export class Manifest {
  constructor(name, version, description, { configSchema, configExample } = {}) {
    this.name = name;
    this.version = version;
    this.description = description;
    this.configSchema = jsonText(configSchema);
    this.configExample = jsonText(configExample);
  }
}

/** One normalised record; `payload` is any JSON value (or the bytes of one). */
export class Event {
  constructor(stream, payload, { key, upstreamId, eventTime } = {}) {
    this.stream = stream;
    this.payload = jsonBytes(payload);
    this.key = key ?? undefined;
    this.upstreamId = upstreamId === undefined || upstreamId === null ? undefined : String(upstreamId);
    this.eventTime = eventTime === undefined || eventTime === null ? undefined : Number(eventTime);
  }

  /** The payload parsed back into a value. */
  json() {
    return parse(this.payload);
  }
}

/** A WebSocket message as the host received it (`receivedAt` in µs). */
export class Frame {
  constructor(data, receivedAt = nowUs()) {
    this.data = bytesOf(data);
    this.receivedAt = Number(receivedAt);
  }

  /** The message as text. */
  text() {
    return new TextDecoder().decode(this.data);
  }
}

/** An HTTP response as the host received it; `tag` is that of the request. */
export class HttpResponse {
  constructor(tag, status, body, receivedAt = nowUs()) {
    this.tag = tag;
    this.status = status;
    this.body = bytesOf(body);
    this.receivedAt = Number(receivedAt);
  }

  static ok(tag, body) {
    return new HttpResponse(tag, 200, body);
  }
}

/** An HTTP request the host makes for the plugin; `tag` comes back with the response. */
export class HttpRequest {
  constructor(method, url, tag, { headers = [], body } = {}) {
    this.method = method;
    this.url = url;
    this.tag = tag;
    this.headers = headers.map(([k, v]) => [String(k), String(v)]);
    this.body = body === undefined || body === null ? undefined : bytesOf(body);
  }

  static get(url, tag) {
    return new HttpRequest('GET', url, tag);
  }

  static postJson(url, body, tag) {
    return new HttpRequest('POST', url, tag, {
      headers: [['content-type', 'application/json']],
      body: jsonBytes(body),
    });
  }
}

/** How the host reaches a source's data. */
export const Plan = {
  /** A WebSocket; `onConnect` messages (objects are sent as JSON) follow every connect. */
  websocket(url, { onConnect = [], heartbeat } = {}) {
    return {
      tag: 'websocket',
      url,
      onConnect: onConnect.map((m) => (typeof m === 'string' ? m : JSON.stringify(m))),
      heartbeat: heartbeat ? { intervalMs: heartbeat.intervalMs, message: heartbeat.message } : undefined,
    };
  },
  /** `requests` every `intervalMs`. */
  http(requests, intervalMs) {
    return { tag: 'http', requests: [...requests], intervalMs };
  },
};

/** What a batch of frames or responses turned into (WIT `decoded`). */
export class Output {
  constructor() {
    this.events = [];
    this.errors = [];
    this.requests = [];
    this.replies = [];
    this.cursor = undefined;
  }

  emit(event) {
    this.events.push(event);
  }

  request(request) {
    this.requests.push(request);
  }

  reply(message) {
    this.replies.push(message);
  }

  setCursor(cursor) {
    this.cursor = String(cursor);
  }
}

// --- plugin base classes --------------------------------------------------------------------

/** A source connector: one instance per source (a WIT `session`). */
export class Connector {
  static manifest() {
    throw new Error('a connector must describe itself');
  }

  static open(_config, _cursor) {
    throw new Error('a connector must implement static open(config, cursor)');
  }

  /** HTTP requests to make as the source starts (default: none). */
  backfill() {
    return [];
  }

  plan() {
    throw new Error('a connector must implement plan()');
  }

  onFrame(_frame, _out) {
    throw new Fatal('this connector does not read WebSocket frames');
  }

  onResponse(_response, _out) {
    throw new Fatal('this connector does not read HTTP responses');
  }
}

/** A transform: one instance per place in a source's chain (a WIT `chain-step`). */
export class Transform {
  static manifest() {
    throw new Error('a transform must describe itself');
  }

  static configure(_config) {
    throw new Error('a transform must implement static configure(config)');
  }

  process(_events, _out) {
    throw new Error('a transform must implement process(events, out)');
  }

  /** Called when no event came for a while (default: nothing). */
  tick(_nowUs, _out) {}
}

/** A per-item failure: plugin errors keep their kind; any other exception (a TypeError on a
 * missing field) is that item's bad input (or `Default`). */
function asPluginError(error, Default = BadInput) {
  if (error instanceof PluginError) return error;
  const errorName = error && error.name ? error.name : 'Error';
  const message = error && error.message !== undefined ? error.message : String(error);
  return new Default(`${errorName}: ${message}`);
}

/** Decode a batch of frames as the host does: one `onFrame` per frame; a frame that fails adds
 * one error and the rest of the batch still counts. Frames may be given as text. */
export function runFrames(connector, frames) {
  const out = new Output();
  for (const item of frames) {
    const frame = item instanceof Frame ? item : new Frame(item);
    try {
      connector.onFrame(frame, out);
    } catch (error) {
      out.errors.push(asPluginError(error));
    }
  }
  return out;
}

/** Decode a batch of HTTP responses, like `runFrames`. */
export function runResponses(connector, responses) {
  const out = new Output();
  for (const response of responses) {
    try {
      connector.onResponse(response, out);
    } catch (error) {
      out.errors.push(asPluginError(error));
    }
  }
  return out;
}

/** Run one batch through a transform; a thrown error fails the whole batch. */
export function runProcess(transform, events) {
  const out = [];
  transform.process([...events], out);
  return out;
}

export function runTick(transform, now) {
  const out = [];
  transform.tick(now, out);
  return out;
}

// --- json -----------------------------------------------------------------------------------

/** Parse bytes or text as JSON; a failure is `BadInput`. */
export function parse(data) {
  try {
    const text = typeof data === 'string' ? data : decoder.decode(data);
    return JSON.parse(text);
  } catch (error) {
    throw new BadInput(`not JSON: ${error.message}`);
  }
}

/** Parse a plugin configuration; a failure is `Fatal` and names the problem.
 *
 * With `fields` (name -> default), unknown fields are refused (like serde's
 * `deny_unknown_fields`), `required` fields must be present and missing optional ones take
 * their default. */
export function decodeConfig(config, { fields, required = [] } = {}) {
  const text = config && config.trim() ? config : '{}';
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new Fatal(`invalid config: ${error.message}`);
  }
  if (!fields) return value;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new Fatal('invalid config: expected a JSON object');
  }
  const known = new Set([...required, ...Object.keys(fields)]);
  const unknown = Object.keys(value).filter((k) => !known.has(k)).sort();
  if (unknown.length > 0) {
    throw new Fatal(`invalid config: unknown field \`${unknown[0]}\`, expected one of ${[...known].map((f) => `\`${f}\``).join(', ')}`);
  }
  for (const field of required) {
    if (!(field in value)) throw new Fatal(`invalid config: missing field \`${field}\``);
  }
  return { ...structuredClone(fields), ...value };
}

function field(value, name) {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? value[name] : undefined;
}

/** `value[name]` as a string, else `BadInput`. */
export function strField(value, fieldName) {
  const f = field(value, fieldName);
  if (typeof f !== 'string') throw new BadInput(`missing string field \`${fieldName}\``);
  return f;
}

/** `value[name]` as an integer (a JSON integer or a string of digits), else `BadInput`.
 * Integers beyond 2^53 come back as BigInt when given as strings. */
export function intField(value, fieldName) {
  const f = field(value, fieldName);
  if (typeof f === 'number' && Number.isInteger(f)) return f;
  if (typeof f === 'string' && /^[+-]?[0-9]+$/.test(f)) {
    const n = Number(f);
    return Number.isSafeInteger(n) ? n : BigInt(f);
  }
  throw new BadInput(`missing integer field \`${fieldName}\``);
}

/** Whether `s` looks like a finite decimal number (`-12.5`, `0.001`, `3e-5`). */
export function isDecimal(s) {
  return typeof s === 'string' && /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(s) && Number.isFinite(Number(s));
}

/** `value[name]` as a decimal kept as text: strings pass through, numbers are printed. */
export function decimalField(value, fieldName) {
  const f = field(value, fieldName);
  if (typeof f === 'string' && isDecimal(f)) return f;
  if (typeof f === 'number' && Number.isFinite(f)) return String(f);
  throw new BadInput(`missing decimal field \`${fieldName}\``);
}

/** Follow a JSON pointer (`/data/items`); the empty pointer is the value itself. */
export function at(value, pointer) {
  if (pointer === '') return value;
  if (!pointer.startsWith('/')) throw new BadInput(`nothing at \`${pointer}\``);
  let current = value;
  for (const raw of pointer.slice(1).split('/')) {
    const token = raw.replaceAll('~1', '/').replaceAll('~0', '~');
    if (Array.isArray(current) && /^\d+$/.test(token) && Number(token) < current.length) {
      current = current[Number(token)];
    } else if (current !== null && typeof current === 'object' && !Array.isArray(current) && Object.hasOwn(current, token)) {
      current = current[token];
    } else {
      throw new BadInput(`nothing at \`${pointer}\``);
    }
  }
  return current;
}

/** A hex quantity (`0x1b4`) as a BigInt, as EVM JSON-RPC sends them. */
export function hexInt(s) {
  if (typeof s !== 'string' || !/^0x[0-9a-fA-F]+$/.test(s)) {
    throw new BadInput(`\`${s}\` is not a hex quantity`);
  }
  return BigInt(s);
}

/** A hex quantity of any size as decimal text, so big quantities reach the record exactly. */
export function hexDecimal(s) {
  return hexInt(s).toString();
}

const QUOTED_BODY_BYTES = 200;

/** The JSON body of an HTTP response. 429 or 5xx is `Retryable`, any other status outside 2xx
 * is `BadInput` (both quote the start of the body); a body that is not JSON is `BadInput`. */
export function response(resp) {
  const { status } = resp;
  if (status < 200 || status >= 300) {
    const quoted = new TextDecoder().decode(resp.body.subarray(0, QUOTED_BODY_BYTES)).trim();
    const message = `HTTP ${status} from upstream: ${quoted}`;
    throw status === 429 || status >= 500 ? new Retryable(message) : new BadInput(message);
  }
  return parse(resp.body);
}

// --- symbols --------------------------------------------------------------------------------

const QUOTES = ['FDUSD', 'USDT', 'USDC', 'BUSD', 'TUSD', 'USD', 'EUR', 'GBP', 'TRY', 'BRL', 'JPY', 'BTC', 'ETH', 'BNB', 'DAI'];
const CANONICAL = { XBT: 'BTC', XDG: 'DOGE' };

function canonical(asset) {
  const upper = asset.toUpperCase();
  return CANONICAL[upper] ?? upper;
}

/** `BASE.QUOTE` from two assets (`xbt`, `usd` -> `BTC.USD`). */
export function pair(base, quote) {
  return `${canonical(base)}.${canonical(quote)}`;
}

/** Normalise a symbol with a separator (`ETH-USD`, `XBT/USD`); undefined if it has none. */
export function fromDelimited(symbol, separator) {
  const i = symbol.indexOf(separator);
  if (i <= 0 || i === symbol.length - separator.length) return undefined;
  return pair(symbol.slice(0, i), symbol.slice(i + separator.length));
}

/** Normalise a concatenated symbol (`BTCUSDT` -> `BTC.USDT`) by its known quote currency;
 * undefined when no known quote ends it. */
export function fromConcatenated(symbol) {
  const upper = symbol.toUpperCase();
  for (const quote of QUOTES) {
    if (upper.endsWith(quote) && upper.length > quote.length) {
      return pair(upper.slice(0, -quote.length), quote);
    }
  }
  return undefined;
}

// --- time and host services -----------------------------------------------------------------

let host; // the WIT `anode:plugin/host` import, handed over by component.js

/** Give the helper the component's host import (`{ log, now }`); called by component.js. */
export function setHost(imports) {
  host = imports;
}

/** The host's wall clock in µs since the epoch (natively: the system's). */
export function nowUs() {
  return host ? Number(host.now()) : Date.now() * 1000;
}

export function msToUs(ms) {
  return Number(ms) * 1000;
}

const LEVELS = new Set(['trace', 'debug', 'info', 'warn', 'error']);

/** Write a line to the node's log (`level`: trace, debug, info, warn, error); natively, to
 * stderr. */
export function log(level, message) {
  const lvl = LEVELS.has(level) ? level : 'info';
  if (host) host.log(lvl, String(message));
  else console.error(`[${lvl}] ${message}`);
}

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$/;

/** An RFC 3339 timestamp (`2023-09-25T09:04:31.742648Z`, offsets honoured) as µs since the
 * epoch; anything else is `BadInput`. */
export function parseRfc3339Us(s) {
  const m = typeof s === 'string' ? RFC3339.exec(s) : null;
  const bad = () => new BadInput(`\`${s}\` is not an RFC 3339 timestamp`);
  if (!m) throw bad();
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number);
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60) throw bad();
  const micros = Number((m[7] ?? '0').slice(0, 6).padEnd(6, '0'));
  let offset = 0;
  if (m[8] !== 'Z' && m[8] !== 'z') {
    const sign = m[8][0] === '-' ? -1 : 1;
    offset = sign * (Number(m[8].slice(1, 3)) * 3600 + Number(m[8].slice(4, 6)) * 60);
  }
  const ms = Date.UTC(year, month - 1, day, hour, minute, second) - offset * 1000;
  return ms * 1000 + micros;
}

// --- component export glue ------------------------------------------------------------------

const big = (n) => (n === undefined || n === null ? undefined : BigInt(n));

function witError(error) {
  return { tag: error.kind, val: error.message };
}

/** A thrown value the component boundary turns into `result::err(plugin-error)`. */
function witThrow(error) {
  // componentize-js lowers the `payload` of a thrown value as the error of a `result`.
  const e = new Error(error.message);
  e.payload = witError(error);
  return e;
}

function witEvent(e) {
  return {
    stream: e.stream,
    key: e.key ?? undefined,
    upstreamId: e.upstreamId ?? undefined,
    eventTime: big(e.eventTime),
    payload: jsonBytes(e.payload),
  };
}

function witManifest(m, kind) {
  return {
    name: m.name,
    version: m.version,
    kind,
    description: m.description,
    configSchema: m.configSchema,
    configExample: m.configExample,
  };
}

function witRequest(r) {
  return { method: r.method, url: r.url, headers: r.headers, body: r.body, tag: r.tag };
}

function witPlan(p) {
  if (p.tag === 'http') {
    return { tag: 'http', val: { requests: p.requests.map(witRequest), intervalMs: p.intervalMs } };
  }
  return { tag: 'websocket', val: { url: p.url, onConnect: p.onConnect, heartbeat: p.heartbeat } };
}

function witDecoded(out) {
  return {
    events: out.events.map(witEvent),
    errors: out.errors.map(witError),
    requests: out.requests.map(witRequest),
    replies: out.replies,
    cursor: out.cursor,
  };
}

/** The `source` export of a connector component: `export const source = exportConnector(C)`. */
export function exportConnector(ConnectorClass) {
  class Session {
    constructor(connector) {
      this.connector = connector;
    }

    backfill() {
      return this.connector.backfill().map(witRequest);
    }

    plan() {
      return witPlan(this.connector.plan());
    }

    onFrames(frames) {
      const items = frames.map((f) => new Frame(f.data, f.receivedAt));
      return witDecoded(runFrames(this.connector, items));
    }

    onResponses(responses) {
      const items = responses.map((r) => new HttpResponse(r.tag, r.status, r.body, r.receivedAt));
      return witDecoded(runResponses(this.connector, items));
    }
  }
  return {
    Session,
    describe() {
      return witManifest(ConnectorClass.manifest(), 'connector');
    },
    open(config, cursor) {
      let connector;
      try {
        connector = ConnectorClass.open(config, cursor ?? undefined);
      } catch (error) {
        throw witThrow(asPluginError(error, Fatal));
      }
      return new Session(connector);
    },
  };
}

/** The `transformer` export of a transform component:
 * `export const transformer = exportTransform(T)`. */
export function exportTransform(TransformClass) {
  const eventsIn = (events) =>
    events.map((e) => new Event(e.stream, e.payload, { key: e.key, upstreamId: e.upstreamId, eventTime: e.eventTime }));
  const guarded = (f) => {
    try {
      return f().map(witEvent);
    } catch (error) {
      if (error instanceof PluginError) throw witThrow(error);
      throw error;
    }
  };
  class ChainStep {
    constructor(transform) {
      this.transform = transform;
    }

    process(events) {
      return guarded(() => runProcess(this.transform, eventsIn(events)));
    }

    tick(now) {
      return guarded(() => runTick(this.transform, Number(now)));
    }
  }
  return {
    ChainStep,
    describe() {
      return witManifest(TransformClass.manifest(), 'transform');
    },
    configure(config) {
      let transform;
      try {
        transform = TransformClass.configure(config);
      } catch (error) {
        throw witThrow(asPluginError(error, Fatal));
      }
      return new ChainStep(transform);
    },
  };
}
