"""A subscriber client for aNode.

``subscribe()`` reads the records a cluster stores, in order, from a node's ``/ws`` with
``since=``: every record carries its position in the durable log, and after any drop (the
socket closed, the node restarted, the network cut) the client reconnects, to the same node or
another, with the last position it handed out, so nothing is missed and nothing repeats. With a
position store the caller supplies, a restarted program continues where it stopped.

    async for item in anode_client.subscribe(["ws://127.0.0.1:7400"], sources=["binance-btc"]):
        if isinstance(item, anode_client.Record):
            print(item.position, item.source, item.payload)
        else:
            print("notice:", item.kind, item.data)
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable, Optional, Protocol, Sequence, Union

import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

__all__ = [
    "Record",
    "Notice",
    "PositionStore",
    "MemoryPositionStore",
    "FilePositionStore",
    "SubscribeError",
    "subscribe",
]


@dataclass(frozen=True)
class Record:
    """One stored record, as ``/ws`` sends it, with its position in the durable log."""

    position: str
    id: str
    source: str
    stream: str
    key: Optional[str]
    upstream_id: Optional[str]
    event_time_us: Optional[int]
    ingest_time_us: int
    node: str
    payload: Any
    #: For an undo (a chain took a record back): the id of the record undone; else ``None``.
    undoes: Optional[str] = None

    @staticmethod
    def from_json(value: dict) -> "Record":
        return Record(
            position=value["position"],
            id=value["id"],
            source=value["source"],
            stream=value["stream"],
            key=value.get("key"),
            upstream_id=value.get("upstream_id"),
            event_time_us=value.get("event_time_us"),
            ingest_time_us=value["ingest_time_us"],
            node=value["node"],
            payload=value.get("payload"),
            undoes=value.get("undoes"),
        )


@dataclass(frozen=True)
class Notice:
    """Anything the node says that is not a record: ``subscribed`` (a connection is in place),
    ``error`` (the node ended the stream; the client reconnects from its position), ``lag`` or
    ``gap`` (records may be missing: never swallowed), ``reconnecting`` (from the client)."""

    kind: str
    data: dict = field(default_factory=dict)


class PositionStore(Protocol):
    """Where the last position handed out is kept, so a restarted program continues there."""

    def load(self) -> Optional[str]: ...

    def save(self, position: str) -> None: ...


class MemoryPositionStore:
    """Keeps the position for the life of the process only."""

    def __init__(self, position: Optional[str] = None) -> None:
        self.position = position

    def load(self) -> Optional[str]:
        return self.position

    def save(self, position: str) -> None:
        self.position = position


class FilePositionStore:
    """Keeps the position in a file, replaced atomically at each save. The position of a
    record is saved when the caller asks for the next item, that is once it has dealt with the
    record: a program killed while dealing with one gets that one again (at least once). A
    program that must see each record exactly once keeps the position with its own results
    and supplies a store that reads it from there."""

    def __init__(self, path: Union[str, "os.PathLike[str]"]) -> None:
        self.path = os.fspath(path)

    def load(self) -> Optional[str]:
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read().strip()
        except FileNotFoundError:
            return None
        return text or None

    def save(self, position: str) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(position)
        os.replace(tmp, self.path)


class SubscribeError(Exception):
    """The nodes refused the subscription for a reason a retry cannot fix (a bad filter, a
    position of another kind of log, a wrong token): the message says which."""


def _url(base: str, start: str, token: Optional[str], filters: dict) -> str:
    query = {"since": start}
    for name, values in filters.items():
        if values:
            query[name] = ",".join(values)
    if token:
        query["token"] = token
    return f"{base.rstrip('/')}/ws?{urllib.parse.urlencode(query)}"


async def subscribe(
    urls: Union[str, Sequence[str]],
    *,
    token: Optional[str] = None,
    sources: Iterable[str] = (),
    streams: Iterable[str] = (),
    keys: Iterable[str] = (),
    start: str = "now",
    store: Optional[PositionStore] = None,
    backoff: tuple = (0.1, 5.0),
) -> AsyncIterator[Union[Record, Notice]]:
    """Yield the stored records matching the filter, oldest first, and the nodes' notices.

    ``urls``: one node's WebSocket base URL (``ws://host:7400``) or several of one cluster
    (tried in turn after a drop). ``start``: where to begin when the store holds no position:
    ``now``, ``earliest``, a time (``2026-12-03T10:00:00Z``, ``-5m``) or a position. Reconnects
    for ever, with exponential backoff between ``backoff[0]`` and ``backoff[1]`` seconds (with
    jitter), each time from the last position handed out.
    """
    bases = [urls] if isinstance(urls, str) else list(urls)
    if not bases:
        raise ValueError("give at least one node URL")
    store = store if store is not None else MemoryPositionStore()
    filters = {"source": list(sources), "stream": list(streams), "key": list(keys)}
    position = store.load()
    delay = backoff[0]
    attempt = 0
    while True:
        base = bases[attempt % len(bases)]
        attempt += 1
        url = _url(base, position or start, token, filters)
        try:
            async with websockets.connect(url, max_size=None, open_timeout=10) as ws:
                async for text in ws:
                    value = json.loads(text)
                    if "position" in value and "id" in value:
                        record = Record.from_json(value)
                        position = record.position
                        delay = backoff[0]
                        yield record
                        # The caller asks for more: it has dealt with this one.
                        store.save(position)
                    else:
                        kind = value.get("type", "unknown")
                        if kind == "subscribed":
                            delay = backoff[0]
                        yield Notice(kind, value)
        except InvalidStatus as e:
            status = e.response.status_code
            body = e.response.body.decode("utf-8", "replace") if e.response.body else ""
            if status in (400, 401, 403, 404):
                raise SubscribeError(f"{base}: {status} {body}".strip()) from e
            why = f"{status} {body}".strip()
        except InvalidURI as e:
            raise SubscribeError(str(e)) from e
        except (OSError, ConnectionClosed, asyncio.TimeoutError) as e:
            why = f"{type(e).__name__}: {e}"
        else:
            why = "the node closed the stream"
        yield Notice("reconnecting", {"node": base, "reason": why, "position": position})
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, backoff[1])
