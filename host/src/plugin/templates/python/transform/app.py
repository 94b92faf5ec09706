"""{name}: an aNode transform. Keeps the events of one stream."""

from anode_plugin import Fatal, Manifest, Transform, decode_config, export_transform

VERSION = "0.1.0"


class App(Transform):
    @classmethod
    def manifest(cls):
        return Manifest(
            "{name}",
            VERSION,
            "Keeps one stream's events",
            config_schema={
                "type": "object",
                # The embedded CPython needs more than the node's default 64 MiB per instance.
                "x-anode-limits": {"memory_mib": 160},
                "required": ["stream"],
                "additionalProperties": False,
                "properties": {"stream": {"type": "string"}},
            },
            config_example={"stream": "trades"},
        )

    def __init__(self, stream):
        self.stream = stream

    @classmethod
    def configure(cls, config):
        config = decode_config(config, fields={}, required=["stream"])
        if not isinstance(config["stream"], str):
            raise Fatal("invalid config: `stream` must be a string")
        return cls(config["stream"])

    def process(self, events, out):
        out.extend(e for e in events if e.stream == self.stream)


# What componentize-py exports as `anode:plugin/transformer`.
Transformer = export_transform(App)
