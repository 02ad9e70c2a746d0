"""The output items of a Responses API reply (reasoning, message, function_call), built as the text streams:
`Items` turns the reply's pieces (thinking, content, and the tool-call reader's deltas) into the Responses event
stream, and keeps the items whole for the final response, which a non-streamed reply builds the same way."""

from __future__ import annotations

import uuid

from api.tools import template_arguments


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class Items:
    """The reply's output items; each method answers the events it causes (without sequence numbers)."""

    def __init__(self) -> None:
        self.output: list[dict] = []
        self._open: dict | None = None          # the item being written

    def _start(self, item: dict) -> list[dict]:
        events = self.close()
        self._open = item
        self.output.append(item)
        index = len(self.output) - 1
        events.append({"type": "response.output_item.added", "output_index": index,
                       "item": {**item, "content": []} if "content" in item else dict(item)})
        if item["type"] == "message":
            events.append({"type": "response.content_part.added", "item_id": item["id"], "output_index": index,
                           "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}})
        return events

    def reasoning(self, text: str) -> list[dict]:
        """More thinking."""
        events = [] if self._kind() == "reasoning" else self._start(
            {"id": _id("rs"), "type": "reasoning", "summary": [], "status": "in_progress",
             "content": [{"type": "reasoning_text", "text": ""}]})
        self._open["content"][0]["text"] += text
        return events + [{"type": "response.reasoning_text.delta", "item_id": self._open["id"],
                          "output_index": len(self.output) - 1, "content_index": 0, "delta": text}]

    def text(self, text: str, logprobs: list[dict] = ()) -> list[dict]:
        """More of the message's text, and the logprobs of the tokens that came with it."""
        events = [] if self._kind() == "message" else self._start(
            {"id": _id("msg"), "type": "message", "role": "assistant", "status": "in_progress",
             "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]})
        part = self._open["content"][0]
        part["text"] += text
        part["logprobs"] += logprobs
        return events + [{"type": "response.output_text.delta", "item_id": self._open["id"],
                          "output_index": len(self.output) - 1, "content_index": 0, "delta": text,
                          "logprobs": list(logprobs)}]

    def end_text(self, logprobs: list[dict]) -> list[dict]:
        """Before the items close: a reply with no item at all still has an (empty) message, and the logprobs of its
        last tokens, which no text came with (an EOS), ride an empty text delta while the message is open. Once it
        has closed (a call came after it), they are not the message's."""
        return self.text("", logprobs) if not self.output or (logprobs and self._kind() == "message") else []

    def call(self, part: dict) -> list[dict]:
        """A tool-call reader's delta: a new function_call item, or its arguments' next fragment."""
        if "id" in part:
            return self._start({"id": _id("fc"), "type": "function_call", "call_id": part["id"],
                                "name": part["function"]["name"], "arguments": "", "status": "in_progress"})
        self._open["arguments"] += part["function"]["arguments"]
        return [{"type": "response.function_call_arguments.delta", "item_id": self._open["id"],
                 "output_index": len(self.output) - 1, "delta": part["function"]["arguments"]}]

    def close(self, status: str = "completed") -> list[dict]:
        """Finish the open item, if any: "completed", or "incomplete" when the reply was cut there."""
        item, self._open = self._open, None
        if item is None:
            return []
        item["status"] = status
        index, events = len(self.output) - 1, []
        if item["type"] == "message":
            part = item["content"][0]
            events += [{"type": "response.output_text.done", "item_id": item["id"], "output_index": index,
                        "content_index": 0, "text": part["text"], "logprobs": part["logprobs"]},
                       {"type": "response.content_part.done", "item_id": item["id"], "output_index": index,
                        "content_index": 0, "part": part}]
        elif item["type"] == "reasoning":
            events.append({"type": "response.reasoning_text.done", "item_id": item["id"], "output_index": index,
                           "content_index": 0, "text": item["content"][0]["text"]})
        else:
            events.append({"type": "response.function_call_arguments.done", "item_id": item["id"],
                           "output_index": index, "name": item["name"], "arguments": item["arguments"]})
        return events + [{"type": "response.output_item.done", "output_index": index, "item": item}]

    def _kind(self) -> str | None:
        return self._open["type"] if self._open is not None else None

    def messages(self) -> list[dict]:
        """The reply as chat-template messages (for a later previous_response_id): its text and calls, rendered as
        the same items sent again as input would be."""
        text = "".join(i["content"][0]["text"] for i in self.output if i["type"] == "message")
        calls = [{"id": i["call_id"], "type": "function",
                  "function": {"name": i["name"], "arguments": template_arguments(i["arguments"])}}
                 for i in self.output if i["type"] == "function_call"]
        return [{"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}]
