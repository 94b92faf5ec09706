// {name}: an aNode connector. Reads a JSON WebSocket feed and emits one event per message.

import { Connector, Event, Fatal, Manifest, Plan, decodeConfig, exportConnector, parse } from './anode-plugin.js';

const VERSION = '0.1.0';

export class App extends Connector {
  static manifest() {
    return new Manifest('{name}', VERSION, 'Every JSON message of a WebSocket feed', {
      configSchema: {
        type: 'object',
        // The JavaScript engine's heap settles near 84 MiB: more than the node's default 64.
        'x-anode-limits': { memory_mib: 128 },
        required: ['url'],
        additionalProperties: false,
        properties: {
          url: { type: 'string', description: 'The feed to connect to (ws:// or wss://)' },
          subscribe: { type: 'array', description: 'Messages to send after connecting' },
          id_field: { type: ['string', 'null'], description: 'Field holding the upstream id' },
        },
      },
      configExample: { url: 'ws://127.0.0.1:9100/binance/ws/btcusdt@trade', id_field: 't' },
    });
  }

  static open(config, _cursor) {
    // A bad config is fatal, with the reason; unknown fields are refused.
    const c = decodeConfig(config, { fields: { subscribe: [], id_field: 'id' }, required: ['url'] });
    if (typeof c.url !== 'string' || !/^wss?:\/\//.test(c.url)) {
      throw new Fatal('invalid config: `url` must be a ws:// or wss:// URL');
    }
    if (!Array.isArray(c.subscribe)) throw new Fatal('invalid config: `subscribe` must be an array');
    return new App(c);
  }

  constructor(config) {
    super();
    this.url = config.url;
    this.subscribe = config.subscribe;
    this.idField = config.id_field;
  }

  plan() {
    // Subscriptions are sent after every (re)connect: objects as JSON, strings as they are.
    return Plan.websocket(this.url, { onConnect: this.subscribe });
  }

  onFrame(frame, out) {
    const message = parse(frame.data); // bad JSON -> bad-input: this frame is skipped, not the batch
    let upstreamId;
    if (this.idField && message !== null && typeof message === 'object' && message[this.idField] != null) {
      const value = message[this.idField];
      upstreamId = typeof value === 'string' ? value : JSON.stringify(value);
    }
    out.emit(new Event('messages', message, { upstreamId }));
  }
}

// What the component exports as `anode:plugin/source` (component.js re-exports it).
export const source = exportConnector(App);
