// Native tests of the plugin logic: `node --test` (no build, no component needed).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import vm from 'node:vm';

import {
  BadInput, Event, Fatal, HttpResponse, Retryable, fromConcatenated, fromDelimited, hexDecimal,
  parseRfc3339Us, response, runFrames,
} from './anode-plugin.js';
import { App, source } from './app.js';

test('one event per message, and bad JSON is skipped', () => {
  const c = App.open('{"url":"ws://x","id_field":"t"}');
  const out = runFrames(c, ['{"t":1,"p":"2"}', '{oops', '{"p":"3"}']);
  assert.equal(out.events.length, 2);
  assert.equal(out.events[0].stream, 'messages');
  assert.equal(out.events[0].upstreamId, '1');
  assert.deepEqual(JSON.parse(new TextDecoder().decode(out.events[0].payload)), { t: 1, p: '2' });
  assert.equal(out.events[1].upstreamId, undefined);
  assert.equal(out.errors.length, 1);
  assert.ok(out.errors[0] instanceof BadInput);
});

test('upstream id defaults to the `id` field', () => {
  const out = runFrames(App.open('{"url":"ws://x"}'), ['{"id":"a-1"}', '[1,2]']);
  assert.deepEqual(out.events.map((e) => e.upstreamId), ['a-1', undefined]);
});

test('plan is a websocket with the subscriptions', () => {
  const plan = App.open('{"url":"wss://feed/ws","subscribe":[{"op":"sub"},"ping"]}').plan();
  assert.equal(plan.tag, 'websocket');
  assert.equal(plan.url, 'wss://feed/ws');
  assert.deepEqual(plan.onConnect, ['{"op":"sub"}', 'ping']);
});

test('a bad config is fatal', () => {
  for (const config of ['{', '{}', '{"url":"http://x"}', '{"url":"ws://x","nope":1}']) {
    assert.throws(() => App.open(config), Fatal, config);
  }
});

test('manifest and the export glue', () => {
  const m = source.describe();
  assert.equal(m.name, '{name}');
  assert.equal(m.kind, 'connector');
  JSON.parse(m.configSchema);
  const session = source.open(m.configExample, undefined);
  assert.equal(session.plan().tag, 'websocket');
  const decoded = session.onFrames([{ data: new TextEncoder().encode('{"t":5}'), receivedAt: 1n }, { data: new Uint8Array([123]), receivedAt: 2n }]);
  assert.equal(decoded.events.length, 1);
  assert.equal(decoded.events[0].upstreamId, '5');
  assert.equal(decoded.errors[0].tag, 'bad-input');
  assert.throws(() => source.open('{}'), (e) => e.payload.tag === 'fatal');
});

test('helpers mirror the Rust SDK', () => {
  assert.equal(fromConcatenated('BTCUSDT'), 'BTC.USDT');
  assert.equal(fromConcatenated('bnbbtc'), 'BNB.BTC');
  assert.equal(fromConcatenated('XYZ'), undefined);
  assert.equal(fromDelimited('XBT/USD', '/'), 'BTC.USD');
  assert.equal(fromDelimited('ETHUSD', '-'), undefined);
  assert.equal(parseRfc3339Us('2023-09-25T09:04:31.742648Z'), 1_695_632_671_742_648);
  assert.equal(parseRfc3339Us('2022-12-31T21:43:02.136+02:00'), 1_672_515_782_136_000);
  assert.throws(() => parseRfc3339Us('yesterday'), BadInput);
  assert.equal(hexDecimal('0xffffffffffffffffffffffffffffffff'), (2n ** 128n - 1n).toString());
  assert.deepEqual(response(HttpResponse.ok('t', '[1]')), [1]);
  assert.throws(() => response(new HttpResponse('t', 503, 'slow down')), Retryable);
  assert.throws(() => response(new HttpResponse('t', 404, '')), BadInput);
  assert.equal(new TextDecoder().decode(new Event('s', { a: 1 }).payload), '{"a":1}');
  // Bytes of another realm (as the component boundary gives them) stay bytes.
  assert.equal(new TextDecoder().decode(new Event('s', vm.runInNewContext('new Uint8Array([91, 93])')).payload), '[]');
});
