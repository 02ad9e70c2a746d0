"""GPU tests: the Triton kernels compiled for the device and the engine on CUDA; skipped without a GPU.

Run them in a pytest process of their own, `python -m pytest tests/gpu`: tests/interpreter re-imports the kernels
under Triton's interpreter, and these need them compiled. `GPU_TESTS_DRY_RUN=1` together with
`TRITON_INTERPRET=1` runs them on CPU tensors in the interpreter, to check the tests themselves on a machine
without a GPU (slowly: the shapes are a GPU's).
"""

from __future__ import annotations

import os

import pytest
import torch

import llm_kernels


def _kernels_interpreted() -> bool:
    from llm_kernels.triton_ops import decode_attention

    return type(decode_attention._decode_split_kernel).__name__ == "InterpretedFunction"


@pytest.fixture
def device() -> torch.device:
    """The CUDA device the kernels were compiled for (or the CPU in a dry run); skips otherwise."""
    if os.environ.get("GPU_TESTS_DRY_RUN") == "1" and _kernels_interpreted():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if _kernels_interpreted():
        pytest.skip("the kernels were imported under TRITON_INTERPRET: run tests/gpu in a pytest process of its own")
    return torch.device("cuda")


@pytest.fixture(autouse=True)
def _triton_backend():
    """Every kernel call in these tests runs the Triton backend; the choice is reset afterwards."""
    llm_kernels.use("triton")
    yield
    llm_kernels.use("auto")
