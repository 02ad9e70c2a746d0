"""Fixtures for the server tests: two `python -m api` subprocesses on free loopback ports, shared by the
whole session, and independent oracles (the Hugging Face tokenizer and model of the same checkpoint).

- `server`: the main one, a chat-capable tiny Llama with a 1024-token context, default settings.
- `small_server`: a checkpoint without a chat template, a 128-token context, a KV cache too small for its
  batch (so requests get preempted), 4 running + 4 queued sequences at most, a 64 KiB body limit and an
  API key.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import openai
import pytest
from api_helpers import Server, start_server, wait_ready

API_KEY = "test-key-123"
SMALL_NAME = "small"


def _without_chat_template(source: str, target: Path) -> str:
    shutil.copytree(source, target)
    (target / "chat_template.jinja").unlink(missing_ok=True)
    config = target / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    return str(target)


@pytest.fixture(scope="session")
def main_checkpoint(checkpoint_factory) -> str:
    return checkpoint_factory("llama", max_position_embeddings=1024)


@pytest.fixture(scope="session")
def servers(checkpoint_factory, main_checkpoint, tmp_path_factory):
    """Start both servers at once (their startups overlap), stop them at the end of the session."""
    logs = tmp_path_factory.mktemp("server-logs")
    small_ckpt = _without_chat_template(checkpoint_factory("llama"), logs / "no-template")
    main = start_server(["--model", main_checkpoint], logs / "main.log")
    small = start_server(["--model", small_ckpt, "--served-model-name", SMALL_NAME, "--max-model-len", "128",
                    "--kv-cache-blocks", "20", "--max-num-seqs", "4", "--max-queued-seqs", "4",
                    "--max-request-bytes", "65536", "--api-key", API_KEY], logs / "small.log")
    procs = [main, small]
    try:
        result = {
            "main": Server(main, wait_ready(main, logs / "main.log"), Path(main_checkpoint).name, main_checkpoint,
                           logs / "main.log"),
            "small": Server(small, wait_ready(small, logs / "small.log"), SMALL_NAME, small_ckpt,
                            logs / "small.log", API_KEY),
        }
        yield result
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
def server(servers) -> Server:
    return servers["main"]


@pytest.fixture(scope="session")
def small_server(servers) -> Server:
    return servers["small"]


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return server.client()


@pytest.fixture(scope="session")
def hf_tokenizer(main_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(main_checkpoint)


@pytest.fixture(scope="session")
def hf_model(main_checkpoint):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(main_checkpoint, dtype=torch.float32).eval()
