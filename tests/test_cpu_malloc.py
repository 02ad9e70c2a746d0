"""A CPU engine's native memory: its steps reuse resident memory (engine/cpu_malloc.py), and it stays flat while
steps take ever new shapes (oneDNN keeps one compiled product per distinct row count; the engine bounds its caches
of them, llm_kernels/cpu/linear.py `bound_caches`). Seen in malloc's own counts and in page faults, in fresh
processes (the settings are process-wide and read once)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from llm_kernels.cpu.linear import _CACHE_SETTINGS

_LIBC, _VERSION = platform.libc_ver()
pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or _LIBC != "glibc" or tuple(map(int, _VERSION.split(".")[:2])) < (2, 33),
    reason="the settings are glibc malloc's (mallinfo2 is glibc 2.33's)")

MALLINFO = """
import ctypes
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
"""

# A fresh process allocates a 20 MiB tensor: prints how many more bytes malloc then holds in separate memory maps
# (mallinfo2's hblkhd) and what keep_freed_memory returned.
ALLOCATIONS = MALLINFO + """
import json, sys, torch
from engine.cpu_malloc import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "1" else None
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


# The default model, one prompt at a time, each of a length not seen before (so each prefill step is a new row
# count): prints how much more memory malloc has in use after 160 of them than after the first 10.
NEW_SHAPES = MALLINFO + """
import json
from engine import LLM, SamplingParams
def in_use():
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd
llm = LLM(cpu_threads=1, enable_prefix_caching=False)
params = SamplingParams(max_tokens=1, temperature=0)
def prompts(lengths):
    for n in lengths:
        llm.generate([[10 + (5 * j) % 3000 for j in range(n)]], params, use_tqdm=False)
prompts(range(20, 30))
before = in_use()
prompts(range(30, 190))
print(json.dumps({"grown_mib": (in_use() - before) / 2**20}))
"""


def _run(code: str, *args: str, env: dict[str, str] | None = None) -> dict:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES" and k not in _CACHE_SETTINGS}
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


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="the CPU linears are oneDNN's")
def test_new_step_shapes_do_not_grow_memory():
    """160 new prompt lengths: with oneDNN's default capacities (1024 entries per cache) the process keeps one
    compiled product per shape and layer size, over 100 MiB more; with the engine's bound it stays within 40 MiB."""
    assert _run(NEW_SHAPES)["grown_mib"] < 40
    assert _run(NEW_SHAPES, env={name: "1024" for name in _CACHE_SETTINGS})["grown_mib"] > 100


def test_a_users_cache_capacity_is_kept(monkeypatch: pytest.MonkeyPatch):
    """A capacity the user has set stays; where none is set, the engine's."""
    from llm_kernels.cpu import linear

    monkeypatch.setattr(linear.os, "environ", {"LRU_CACHE_CAPACITY": "7"})
    assert linear.bound_caches() == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(linear.CACHE_CAPACITY),
                                     "LRU_CACHE_CAPACITY": "7"}
