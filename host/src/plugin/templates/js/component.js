// The component's entry (what `npm run build` componentizes): hands the WIT host import to the
// helper, then exports the plugin. Plugin code lives in app.js, which runs under `node --test`
// without this file (node cannot resolve `anode:plugin/...` imports).

import { log, now } from 'anode:plugin/host@0.2.0';
import { setHost } from './anode-plugin.js';

setHost({ log, now });

export * from './app.js';
