// {name}: an aNode transform. Keeps the events of one stream.

import { Fatal, Manifest, Transform, decodeConfig, exportTransform } from './anode-plugin.js';

const VERSION = '0.1.0';

export class App extends Transform {
  static manifest() {
    return new Manifest('{name}', VERSION, "Keeps one stream's events", {
      configSchema: {
        type: 'object',
        // The JavaScript engine's heap settles near 84 MiB: more than the node's default 64.
        'x-anode-limits': { memory_mib: 128 },
        required: ['stream'],
        additionalProperties: false,
        properties: { stream: { type: 'string' } },
      },
      configExample: { stream: 'trades' },
    });
  }

  static configure(config) {
    const c = decodeConfig(config, { fields: {}, required: ['stream'] });
    if (typeof c.stream !== 'string') throw new Fatal('invalid config: `stream` must be a string');
    return new App(c.stream);
  }

  constructor(stream) {
    super();
    this.stream = stream;
  }

  process(events, out) {
    out.push(...events.filter((e) => e.stream === this.stream));
  }
}

// What the component exports as `anode:plugin/transformer` (component.js re-exports it).
export const transformer = exportTransform(App);
