"""Stored responses of the Responses API (`store`, the default), kept in memory with a bound: the newest
responses, at most `capacity` of them and `max_bytes` of JSON in all, each with the conversation that led to it,
so that `previous_response_id` continues it and GET /v1/responses/{id} returns it. An id that is unknown, or was
dropped, is a 400 / 404."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

CAPACITY = 1024
MAX_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class Stored:
    """One response: its body, and the conversation (chat-template messages) that includes its reply."""

    body: dict
    messages: list[dict]

    def size(self) -> int:
        """About how many bytes it holds (its JSON)."""
        return len(json.dumps(self.body)) + len(json.dumps(self.messages))


class ResponseStore:
    """The newest stored responses, by id, within `capacity` responses and `max_bytes`."""

    def __init__(self, capacity: int = CAPACITY, max_bytes: int = MAX_BYTES) -> None:
        self.capacity, self.max_bytes = capacity, max_bytes
        self._items: OrderedDict[str, tuple[Stored, int]] = OrderedDict()
        self._bytes = 0

    def put(self, response_id: str, stored: Stored) -> None:
        """Keep `stored`, dropping the oldest responses past the bounds (a response larger than all of them is
        not kept)."""
        size = stored.size()
        if response_id in self._items:
            self._bytes -= self._items.pop(response_id)[1]
        self._items[response_id] = (stored, size)
        self._bytes += size
        while self._items and (len(self._items) > self.capacity or self._bytes > self.max_bytes):
            self._bytes -= self._items.popitem(last=False)[1][1]

    def get(self, response_id: str) -> Stored | None:
        """The stored response, or None."""
        item = self._items.get(response_id)
        return item[0] if item is not None else None
