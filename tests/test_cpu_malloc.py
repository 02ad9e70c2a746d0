"""The engine's CPU steps reuse resident memory (engine/cpu_malloc.py): seen in malloc's own counts and in page
faults, in fresh processes (the malloc settings are process-wide and made once)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

_LIBC, _VERSION = platform.libc_ver()
pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or _LIBC != "glibc" or tuple(map(int, _VERSION.split(".")[:2])) < (2, 33),
    reason="the settings are glibc malloc's (mallinfo2 is glibc 2.33's)")

# A fresh process allocates a 20 MiB tensor: prints how many more bytes malloc then holds in separate memory maps
# (mallinfo2's hblkhd) and what keep_freed_memory returned.
ALLOCATIONS = """
import ctypes, json, sys, torch
from engine.cpu_malloc import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "1" else None
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().hblkhd
x = torch.empty(5 << 20)
print(json.dumps({"mapped": libc.mallinfo2().hblkhd - before, "kept": kept}))
"""

# The default model's second batch of prompts: minor page faults per token the engine processed.
ENGINE = """
import json, resource
from engine import LLM, SamplingParams
llm = LLM(cpu_threads=1)
params = SamplingParams(max_tokens=16, ignore_eos=True, temperature=0)
prompts = [[10 + (7 * i + j) % 3000 for j in range(200)] for i in range(8)]
llm.generate(prompts, params)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
llm.generate([[t + 1 for t in p] for p in prompts], params)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"kib_per_token": faults * 4 / (8 * (200 + 16))}))
"""


def _run(code: str, *args: str, env: dict[str, str] | None = None) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                          env={**base, **(env or {})})
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_steps_sized_blocks_come_from_the_heap():
    """glibc's default maps a 20 MiB block on its own (and unmaps it when freed: the next is faulted in afresh);
    once the engine's thresholds are set it comes from the heap, whose freed pages stay resident."""
    default = _run(ALLOCATIONS, "0")
    kept = _run(ALLOCATIONS, "1")
    assert kept["kept"] is True
    assert default["mapped"] >= 20 << 20, default
    assert kept["mapped"] == 0, kept


def test_a_users_malloc_settings_are_left_alone():
    result = _run(ALLOCATIONS, "1", env={"MALLOC_TRIM_THRESHOLD_": str(128 << 10)})
    assert result["kept"] is False
    assert result["mapped"] >= 20 << 20, result


def test_engine_steps_fault_in_little_beyond_the_kv_cache():
    """The KV cache's own first writes are 12 KiB per token on the default model (6 layers x 2 x 256 floats); the
    steps' activations added 60-220 KiB per token more before the engine kept freed memory."""
    assert _run(ENGINE)["kib_per_token"] < 40
