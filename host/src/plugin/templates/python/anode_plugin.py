"""Write aNode plugins in Python (a mirror of the Rust `anode-plugin-sdk`).

An aNode plugin is a WebAssembly component (`anode:plugin@0.2.0`, world `connector` or
`transform`) built with componentize-py. This module keeps the plugin logic plain Python:

- subclass `Connector` (or `Transform`), implement `manifest`, `open`/`configure`, `plan`,
  `on_frame`/`on_response` (or `process`);
- raise `BadInput` (skip this input), `Retryable` (back off and retry) or `Fatal` (stop);
- in the app module, `Source = export_connector(MyConnector)` (or
  `Transformer = export_transform(MyTransform)`): that is what componentize-py exports.

Nothing here imports the generated bindings (`wit_world`) at module level, so the same code
runs under `python3 -m unittest` with no build step; `run_frames`, `run_responses` and
`run_process` drive a plugin exactly as the host does (batched calls, per-item errors).
"""

import json as _json
import math as _math
import re as _re
import sys as _sys
import time as _time

__all__ = [
    "PluginError", "BadInput", "Retryable", "Fatal",
    "Manifest", "Event", "Frame", "HttpResponse", "HttpRequest",
    "Plan", "WebSocketPlan", "HttpPlan", "Heartbeat", "Output",
    "Connector", "Transform",
    "parse", "decode_config", "str_field", "int_field", "decimal_field", "is_decimal", "at",
    "hex_int", "hex_decimal", "response",
    "pair", "from_delimited", "from_concatenated",
    "now_us", "ms_to_us", "parse_rfc3339_us", "log",
    "run_frames", "run_responses", "run_process", "run_tick",
    "export_connector", "export_transform",
]


# --- errors ---------------------------------------------------------------------------------


class PluginError(Exception):
    """A failure, shaped by what the host should do about it (WIT `plugin-error`)."""

    kind = "fatal"

    def __init__(self, message):
        super().__init__(str(message))
        self.message = str(message)

    def __eq__(self, other):
        return type(self) is type(other) and self.message == other.message

    def __hash__(self):
        return hash((self.kind, self.message))

    def __repr__(self):
        return "%s(%r)" % (type(self).__name__, self.message)


class BadInput(PluginError):
    """This input cannot be understood: the host counts it and skips it."""

    kind = "bad-input"


class Retryable(PluginError):
    """A passing failure: the host backs off and tries again."""

    kind = "retryable"


class Fatal(PluginError):
    """The source or transform cannot go on: the host stops it with this message."""

    kind = "fatal"


# --- plain mirrors of the WIT types ---------------------------------------------------------


def _to_json_bytes(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return _json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class Manifest:
    """What a plugin says about itself. `config_schema` and `config_example` may be given as
    Python values (serialised to JSON) or as JSON text."""

    def __init__(self, name, version, description, config_schema=None, config_example=None):
        self.name = name
        self.version = version
        self.description = description
        self.config_schema = _json_text(config_schema)
        self.config_example = _json_text(config_example)

    def __repr__(self):
        return "Manifest(%r, %r)" % (self.name, self.version)


def _json_text(value):
    if value is None:
        return "{}"
    if isinstance(value, str):
        return value
    return _json.dumps(value, separators=(",", ":"))


class Event:
    """One normalised record. `payload` is any JSON value (serialised compactly) or bytes."""

    __slots__ = ("stream", "key", "upstream_id", "event_time", "payload")

    def __init__(self, stream, payload, key=None, upstream_id=None, event_time=None):
        self.stream = stream
        self.payload = _to_json_bytes(payload)
        self.key = key
        self.upstream_id = None if upstream_id is None else str(upstream_id)
        self.event_time = None if event_time is None else int(event_time)

    def json(self):
        """The payload parsed back into a Python value."""
        return parse(self.payload)

    def __eq__(self, other):
        return isinstance(other, Event) and all(
            getattr(self, f) == getattr(other, f) for f in Event.__slots__
        )

    def __repr__(self):
        return "Event(%r, %r, key=%r, upstream_id=%r, event_time=%r)" % (
            self.stream, self.payload, self.key, self.upstream_id, self.event_time)


class Frame:
    """A WebSocket message as the host received it (`received_at` in µs)."""

    __slots__ = ("data", "received_at")

    def __init__(self, data, received_at=None):
        self.data = data.encode() if isinstance(data, str) else bytes(data)
        self.received_at = now_us() if received_at is None else received_at


class HttpResponse:
    """An HTTP response as the host received it; `tag` is that of the request."""

    __slots__ = ("tag", "status", "body", "received_at")

    def __init__(self, tag, status, body, received_at=None):
        self.tag = tag
        self.status = status
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.received_at = now_us() if received_at is None else received_at

    @classmethod
    def ok(cls, tag, body):
        return cls(tag, 200, body)


class HttpRequest:
    """An HTTP request the host makes for the plugin; `tag` comes back with the response."""

    def __init__(self, method, url, tag, headers=(), body=None):
        self.method = method
        self.url = url
        self.tag = tag
        self.headers = [(str(k), str(v)) for k, v in headers]
        self.body = body.encode() if isinstance(body, str) else body

    @classmethod
    def get(cls, url, tag):
        return cls("GET", url, tag)

    @classmethod
    def post_json(cls, url, body, tag):
        return cls("POST", url, tag, [("content-type", "application/json")], _to_json_bytes(body))

    def __repr__(self):
        return "HttpRequest(%r, %r, tag=%r)" % (self.method, self.url, self.tag)


class Heartbeat:
    """An application-level ping the host sends every `interval_ms`."""

    def __init__(self, interval_ms, message):
        self.interval_ms = int(interval_ms)
        self.message = message


class WebSocketPlan:
    """A WebSocket connection the host keeps open; `on_connect` is sent after every connect."""

    def __init__(self, url, on_connect=(), heartbeat=None):
        self.url = url
        self.on_connect = [m if isinstance(m, str) else _to_json_bytes(m).decode() for m in on_connect]
        self.heartbeat = heartbeat


class HttpPlan:
    """Requests the host makes every `interval_ms`."""

    def __init__(self, requests, interval_ms):
        self.requests = list(requests)
        self.interval_ms = int(interval_ms)


class Plan:
    """How the host reaches a source's data."""

    @staticmethod
    def websocket(url, on_connect=(), heartbeat=None):
        return WebSocketPlan(url, on_connect, heartbeat)

    @staticmethod
    def http(requests, interval_ms):
        return HttpPlan(requests, interval_ms)


class Output:
    """What a batch of frames or responses turned into (WIT `decoded`)."""

    def __init__(self):
        self.events = []
        self.errors = []
        self.requests = []
        self.replies = []
        self.cursor = None

    def emit(self, event):
        self.events.append(event)

    def request(self, request):
        self.requests.append(request)

    def reply(self, message):
        self.replies.append(message)

    def set_cursor(self, cursor):
        self.cursor = str(cursor)


# --- plugin base classes --------------------------------------------------------------------


class Connector:
    """A source connector: one instance per source (a WIT `session`).

    Implement `manifest` (classmethod), `open` (classmethod returning an instance), `plan`,
    and `on_frame` and/or `on_response`. `backfill` is optional.
    """

    @classmethod
    def manifest(cls):
        raise NotImplementedError("a connector must describe itself")

    @classmethod
    def open(cls, config, cursor):
        raise NotImplementedError("a connector must implement open(config, cursor)")

    def backfill(self):
        """HTTP requests to make as the source starts (default: none)."""
        return []

    def plan(self):
        raise NotImplementedError("a connector must implement plan()")

    def on_frame(self, frame, out):
        raise Fatal("this connector does not read WebSocket frames")

    def on_response(self, response, out):
        raise Fatal("this connector does not read HTTP responses")


class Transform:
    """A transform: one instance per place in a source's chain (a WIT `chain-step`)."""

    @classmethod
    def manifest(cls):
        raise NotImplementedError("a transform must describe itself")

    @classmethod
    def configure(cls, config):
        raise NotImplementedError("a transform must implement configure(config)")

    def process(self, events, out):
        raise NotImplementedError("a transform must implement process(events, out)")

    def tick(self, now_us, out):
        """Called when no event came for a while (default: nothing)."""


def _as_plugin_error(error, default=BadInput):
    """A per-item failure: plugin errors keep their kind; any other exception (a KeyError on a
    missing field, a ValueError on a bad number) is that item's bad input (`default`)."""
    if isinstance(error, PluginError):
        return error
    return default("%s: %s" % (type(error).__name__, error))


def run_frames(connector, frames):
    """Decode a batch of frames as the host does: one `on_frame` per frame; a frame that fails
    adds one error and the rest of the batch still counts. Frames may be given as text."""
    out = Output()
    for frame in frames:
        if not isinstance(frame, Frame):
            frame = Frame(frame)
        try:
            connector.on_frame(frame, out)
        except Exception as error:  # noqa: BLE001 - per-item errors are data
            out.errors.append(_as_plugin_error(error))
    return out


def run_responses(connector, responses):
    """Decode a batch of HTTP responses, like `run_frames`."""
    out = Output()
    for response_ in responses:
        try:
            connector.on_response(response_, out)
        except Exception as error:  # noqa: BLE001
            out.errors.append(_as_plugin_error(error))
    return out


def run_process(transform, events):
    """Run one batch through a transform; a raised error fails the whole batch."""
    out = []
    transform.process(list(events), out)
    return out


def run_tick(transform, now):
    out = []
    transform.tick(now, out)
    return out


# --- json -----------------------------------------------------------------------------------


def _reject_constant(name):
    raise ValueError("%s is not JSON" % name)


def parse(data):
    """Parse bytes or text as JSON; a failure is `BadInput`."""
    try:
        if isinstance(data, (bytes, bytearray)):
            data = bytes(data).decode("utf-8")
        return _json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadInput("not JSON: %s" % error) from None


def decode_config(config, fields=None, required=()):
    """Parse a plugin configuration; a failure is `Fatal` and names the problem.

    With `fields` (a dict of name -> default), unknown fields are refused (like serde's
    `deny_unknown_fields`), `required` fields must be present, and missing optional ones take
    their default. Returns a dict."""
    text = config if config and config.strip() else "{}"
    try:
        value = _json.loads(text, parse_constant=_reject_constant)
    except ValueError as error:
        raise Fatal("invalid config: %s" % error) from None
    if fields is None:
        return value
    if not isinstance(value, dict):
        raise Fatal("invalid config: expected a JSON object")
    unknown = sorted(set(value) - set(fields) - set(required))
    if unknown:
        raise Fatal("invalid config: unknown field `%s`, expected one of %s" % (
            unknown[0], ", ".join("`%s`" % f for f in list(required) + list(fields))))
    for name in required:
        if name not in value:
            raise Fatal("invalid config: missing field `%s`" % name)
    result = {name: default for name, default in fields.items()}
    result.update(value)
    return result


def str_field(value, name):
    """`value[name]` as a string, else `BadInput`."""
    field = value.get(name) if isinstance(value, dict) else None
    if not isinstance(field, str):
        raise BadInput("missing string field `%s`" % name)
    return field


def int_field(value, name):
    """`value[name]` as an integer (a JSON integer, or a string of digits), else `BadInput`."""
    field = value.get(name) if isinstance(value, dict) else None
    if isinstance(field, bool):
        field = None
    if isinstance(field, int):
        return field
    if isinstance(field, str) and _re.fullmatch(r"[+-]?[0-9]+", field):
        return int(field)
    raise BadInput("missing integer field `%s`" % name)


def is_decimal(s):
    """Whether `s` looks like a finite decimal number (`-12.5`, `0.001`, `3e-5`)."""
    if not isinstance(s, str) or not s or s.strip() != s:
        return False
    try:
        return _math.isfinite(float(s))
    except ValueError:
        return False


def decimal_field(value, name):
    """`value[name]` as a decimal kept as text: strings pass through, numbers are printed."""
    field = value.get(name) if isinstance(value, dict) else None
    if isinstance(field, str) and is_decimal(field):
        return field
    if isinstance(field, (int, float)) and not isinstance(field, bool):
        return _json.dumps(field)
    raise BadInput("missing decimal field `%s`" % name)


def at(value, pointer):
    """Follow a JSON pointer (`/data/items`); the empty pointer is the value itself."""
    if pointer == "":
        return value
    if not pointer.startswith("/"):
        raise BadInput("nothing at `%s`" % pointer)
    current = value
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(current, dict) and token in current:
            current = current[token]
        elif isinstance(current, list) and token.isdigit() and int(token) < len(current):
            current = current[int(token)]
        else:
            raise BadInput("nothing at `%s`" % pointer)
    return current


def hex_int(s):
    """A hex quantity (`0x1b4`) as an int, as EVM JSON-RPC sends them."""
    if not isinstance(s, str) or not s.startswith("0x") or not _re.fullmatch(r"[0-9a-fA-F]+", s[2:]):
        raise BadInput("`%s` is not a hex quantity" % (s,))
    return int(s[2:], 16)


def hex_decimal(s):
    """A hex quantity of any size as decimal text, so big quantities reach the record exactly."""
    return str(hex_int(s))


_QUOTED_BODY_BYTES = 200


def response(resp):
    """The JSON body of an HTTP response. 429 or 5xx is `Retryable`, any other status outside
    2xx is `BadInput` (both quote the start of the body); a body that is not JSON is `BadInput`."""
    status = resp.status
    if not 200 <= status < 300:
        quoted = bytes(resp.body[:_QUOTED_BODY_BYTES]).decode("utf-8", "replace").strip()
        message = "HTTP %d from upstream: %s" % (status, quoted)
        raise (Retryable if status == 429 or status >= 500 else BadInput)(message)
    return parse(resp.body)


# --- symbols --------------------------------------------------------------------------------

_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USD", "EUR", "GBP", "TRY", "BRL", "JPY",
           "BTC", "ETH", "BNB", "DAI")
_CANONICAL = {"XBT": "BTC", "XDG": "DOGE"}


def _canonical(asset):
    upper = asset.upper()
    return _CANONICAL.get(upper, upper)


def pair(base, quote):
    """`BASE.QUOTE` from two assets (`xbt`, `usd` -> `BTC.USD`)."""
    return "%s.%s" % (_canonical(base), _canonical(quote))


def from_delimited(symbol, separator):
    """Normalise a symbol with a separator (`ETH-USD`, `XBT/USD`); None if it has none."""
    base, found, quote = symbol.partition(separator)
    if not found or not base or not quote:
        return None
    return pair(base, quote)


def from_concatenated(symbol):
    """Normalise a concatenated symbol (`BTCUSDT` -> `BTC.USDT`) by its known quote currency;
    None when no known quote ends it."""
    upper = symbol.upper()
    for quote in _QUOTES:
        if upper.endswith(quote) and len(upper) > len(quote):
            return pair(upper[: -len(quote)], quote)
    return None


# --- time and host services -----------------------------------------------------------------

_host = None  # the generated `host` import, set by the export glue inside the component


def now_us():
    """The host's wall clock in microseconds since the Unix epoch (natively: the system's)."""
    if _host is not None:
        return _host.now()
    return _time.time_ns() // 1000


def ms_to_us(ms):
    return int(ms) * 1000


_LEVELS = ("trace", "debug", "info", "warn", "error")


def log(level, message):
    """Write a line to the node's log (`level`: trace, debug, info, warn, error); natively, to
    stderr."""
    if level not in _LEVELS:
        level = "info"
    if _host is not None:
        _host.log(getattr(_host.LogLevel, level.upper()), str(message))
    else:
        print("[%s] %s" % (level, message), file=_sys.stderr)


_RFC3339 = _re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})")


def _days_from_civil(y, m, d):
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_rfc3339_us(s):
    """An RFC 3339 timestamp (`2023-09-25T09:04:31.742648Z`, offsets honoured) as µs since
    the epoch; anything else is `BadInput`."""
    match = _RFC3339.fullmatch(s) if isinstance(s, str) else None
    if not match:
        raise BadInput("`%s` is not an RFC 3339 timestamp" % (s,))
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        raise BadInput("`%s` is not an RFC 3339 timestamp" % s)
    frac, zone = match.group(7), match.group(8)
    micros = int((frac or "0")[:6].ljust(6, "0"))
    offset = 0
    if zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset
    return seconds * 1_000_000 + micros


# --- component export glue (imports the generated bindings lazily) --------------------------


def _bind_host():
    global _host
    if _host is None:
        from wit_world.imports import host as generated_host

        _host = generated_host


def _wit_error(error):
    from componentize_py_types import Err
    from wit_world.imports import types

    variant = {
        "bad-input": types.PluginError_BadInput,
        "retryable": types.PluginError_Retryable,
    }.get(error.kind, types.PluginError_Fatal)
    return Err(variant(error.message))


def _wit_event(event):
    from wit_world.imports import types

    return types.Event(event.stream, event.key, event.upstream_id, event.event_time, event.payload)


def _wit_manifest(manifest, kind):
    from wit_world.imports import types

    return types.Manifest(
        manifest.name, manifest.version, getattr(types.PluginKind, kind), manifest.description,
        manifest.config_schema, manifest.config_example)


def _wit_request(request):
    from wit_world.exports import source

    return source.HttpRequest(request.method, request.url, list(request.headers), request.body,
                              request.tag)


def _wit_plan(plan):
    from wit_world.exports import source

    if isinstance(plan, HttpPlan):
        return source.Plan_Http(source.HttpPlan([_wit_request(r) for r in plan.requests],
                                                plan.interval_ms))
    heartbeat = None
    if plan.heartbeat is not None:
        heartbeat = source.Heartbeat(plan.heartbeat.interval_ms, plan.heartbeat.message)
    return source.Plan_Websocket(source.WebsocketPlan(plan.url, list(plan.on_connect), heartbeat))


def _wit_decoded(out):
    from wit_world.exports import source

    errors = [_wit_error(error).value for error in out.errors]
    return source.Decoded([_wit_event(e) for e in out.events], errors,
                          [_wit_request(r) for r in out.requests], list(out.replies), out.cursor)


def _open_error(error):
    """`open`/`configure` failures: plugin errors keep their kind, anything else is fatal."""
    return _wit_error(_as_plugin_error(error, Fatal))


def export_connector(connector_class):
    """The class componentize-py exports as `source`: assign it to `Source` in the app module."""

    class Session:
        def __init__(self, connector):
            self.connector = connector

        def backfill(self):
            return [_wit_request(r) for r in self.connector.backfill()]

        def plan(self):
            return _wit_plan(self.connector.plan())

        def on_frames(self, frames):
            return _wit_decoded(run_frames(self.connector, [Frame(f.data, f.received_at) for f in frames]))

        def on_responses(self, responses):
            items = [HttpResponse(r.tag, r.status, r.body, r.received_at) for r in responses]
            return _wit_decoded(run_responses(self.connector, items))

    class Source:
        def describe(self):
            _bind_host()
            return _wit_manifest(connector_class.manifest(), "CONNECTOR")

        def open(self, config, cursor):
            _bind_host()
            try:
                connector = connector_class.open(config, cursor)
            except Exception as error:  # noqa: BLE001
                raise _open_error(error) from None
            return Session(connector)

    return Source


def export_transform(transform_class):
    """The class componentize-py exports as `transformer`: assign it to `Transformer` in the
    app module."""

    def events_in(events):
        return [Event(e.stream, bytes(e.payload), e.key, e.upstream_id, e.event_time) for e in events]

    class ChainStep:
        def __init__(self, transform):
            self.transform = transform

        def process(self, events):
            try:
                return [_wit_event(e) for e in run_process(self.transform, events_in(events))]
            except PluginError as error:
                raise _wit_error(error) from None

        def tick(self, now):
            try:
                return [_wit_event(e) for e in run_tick(self.transform, now)]
            except PluginError as error:
                raise _wit_error(error) from None

    class Transformer:
        def describe(self):
            _bind_host()
            return _wit_manifest(transform_class.manifest(), "TRANSFORM")

        def configure(self, config):
            _bind_host()
            try:
                transform = transform_class.configure(config)
            except Exception as error:  # noqa: BLE001
                raise _open_error(error) from None
            return ChainStep(transform)

    return Transformer
