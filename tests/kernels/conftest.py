"""Run the Triton kernels on the CPU with Triton's interpreter, without leaking TRITON_INTERPRET elsewhere.

`triton.jit` reads TRITON_INTERPRET when a kernel is defined, so `kernels.triton_ops` is (re)imported here with
the variable set and the variable is then put back; each test of this directory sets it again while it runs
(the kernel API's dispatcher checks it), and the backend is reset to "auto" afterwards.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest

import kernels


def _import_interpreted_kernels() -> None:
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        for name in [name for name in sys.modules if name.startswith("kernels.triton_ops")]:
            del sys.modules[name]
        importlib.import_module("kernels.triton_ops")
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


_import_interpreted_kernels()


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield
    kernels.use("auto")
