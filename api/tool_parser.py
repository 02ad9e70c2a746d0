"""Tool calls read from a reply's text as it grows, for streaming and whole responses alike.

One `CallReader` per choice is fed the text as the engine produces it and answers OpenAI's deltas: content text,
a call's start (index, id, type, name, empty arguments) once its name is complete, then fragments of its
arguments' raw JSON text. A whole response is the same reader fed the whole text (`read_calls`), so a stream's
deltas concatenate to the non-streamed message. The forms read:

- a named function: the text is its arguments object;
- `required`: a JSON array of `{"name": ..., "parameters": {...}}` (the tools' grammar makes it so);
- `auto` with the `hermes` parser: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks in the text.
  The text outside them is the content, less the whitespace between it and the calls (before a call, after one
  that nothing but whitespace precedes, and at the end of a reply that calls). A block whose object never gives
  a name (not JSON, or no "name") is content as written; one whose object is not closed by `</tool_call>` ends
  there, its arguments as generated.

A call cut short (max_tokens) keeps what was generated of it; the finish reason "length" says so.
"""

from __future__ import annotations

import json
import uuid

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"     # the hermes blocks


class _Fields:
    """The top-level fields of one JSON object read incrementally from `text[start:]`: each key with where its
    value's raw text starts and (once complete) ends; `end` is the index after the closing brace, or where `stop`
    (outside a string) cut the object short."""

    __slots__ = ("start", "pos", "end", "fields", "stop", "_depth", "_string", "_escape", "_key_start", "_key",
                 "_await_value", "_open")

    def __init__(self, start: int, stop: str | None = None) -> None:
        self.start = self.pos = start
        self.stop = stop
        self.end: int | None = None
        self.fields: dict[str, list] = {}          # key -> [value start, value end or None]
        self._depth = 0
        self._string = self._escape = self._await_value = False
        self._key_start: int | None = None
        self._key: str | None = None
        self._open: str | None = None              # the key whose value is being read

    def feed(self, text: str) -> None:
        """Read on to the end of `text` or of the object, whichever comes first."""
        while self.pos < len(text) and self.end is None:
            if self.stop and not self._string and text.startswith(self.stop, self.pos):
                self._close_value(self.pos)          # the block ended before its object did
                self.end = self.pos
                return
            if self.stop and not self._string and self.stop.startswith(text[self.pos:]):
                return                               # may be the start of `stop`: wait for more text
            self._step(text, self.pos, text[self.pos])
            self.pos += 1

    def value(self, text: str, key: str) -> tuple[str, bool] | None:
        """The raw text of `key`'s value so far (trailing whitespace held back) and whether it is complete."""
        span = self.fields.get(key)
        if span is None:
            return None
        return text[span[0]:span[1] if span[1] is not None else self.pos].rstrip(), span[1] is not None

    def _step(self, text: str, i: int, ch: str) -> None:
        top = self._depth == 1
        if self._string:
            if self._escape:
                self._escape = False
            elif ch == "\\":
                self._escape = True
            elif ch == '"':
                self._string = False
                if top and self._key_start is not None:
                    self._key = _loads(text[self._key_start:i + 1])
                    self._key_start = None
            return
        if ch.isspace():
            return
        if top and self._await_value:                 # the first character of a value
            self._await_value = False
            self._open = self._key if isinstance(self._key, str) else None
            if self._open is not None:
                self.fields[self._open] = [i, None]
        if ch == '"':
            self._string = True
            if top and self._open is None:
                self._key_start = i
        elif ch in "{[":
            self._depth += 1
        elif ch in "}]":
            if top:
                self._close_value(i)
            self._depth -= 1
            if self._depth == 0:
                self.end = i + 1
        elif top and ch == ",":
            self._close_value(i)
        elif top and ch == ":":
            self._await_value = True

    def _close_value(self, i: int) -> None:
        if self._open is not None:
            self.fields[self._open][1] = i
        self._open = self._key = None


def _loads(raw: str):
    try:
        return json.loads(raw)
    except ValueError:
        return None


class _Call:
    """One call being read: its object's fields, and how much of it was sent."""

    __slots__ = ("fields", "name", "sent", "arguments_key")

    def __init__(self, fields: _Fields, arguments_key: str | None) -> None:
        self.fields = fields
        self.arguments_key = arguments_key          # None: the whole object is the arguments (a named function)
        self.name: str | None = None
        self.sent = 0                               # characters of the arguments sent


class CallReader:
    """Reads one choice's calls as its text grows; `feed` answers the deltas the new text completes."""

    def __init__(self, mode: str, name: str | None = None, max_calls: int | None = None) -> None:
        """`mode`: "named" (with the function's `name`), "required" or "hermes"; calls past `max_calls`
        (parallel_tool_calls false: 1) are read but not sent."""
        self.mode, self._name, self.max_calls = mode, name, max_calls
        self.text = ""
        self.calls: list[_Call] = []
        self._pos = 0                    # where looking for the next call resumes
        self._content_end = 0            # content sent up to here (held-back whitespace lies after it)
        self._after_call = False         # hermes: a call was read since the last content sent
        self._sent = False               # hermes: some content was sent
        self._block: int | None = None   # hermes: where the <tool_call> of the block being read starts

    def feed(self, text: str, final: bool = False) -> list[dict]:
        """Add `text`; the deltas it completes (`final`: the text is whole, send what was held back)."""
        self.text += text
        deltas: list[dict] = []
        while True:
            call = self.calls[-1] if self.calls else None
            if call is not None and call.fields.end is None:
                call.fields.feed(self.text)
                deltas += self._call_deltas(len(self.calls) - 1, call)
                if call.fields.end is None:
                    break
                self._pos = call.fields.end
                continue
            if not self._next_call(deltas, final):
                break
        if final and self._block is not None and self.calls[-1].name is None:   # cut short in a block, no call
            self.calls.pop()
            self._content(deltas, len(self.text))
        return deltas

    def _next_call(self, deltas: list[dict], final: bool) -> bool:
        """Find the next call's object after `_pos`; False when the text has none (yet)."""
        if self.mode == "named":
            if self.calls:
                return False
            self.calls.append(_Call(_Fields(0), None))
            return True
        if self.mode == "required":
            start = self.text.find("{", self._pos)
            if start < 0:
                return False
            self.calls.append(_Call(_Fields(start), "parameters"))
            return True
        return self._next_block(deltas, final)

    def _next_block(self, deltas: list[dict], final: bool) -> bool:
        """hermes: the content up to the next <tool_call>, then the block's object (or the block as content when
        its object gives no name)."""
        text = self.text
        if self._block is not None:                      # the block's object has ended: find its </tool_call>
            close = text.find(CALL_CLOSE, self._pos)
            if close < 0 and not final:
                return False
            end = len(text) if close < 0 else close + len(CALL_CLOSE)
            if self.calls[-1].name is None:              # not a call: the block is content as written
                self.calls.pop()
                self._content(deltas, end)
            else:
                self._content_end, self._after_call = end, True
            self._block, self._pos = None, end
            return True
        opening = text.find(CALL_OPEN, self._pos)
        if opening < 0:
            held = 0 if final else _partial_suffix(text, CALL_OPEN)
            self._content(deltas, len(text) - held, hold_space=not final or bool(self.calls))
            self._pos = max(self._pos, len(text) - held)
            return False
        body = opening + len(CALL_OPEN)
        while body < len(text) and text[body].isspace():
            body += 1
        if body == len(text) and not final:
            self._content(deltas, opening, hold_space=True)
            return False                                 # wait for the block's first character
        if body == len(text) or text[body] != "{":       # not a call's object: the opening is content
            self._content(deltas, body)
            self._pos = body
            return True
        self._content(deltas, opening, hold_space=True)  # the whitespace before a call is not content
        self._block = opening
        self.calls.append(_Call(_Fields(body, CALL_CLOSE), "arguments"))
        return True

    def _content(self, deltas: list[dict], end: int, hold_space: bool = False) -> None:
        """Send the content from where it was last sent to `end`, less the whitespace after a call that only
        whitespace precedes and (hold_space) the trailing whitespace, which waits to see whether a call follows."""
        piece = self.text[self._content_end:end]
        if self._after_call and not self._sent:
            kept = piece.lstrip()
            self._content_end += len(piece) - len(kept)
            piece = kept
        if hold_space:
            piece = piece.rstrip()
        if piece:
            deltas.append({"content": piece})
            self._content_end += len(piece)
            self._after_call, self._sent = False, True

    def _call_deltas(self, index: int, call: _Call) -> list[dict]:
        """The start of `call` once its name is known, then its arguments as far as they are generated."""
        deltas: list[dict] = []
        if call.name is None:
            if call.arguments_key is None:
                call.name = self._name
            else:
                raw = call.fields.value(self.text, "name")
                if raw is None or not raw[1] or not isinstance(_loads(raw[0]), str):
                    return deltas
                call.name = _loads(raw[0])
            if self.max_calls is not None and index >= self.max_calls:
                return deltas                        # a call all the same (not content), but not sent
            deltas.append({"tool_calls": [{"index": index, "id": f"call_{uuid.uuid4().hex[:24]}",
                                           "type": "function", "function": {"name": call.name, "arguments": ""}}]})
        if self.max_calls is not None and index >= self.max_calls:
            return deltas
        if call.arguments_key is None:
            end = call.fields.end if call.fields.end is not None else len(self.text)
            arguments = self.text[:end].rstrip()
        else:
            raw = call.fields.value(self.text, call.arguments_key)
            arguments = raw[0] if raw is not None else "{}" if call.fields.end is not None else ""
        if len(arguments) > call.sent:
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": arguments[call.sent:]}}]})
            call.sent = len(arguments)
        return deltas


def _partial_suffix(text: str, marker: str) -> int:
    """How many characters at the end of `text` could begin `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def read_calls(text: str, mode: str, name: str | None = None,
               max_calls: int | None = None) -> tuple[str | None, list[dict]]:
    """(content or None, calls in a message's shape) of a whole reply: what its stream's deltas add up to."""
    return merge(CallReader(mode, name, max_calls).feed(text, final=True))


def merge(deltas: list[dict]) -> tuple[str | None, list[dict]]:
    """(content or None, calls in a message's shape) from a reader's deltas."""
    content = "".join(d["content"] for d in deltas if "content" in d)
    calls: list[dict] = []
    for delta in deltas:
        for part in delta.get("tool_calls", []):
            if "id" in part:
                calls.append({"id": part["id"], "type": "function",
                              "function": {"name": part["function"]["name"], "arguments": ""}})
            else:
                calls[part["index"]]["function"]["arguments"] += part["function"]["arguments"]
    return content or None, calls
