"""Follow a cluster with anode_client and append what it yields to a file, one JSON line each,
until killed. The file is also the position store: the program's results and its position
are one write, so a program killed at any moment and started again continues exactly after
the last record it wrote (no gap, no repeat). Used by the host's client tests.

    python follow.py OUT URL [URL…] [--sources a,b]
"""

import asyncio
import json
import os
import sys

import anode_client


class OutputStore:
    """The position of the last record line in the output file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self):
        try:
            with open(self.path, "rb") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return None
        for line in reversed(lines):
            try:
                value = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if "position" in value:
                return value["position"]
        return None

    def save(self, position: str) -> None:
        pass  # written with the record


async def main() -> None:
    args = sys.argv[1:]
    sources = []
    if "--sources" in args:
        at = args.index("--sources")
        sources = args[at + 1].split(",")
        del args[at : at + 2]
    out, urls = args[0], args[1:]
    store = OutputStore(out)
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    async for item in anode_client.subscribe(
        urls, sources=sources, start="earliest", store=store, backoff=(0.05, 1.0)
    ):
        if isinstance(item, anode_client.Record):
            line = {
                "position": item.position,
                "id": item.id,
                "source": item.source,
                "upstream_id": item.upstream_id,
            }
        else:
            line = {"notice": item.kind, "data": item.data}
        os.write(fd, (json.dumps(line) + "\n").encode())


asyncio.run(main())
