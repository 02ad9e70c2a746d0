"""The command line fails fast: help, bad flags and a taken port answer before torch or the model is loaded."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import api.cli as cli
from api import reasoning, tools
from engine.config import _DTYPES
from llm_kernels.backend import BACKENDS

# Runs api.cli.main in a fresh interpreter, then says which heavy modules it had imported by the time it exited.
PROBE = textwrap.dedent("""
    import sys
    import api.cli
    code = 0
    try:
        api.cli.main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    heavy = [name for name in ("torch", "engine", "uvicorn", "fastapi", "transformers") if name in sys.modules]
    print("HEAVY=" + ",".join(heavy))
    raise SystemExit(code)
""")


def _probe(*args: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=_env())


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def test_help_imports_nothing_heavy(tmp_path):
    run = _probe("--help", tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: python -m api")
    assert "--cpu-threads" in run.stdout and "--device" in run.stdout
    assert "HEAVY=\n" in run.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--device", "gpu"], "argument --device: 'gpu' is not a device: use auto, cpu, cuda or cuda:N"),
    (["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
    (["--port", "eighty"], "argument --port: invalid int value: 'eighty'"),
    (["--model", "/no/such/checkpoint"], "--model '/no/such/checkpoint' is not a checkpoint directory"),
    (["--cpu-threads", "0"], "--cpu-threads must be >= 1, got 0"),
    (["--max-queued-seqs", "-1"], "--max-queued-seqs must be >= 0, got -1"),        # a server that refused all
    (["--max-request-bytes", "0"], "--max-request-bytes must be >= 1, got 0"),
    (["--max-num-seqs", "0"], "--max-num-seqs must be >= 1, got 0"),
    (["--max-model-len", "1"], "--max-model-len must be >= 2, got 1"),
    (["--enable-auto-tool-choice"], "--enable-auto-tool-choice needs --tool-call-parser"),
    (["--generation-config", "/no/such/dir"], "--generation-config must be auto, vllm or a directory"),
    (["--chat-template", "chatml"], "--chat-template 'chatml' is neither a file nor a Jinja template"),
    (["--allowed-origins", "*"], "argument --allowed-origins: '*' is not a JSON list of strings"),
    (["--override-generation-config", "[]"], "argument --override-generation-config: '[]' is not a JSON object"),
    (["--max-model-len", "1.5K"], "argument --max-model-len: '1.5K' is not a count"),
])
def test_a_bad_argument_is_one_error_line(tmp_path, args, message):
    run = _probe(*args, tmp_path=tmp_path)
    assert run.returncode == 2
    [line] = run.stderr.splitlines()
    assert line.startswith(f"python -m api: error: {message}") and line.endswith(" (see python -m api --help)")
    assert "HEAVY=\n" in run.stdout


def test_a_port_in_use_is_an_error_before_the_model_loads(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = _probe("--port", str(port), tmp_path=tmp_path)
    assert run.returncode == 1
    assert run.stderr.strip() == f"python -m api: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "HEAVY=\n" in run.stdout


def test_port_0_binds_a_free_port_and_holds_it():
    sock = cli.bind_socket("127.0.0.1", 0)
    try:
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
        with socket.socket() as other, pytest.raises(OSError, match="Address already in use"):
            other.bind(("127.0.0.1", port))
    finally:
        sock.close()


def test_dtype_and_kernel_choices_are_the_engines():
    assert set(cli.DTYPES) == {"auto", *_DTYPES}
    assert cli.KERNEL_BACKENDS == BACKENDS
    assert cli.TOOL_CALL_PARSERS == tools.PARSERS and cli.REASONING_PARSERS == reasoning.PARSERS
    args = cli.build_parser("triton-serve").parse_args(["--kernels", "torch"])
    assert cli.engine_options(args)["kernels"] == "torch"
    assert cli.engine_options(cli.build_parser("triton-serve").parse_args([]))["kernels"] is None


def test_console_script_name_is_the_prog(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/some/venv/bin/triton-serve", "--help"])
    assert cli._prog() == "triton-serve"
    monkeypatch.setattr(sys, "argv", ["/repo/api/__main__.py"])
    assert cli._prog() == "python -m api"
    assert cli.build_parser("triton-serve").format_usage().startswith("usage: triton-serve")


def test_vllm_spellings_reach_the_engine_and_the_server(tmp_path):
    parse = cli.build_parser().parse_args
    assert cli.engine_options(parse([]))["enable_prefix_caching"] is True
    lengths = [cli.engine_options(parse(["--max-model-len", text]))["max_model_len"] for text in ("4096", "4k", "4K",
                                                                                                  "2.5k")]
    assert lengths == [4096, 4000, 4096, 2500]
    for flags in (["--no-enable-prefix-caching"], ["--no-prefix-caching"]):
        assert cli.engine_options(parse(flags))["enable_prefix_caching"] is False
    help_text = " ".join(cli.build_parser().format_help().split())
    assert "prefix-caching) --seed" in help_text        # no "(default: True)" on the negative flag
    options = cli.engine_options(parse(["--generation-config", "vllm", "--override-generation-config",
                                        '{"temperature": 0.5}']))
    assert (options["generation_config"], options["override_generation_config"]) == ("vllm", {"temperature": 0.5})
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    args = parse(["--chat-template", str(template), "--allowed-origins", '["https://a.example"]',
                  "--allow-credentials"])
    settings = cli.server_settings(args, str(tmp_path))
    assert settings.chat_template == template.read_text()
    assert settings.cors == {"allow_origins": ["https://a.example"], "allow_methods": ["*"], "allow_headers": ["*"],
                             "allow_credentials": True}
    assert cli.server_settings(parse([]), str(tmp_path)).cors["allow_origins"] == []    # vLLM 0.32: none
    assert cli.server_settings(parse(["--chat-template", "{{ messages[0].content }}"]), str(tmp_path)).chat_template \
        == "{{ messages[0].content }}"
