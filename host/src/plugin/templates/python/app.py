"""{name}: an aNode connector. Reads a JSON WebSocket feed and emits one event per message."""

import json

from anode_plugin import Connector, Event, Fatal, Manifest, Plan, decode_config, export_connector, parse

VERSION = "0.1.0"


class App(Connector):
    @classmethod
    def manifest(cls):
        return Manifest(
            "{name}",
            VERSION,
            "Every JSON message of a WebSocket feed",
            config_schema={
                "type": "object",
                # The embedded CPython needs more than the node's default 64 MiB per instance.
                "x-anode-limits": {"memory_mib": 160},
                "required": ["url"],
                "additionalProperties": False,
                "properties": {
                    "url": {"type": "string", "description": "The feed to connect to (ws:// or wss://)"},
                    "subscribe": {"type": "array", "description": "Messages to send after connecting"},
                    "id_field": {"type": ["string", "null"], "description": "Field holding the upstream id"},
                },
            },
            config_example={"url": "ws://127.0.0.1:9100/binance/ws/btcusdt@trade", "id_field": "t"},
        )

    def __init__(self, config):
        self.url = config["url"]
        self.subscribe = config["subscribe"]
        self.id_field = config["id_field"]

    @classmethod
    def open(cls, config, cursor):
        # A bad config is fatal, with the reason; unknown fields are refused.
        config = decode_config(config, fields={"subscribe": [], "id_field": "id"}, required=["url"])
        if not isinstance(config["url"], str) or not config["url"].startswith(("ws://", "wss://")):
            raise Fatal("invalid config: `url` must be a ws:// or wss:// URL")
        return cls(config)

    def plan(self):
        # Subscriptions are sent after every (re)connect: objects as JSON, strings as they are.
        return Plan.websocket(self.url, on_connect=self.subscribe)

    def on_frame(self, frame, out):
        message = parse(frame.data)  # bad JSON -> bad-input: this frame is skipped, not the batch
        upstream_id = None
        if self.id_field and isinstance(message, dict) and message.get(self.id_field) is not None:
            value = message[self.id_field]
            upstream_id = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        out.emit(Event("messages", message, upstream_id=upstream_id))


# What componentize-py exports as `anode:plugin/source`.
Source = export_connector(App)
