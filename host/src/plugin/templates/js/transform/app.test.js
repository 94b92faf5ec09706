// Native tests of the plugin logic: `node --test` (no build, no component needed).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import vm from 'node:vm';

import { Event, Fatal, runProcess, runTick } from './anode-plugin.js';
import { App, transformer } from './app.js';

test('keeps only the configured stream', () => {
  const t = App.configure('{"stream":"trades"}');
  const out = runProcess(t, [new Event('trades', {}), new Event('ticker', {}), new Event('trades', { p: '1' })]);
  assert.deepEqual(out.map((e) => e.stream), ['trades', 'trades']);
  assert.deepEqual(runTick(t, 0), []);
});

test('a bad config is fatal', () => {
  for (const config of ['{', '{}', '{"stream":1}', '{"stream":"a","x":1}']) {
    assert.throws(() => App.configure(config), Fatal, config);
  }
});

test('manifest and the export glue', () => {
  const m = transformer.describe();
  assert.equal(m.name, '{name}');
  assert.equal(m.kind, 'transform');
  const step = transformer.configure(m.configExample);
  // The component boundary hands over bytes as a Uint8Array of another realm.
  const payload = vm.runInNewContext('new Uint8Array([123, 125])');
  const out = step.process([
    { stream: 'trades', key: 'BTC.USDT', upstreamId: '1', eventTime: 5n, payload },
    { stream: 'ticker', payload },
  ]);
  assert.equal(out.length, 1);
  assert.equal(out[0].eventTime, 5n);
  assert.equal(out[0].key, 'BTC.USDT');
  assert.equal(new TextDecoder().decode(out[0].payload), '{}');
  assert.deepEqual(step.tick(0n), []);
});
