"""Native tests of the plugin logic: `python3 -m unittest` (no build, no bindings needed)."""

import json
import unittest

from anode_plugin import (BadInput, Event, Fatal, HttpResponse, Retryable, WebSocketPlan,
                          from_concatenated, from_delimited, hex_decimal, parse_rfc3339_us,
                          response, run_frames)
from app import App


class ConnectorTest(unittest.TestCase):
    def test_one_event_per_message_and_bad_json_is_skipped(self):
        c = App.open('{"url":"ws://x","id_field":"t"}', None)
        out = run_frames(c, ['{"t":1,"p":"2"}', "{oops", '{"p":"3"}'])
        self.assertEqual(len(out.events), 2)
        self.assertEqual(out.events[0].stream, "messages")
        self.assertEqual(out.events[0].upstream_id, "1")
        self.assertEqual(json.loads(out.events[0].payload), {"t": 1, "p": "2"})
        self.assertIsNone(out.events[1].upstream_id)
        self.assertEqual(len(out.errors), 1)
        self.assertIsInstance(out.errors[0], BadInput)

    def test_upstream_id_defaults_to_the_id_field(self):
        c = App.open('{"url":"ws://x"}', None)
        out = run_frames(c, ['{"id":"a-1"}', "[1,2]"])
        self.assertEqual([e.upstream_id for e in out.events], ["a-1", None])

    def test_plan_is_a_websocket_with_the_subscriptions(self):
        c = App.open('{"url":"wss://feed/ws","subscribe":[{"op":"sub"},"ping"]}', None)
        plan = c.plan()
        self.assertIsInstance(plan, WebSocketPlan)
        self.assertEqual(plan.url, "wss://feed/ws")
        self.assertEqual(plan.on_connect, ['{"op":"sub"}', "ping"])

    def test_bad_config_is_fatal(self):
        for config in ["{", "{}", '{"url":"http://x"}', '{"url":"ws://x","nope":1}']:
            with self.assertRaises(Fatal, msg=config):
                App.open(config, None)

    def test_manifest(self):
        m = App.manifest()
        self.assertEqual(m.name, "{name}")
        json.loads(m.config_schema)
        App.open(m.config_example, None)


class HelpersTest(unittest.TestCase):
    def test_symbols(self):
        self.assertEqual(from_concatenated("BTCUSDT"), "BTC.USDT")
        self.assertEqual(from_concatenated("bnbbtc"), "BNB.BTC")
        self.assertIsNone(from_concatenated("XYZ"))
        self.assertEqual(from_delimited("XBT/USD", "/"), "BTC.USD")
        self.assertIsNone(from_delimited("ETHUSD", "-"))

    def test_time_and_hex(self):
        self.assertEqual(parse_rfc3339_us("2023-09-25T09:04:31.742648Z"), 1_695_632_671_742_648)
        self.assertEqual(parse_rfc3339_us("2022-12-31T21:43:02.136+02:00"), 1_672_515_782_136_000)
        with self.assertRaises(BadInput):
            parse_rfc3339_us("yesterday")
        self.assertEqual(hex_decimal("0xffffffffffffffffffffffffffffffff"), str(2**128 - 1))

    def test_http_statuses(self):
        self.assertEqual(response(HttpResponse.ok("t", "[1]")), [1])
        with self.assertRaises(Retryable):
            response(HttpResponse("t", 503, "slow down"))
        with self.assertRaises(BadInput):
            response(HttpResponse("t", 404, ""))

    def test_event_payload_is_compact_json(self):
        self.assertEqual(Event("s", {"a": 1}).payload, b'{"a":1}')


if __name__ == "__main__":
    unittest.main()
