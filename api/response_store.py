"""Stored responses of the Responses API (`store`, the default), kept in memory with a bound: the newest
`capacity` responses, each with the conversation that led to it, so that `previous_response_id` continues it and
GET /v1/responses/{id} returns it. An id that is unknown, or was dropped, is a 400 / 404."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

CAPACITY = 1024


@dataclass(frozen=True, slots=True)
class Stored:
    """One response: its body, and the conversation (chat-template messages) that includes its reply."""

    body: dict
    messages: list[dict]


class ResponseStore:
    """The newest `capacity` stored responses, by id."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def put(self, response_id: str, stored: Stored) -> None:
        """Keep `stored`, dropping the oldest response past the bound."""
        self._items[response_id] = stored
        self._items.move_to_end(response_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> Stored | None:
        """The stored response, or None."""
        return self._items.get(response_id)
