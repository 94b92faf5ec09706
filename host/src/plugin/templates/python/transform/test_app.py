"""Native tests of the plugin logic: `python3 -m unittest` (no build, no bindings needed)."""

import json
import unittest

from anode_plugin import Event, Fatal, run_process, run_tick
from app import App


class TransformTest(unittest.TestCase):
    def test_keeps_only_the_configured_stream(self):
        t = App.configure('{"stream":"trades"}')
        out = run_process(t, [Event("trades", {}), Event("ticker", {}), Event("trades", {"p": "1"})])
        self.assertEqual([e.stream for e in out], ["trades", "trades"])
        self.assertEqual(run_tick(t, 0), [])

    def test_bad_config_is_fatal(self):
        for config in ["{", "{}", '{"stream":1}', '{"stream":"a","x":1}']:
            with self.assertRaises(Fatal, msg=config):
                App.configure(config)

    def test_manifest(self):
        m = App.manifest()
        self.assertEqual(m.name, "{name}")
        json.loads(m.config_schema)
        App.configure(m.config_example)


if __name__ == "__main__":
    unittest.main()
