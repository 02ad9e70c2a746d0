"""Every Triton kernel, in the launch configurations a GPU gets, compiles for sm_90 (H100) on this CPU machine.

The interpreter does not run the GPU compiler, so this catches what only it rejects; see gpu_compile_check.py.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SAMPLER_KERNELS = ("_softmax_kernel", "_levels_kernel", "_gather_kernel", "_threshold_kernel", "_draw_kernel",
                   "_finish_kernel", "_sample_kernel")


@pytest.mark.skipif(importlib.util.find_spec("triton.backends.nvidia") is None,
                    reason="this Triton has no NVIDIA backend")
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, str(HERE / "gpu_compile_check.py"), "90"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    compiled, exact = (line.partition(": ")[2].split(", ") for line in run.stdout.splitlines()[-2:])
    for kernel in ("_decode_split_kernel", "_decode_merge_kernel", "_prefill_kernel", "_store_kv_kernel",
                   "_apply_penalties_kernel", "_rms_norm_kernel", "_silu_and_mul_kernel", "_rotary_kernel",
                   "_apply_token_bitmask_kernel", "_grouped_gemm_kernel"):
        assert kernel in compiled
    # Every sampler kernel, the split sampler's (llm_kernels.sample) and the one-program comparison's in
    # benchmarks/, is compiled and its PTX checked for approximate division.
    assert set(SAMPLER_KERNELS) <= set(exact), exact
