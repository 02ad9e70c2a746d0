"""A server's life at its edges: SIGTERM drains (finishes or cuts what is in flight, frees every KV block), and
requests that do not arrive whole are answered 408 after the read timeout. Each test runs a server of its own
(the default model), since it ends it or holds its connections."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from api_helpers import TIMEOUT, sse_events, start_server, strict_json, wait_ready
from processes import children, gone

from api.read_timeout import protocol_with_read_timeout

MODEL = "pycoder-tiny"
LONG = {"model": MODEL, "prompt": "def f(x):", "max_tokens": 1900, "ignore_eos": True}


def _serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str, Path]:
    log = tmp_path / "server.log"
    proc = start_server(list(args), log)
    try:
        return proc, wait_ready(proc, log), log
    except BaseException:
        proc.kill()
        raise


def _ended(proc: subprocess.Popen, log: Path) -> str:
    """Wait for the server to exit on its own after SIGTERM (uvicorn re-raises the signal once it has shut down,
    so the exit status says "terminated"); its log, which must show the whole shutdown."""
    try:
        assert proc.wait(TIMEOUT) in (0, -signal.SIGTERM)
    finally:
        proc.kill()
    text = log.read_text(errors="replace")
    assert "Finished server process" in text and "Traceback" not in text, text
    return text


def _blocks_in_use(text: str) -> int:
    match = re.search(r"shutdown: (\d+) of \d+ KV blocks in use", text)
    assert match, text
    return int(match.group(1))


def _stream_then_term(proc: subprocess.Popen, url: str, body: dict) -> list:
    """Stream `body`; send SIGTERM once the first chunk has arrived; the stream's events."""
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=TIMEOUT) as r:
        assert r.status_code == 200
        chunks = r.iter_bytes()
        first = next(chunks)
        proc.send_signal(signal.SIGTERM)
        content = first + b"".join(chunks)
    return sse_events(httpx.Response(200, content=content))


def test_sigterm_with_no_grace_cuts_streams_and_requests_and_frees_the_cache(tmp_path):
    proc, url, log = _serve(tmp_path, "--shutdown-timeout", "0")
    replies = []
    waiter = threading.Thread(target=lambda: replies.append(httpx.post(f"{url}/v1/completions", json=LONG,
                                                                       timeout=TIMEOUT)))
    waiter.start()
    events = _stream_then_term(proc, url, LONG)       # the non-streamed request was sent first: both in flight
    waiter.join(TIMEOUT)
    text = _ended(proc, log)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "server_error" and "shutting down" in events[-2]["error"]["message"]
    assert all("choices" in e for e in events[:-2])
    (reply,) = replies
    assert reply.status_code == 503
    assert strict_json(reply)["error"]["message"] == "The server is shutting down."
    assert "cut 2 request(s)" in text
    assert _blocks_in_use(text) == 0


def test_sigterm_lets_requests_in_flight_finish_within_the_timeout(tmp_path):
    proc, url, log = _serve(tmp_path, "--shutdown-timeout", str(TIMEOUT))
    events = _stream_then_term(proc, url, {**LONG, "max_tokens": 200})
    text = _ended(proc, log)
    assert events[-1] == "[DONE]"
    assert not any("error" in e for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["usage"]["completion_tokens"] == 200
    assert "cut" not in text
    assert _blocks_in_use(text) == 0


@pytest.fixture(scope="module")
def timed_server(tmp_path_factory):
    proc, url, _ = _serve(tmp_path_factory.mktemp("read-timeout"), "--read-timeout", "1")
    yield url
    proc.terminate()
    proc.wait(TIMEOUT)


def _raw(url: str, data: bytes) -> tuple[bytes, float]:
    """Send `data` and then nothing; what comes back until the server closes, and after how many seconds."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    start = time.monotonic()                 # before the connection opens: the server's clock starts there
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received, time.monotonic() - start


@pytest.mark.parametrize("data", [
    b"",                                                                            # nothing at all
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Ty",                      # half the headers
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n{\"model\": ",                                     # a body that stops
], ids=["silent", "headers", "body"])
def test_a_request_that_stalls_gets_408_after_the_read_timeout(timed_server, data):
    received, seconds = _raw(timed_server, data)
    assert received.startswith(b"HTTP/1.1 408 "), received
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert httpx.Response(408, content=body).json()["error"]["code"] == "request_timeout"
    assert seconds >= 0.95                   # asyncio may run a timer up to one clock tick early


def test_the_read_timeout_never_cuts_a_response(timed_server):
    """A reader that pauses longer than the read timeout keeps its stream, and the kept-alive connection, idle
    longer than the read timeout too, serves the next request."""
    with httpx.Client(timeout=TIMEOUT) as client:
        with client.stream("POST", f"{timed_server}/v1/completions",
                           json={**LONG, "max_tokens": 40, "stream": True}) as r:
            chunks = r.iter_bytes()
            first = next(chunks)
            time.sleep(1.5)
            content = first + b"".join(chunks)
        time.sleep(1.5)
        assert client.get(f"{timed_server}/health").status_code == 200
    events = sse_events(httpx.Response(200, content=content))
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"


def test_a_request_answered_before_its_body_gets_no_second_response():
    """An app may answer before the body has arrived; when the read timeout then ends the connection, it adds no
    408 to the answer already sent (uvicorn in-process, with an app that never reads the body)."""
    async def early(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(early, http=protocol_with_read_timeout(0.5), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        received, _ = _raw(f"http://127.0.0.1:{sock.getsockname()[1]}", head)
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()
    assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"ok"), received


def test_a_tensor_parallel_server_streams_and_shuts_down_cleanly(tmp_path):
    proc, url, log = _serve(tmp_path, "--tensor-parallel-size", "2")
    workers = children(proc.pid)
    assert len(workers) == 1
    events = _stream_then_term(proc, url, {**LONG, "max_tokens": 30})
    text = _ended(proc, log)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    assert _blocks_in_use(text) == 0
    assert gone(workers, timeout=60)


def test_a_killed_worker_fails_requests_clearly_and_health_reports_it(tmp_path):
    proc, url, log = _serve(tmp_path, "-tp", "2")
    try:
        (worker,) = children(proc.pid)
        os.kill(worker, signal.SIGKILL)
        reply = httpx.post(f"{url}/v1/completions", json={**LONG, "max_tokens": 5}, timeout=TIMEOUT)
        assert reply.status_code == 503
        assert "tensor-parallel worker (rank 1" in reply.json()["error"]["message"]
        health = httpx.get(f"{url}/health", timeout=TIMEOUT)
        assert health.status_code == 503 and "tensor-parallel worker" in health.json()["error"]["message"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) in (0, -signal.SIGTERM)
        assert gone({worker}, timeout=60)
    finally:
        proc.kill()
