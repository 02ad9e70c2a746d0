"""The project as a new user gets it: used from outside the repo beside a current transformers (which brings Hugging
Face's `kernels` package), and installed from a wheel rather than in editable mode."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Generates with the default model, then builds and runs a transformers model in the same process.
USE_BOTH = textwrap.dedent("""
    import importlib.util, sys
    from engine import LLM, SamplingParams
    import llm_kernels
    out = LLM(max_num_seqs=4).generate("def add(a, b):", SamplingParams(temperature=0, max_tokens=8))[0]
    assert len(out.outputs[0].token_ids) >= 1, out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    logits = LlamaForCausalLM(config).eval()(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 64)
    print("ENGINE", sys.modules["engine"].__file__)
    print("LLM_KERNELS", llm_kernels.__file__)
    if importlib.util.find_spec("kernels") is not None:         # Hugging Face's: transformers >= 5.25 needs it
        import kernels
        print("HF_KERNELS", kernels.__file__, hasattr(kernels, "get_kernel"))
""")


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    return {**env, **extra}


def _lines(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.splitlines() if line.split(" ", 1)[0].isupper())


def test_engine_and_transformers_in_one_process_outside_the_repo(tmp_path):
    run = subprocess.run([sys.executable, "-c", USE_BOTH], cwd=tmp_path, env=_clean_env(), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    found = _lines(run.stdout)
    assert Path(found["LLM_KERNELS"]).parent.name == "llm_kernels"
    if "HF_KERNELS" in found:
        assert found["HF_KERNELS"].endswith(" True"), f"`import kernels` is not Hugging Face's: {found}"


def _site_packages() -> list[str]:
    """Where this interpreter's dependencies are installed (a venv's, the user's)."""
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        paths.append(site.getusersitepackages())
    return list(dict.fromkeys(p for p in paths if Path(p).is_dir()))


@pytest.mark.skipif(sys.platform == "win32", reason="venv layout and console scripts differ on Windows")
def test_wheel_install_serves_the_default_model(tmp_path):
    """Build a wheel of the project, install it (no dependencies) into a throwaway venv that reuses this
    interpreter's installed packages through a .pth file (not the editable install: .pth files in a directory
    added that way are not run), and use it from outside the repo."""
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                                 "__pycache__", "results", ".pytest_cache"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    [wheel] = (tmp_path / "dist").glob("triton_serve-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=600)
    python = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "_test_dependencies.pth").write_text("\n".join(_site_packages()) + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = _clean_env(LLM_KERNELS_CACHE_DIR=str(tmp_path / "kernel-cache"))
    run = subprocess.run([str(python), "-c", USE_BOTH], cwd=work, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    found = _lines(run.stdout)
    assert Path(found["ENGINE"]).is_relative_to(venv), found     # the wheel's code, not the repo's
    assert Path(found["LLM_KERNELS"]).is_relative_to(venv), found
    assert (Path(found["LLM_KERNELS"]).parent / "cpu" / "paged_attention.c").is_file()
    if shutil.which(os.environ.get("CC") or "cc"):
        assert list((tmp_path / "kernel-cache").glob("*.so")), "the C kernel was not built from the wheel's source"

    for command in ([str(python), "-m", "api", "--help"], [str(venv / "bin" / "triton-serve"), "--help"]):
        helped = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert helped.returncode == 0, helped.stderr
        assert "--model" in helped.stdout and "--cpu-threads" in helped.stdout
    assert helped.stdout.startswith("usage: triton-serve")
