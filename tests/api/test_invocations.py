"""POST /invocations (SageMaker's route, as vLLM serves it): a body with `messages` is answered as
/v1/chat/completions answers it, any other as /v1/completions does; a body that is neither is a 400 in the error
envelope."""

from __future__ import annotations

import json

MESSAGES = [{"role": "user", "content": "Write a function."}]


def _answer(body: dict) -> list:
    """What a reply says: each choice's text (or message) and finish reason, the tokens its logprobs list, and the
    token counts (not ids, times, cache hits or logprobs' last digits, which differ between two runs)."""
    choices = [(c.get("text"), c.get("message"), c["finish_reason"],
                [t["token"] for t in ((c.get("logprobs") or {}).get("content") or [])]) for c in body["choices"]]
    usage = body["usage"]
    return [body["object"], body["model"], choices, usage["prompt_tokens"], usage["completion_tokens"]]


def test_a_body_is_answered_by_the_route_its_fields_name(server):
    chat = {"model": server.model, "messages": MESSAGES, "max_tokens": 6, "temperature": 0, "logprobs": True}
    completion = {"model": server.model, "prompt": "def add(a, b):", "max_tokens": 6, "temperature": 0, "n": 2,
                  "seed": 3}
    for body, route, kind in ((chat, "/v1/chat/completions", "chat.completion"),
                              (completion, "/v1/completions", "text_completion")):
        got = server.post("/invocations", body)
        assert got.status_code == 200 and got.json()["object"] == kind
        assert _answer(got.json()) == _answer(server.post(route, body).json())


def test_streams_and_errors(server):
    body = {"model": server.model, "prompt": "x = ", "max_tokens": 3, "stream": True}
    lines = [line for line in server.post("/invocations", body).text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert all(json.loads(line[6:])["object"] == "text_completion" for line in lines[:-1])
    for bad, param in (({"model": server.model}, "prompt"), ({"model": server.model, "messages": []}, "messages"),
                       ([MESSAGES], None)):
        refused = server.post("/invocations", bad)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.json()
