"""Helpers for the server tests: a handle on a running server, SSE / strict JSON parsing, and oracles computed
with Hugging Face transformers on the same checkpoint."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import torch
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]

# Seconds a request may take before a test gives up: long enough for a correct server on a loaded 2-core machine
# (a ~1000-token generation took over 60 s there); a hung server still fails, just later.
TIMEOUT = 600


@dataclass
class Server:
    """A running server: its base URL, served model name, checkpoint and log."""

    proc: subprocess.Popen
    url: str
    model: str
    checkpoint: str
    log: Path
    api_key: str = "unused"

    def client(self, **options) -> openai.OpenAI:
        options.setdefault("timeout", TIMEOUT)
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.api_key, max_retries=0, **options)

    def async_client(self, **options) -> openai.AsyncOpenAI:
        options.setdefault("timeout", TIMEOUT)
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=self.api_key, max_retries=0, **options)

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"}

    def post(self, path: str, body: dict | None = None, **kwargs) -> httpx.Response:
        kwargs.setdefault("headers", self.headers())
        kwargs.setdefault("timeout", TIMEOUT)
        return httpx.post(f"{self.url}{path}", json=body, **kwargs)

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics by name (histograms as name_count / name_sum; a labelled one as
        'name{label="value"}', without the `model_name` label every sample of the server's own carries),
        buckets left out."""
        text = httpx.get(f"{self.url}/metrics", timeout=TIMEOUT).text
        return {s.name + _labels({k: v for k, v in s.labels.items() if k != "model_name"}): s.value
                for family in text_string_to_metric_families(text) for s in family.samples
                if not s.name.endswith("_bucket")}


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""


def start_server(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m api --port 0 ARGS` from the repository, its output in `log`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("API_KEY", None)
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "api", "--port", "0", *args], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    """The URL the server logs once it is ready (a RuntimeError if it exits or takes too long)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"ready: serving model .* at (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if match:
            return match.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    raise RuntimeError(f"the server did not get ready in {timeout}s:\n{log.read_text(errors='replace')}")


def asgi_client(app) -> httpx.AsyncClient:
    """An httpx client of `app` in-process (no socket)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=TIMEOUT)


def anthropic_asgi_client(app):
    """The anthropic SDK's async client of `app` in-process (over httpx2, the SDK's fork of httpx); `async with`
    closes it."""
    import anthropic
    import httpx2

    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test", timeout=TIMEOUT)
    return anthropic.AsyncAnthropic(base_url="http://test", api_key="x", http_client=http, max_retries=0)


def sse_events(response: httpx.Response) -> list:
    """The `data:` payloads of an SSE body (parsed JSON, or the string '[DONE]'), checking the framing."""
    text = response.text
    assert text.endswith("\n\n")
    events = []
    for block in text.split("\n\n")[:-1]:
        lines = [line for line in block.split("\n") if not line.startswith(":")]
        if not lines:
            continue
        assert len(lines) == 1 and lines[0].startswith("data: "), f"bad SSE block {block!r}"
        data = lines[0][len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data, parse_constant=_no_constants))
    return events


def strict_json(response: httpx.Response):
    """The body as JSON, refusing NaN/Infinity (which are not JSON)."""
    return json.loads(response.text, parse_constant=_no_constants)


def _no_constants(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


@torch.inference_mode()
def hf_logprobs(model, token_ids: list[int]) -> torch.Tensor:
    """[len - 1, V]: row i is the raw log-softmax predicting token i + 1."""
    logits = model(torch.tensor([token_ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)[:-1]


@torch.inference_mode()
def hf_greedy(model, prompt_ids: list[int], steps: int, presence: float = 0.0, frequency: float = 0.0,
              repetition: float = 1.0) -> list[int]:
    """Greedy tokens (EOS not special), with the OpenAI presence/frequency penalties on the output tokens and
    the CTRL repetition penalty on prompt and output tokens, written out independently of the engine."""
    ids = list(prompt_ids)
    out: list[int] = []
    for _ in range(steps):
        logits = model(torch.tensor([ids])).logits[0, -1].double()
        for token in set(ids):
            logits[token] = logits[token] / repetition if logits[token] > 0 else logits[token] * repetition
        for token in set(out):
            logits[token] -= frequency * out.count(token) + presence
        token = int(torch.argmax(logits))
        ids.append(token)
        out.append(token)
    return out
