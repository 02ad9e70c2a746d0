"""Run the Triton kernels on the CPU with Triton's interpreter, without leaking TRITON_INTERPRET elsewhere.

`triton.jit` reads TRITON_INTERPRET when a kernel is defined, so `llm_kernels.triton_ops` (every module of it) and
the kernels kept in benchmarks/ for comparison (BENCHMARK_KERNELS) are (re)imported here with the variable set and
the variable is then put back; each test of this directory sets it again while it runs
(the kernel API's dispatcher checks it), and the backend is reset to "auto" afterwards.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from pathlib import Path

import pytest

import llm_kernels

HERE = Path(__file__).parent
BENCHMARK_KERNELS = ("benchmarks.one_program_sampler",)


def _import_interpreted_kernels() -> None:
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        for name in [name for name in sys.modules if name.startswith("llm_kernels.triton_ops")
                     or name in BENCHMARK_KERNELS]:
            del sys.modules[name]
        package = importlib.import_module("llm_kernels.triton_ops")
        for module in pkgutil.iter_modules(package.__path__):       # also those the package does not import
            importlib.import_module(f"llm_kernels.triton_ops.{module.name}")
        for name in BENCHMARK_KERNELS:
            importlib.import_module(name)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


_import_interpreted_kernels()


def _interpreter_usable() -> bool:
    """Triton decides when it is first imported whether its own jit'd helpers (`tl.cdiv`, ...) are interpreted;
    if something imported it before this file (tests/gpu on a GPU machine), kernels here cannot run."""
    import triton.language as tl

    return type(tl.cdiv).__name__ == "InterpretedFunction"


INTERPRETER_USABLE = _interpreter_usable()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if INTERPRETER_USABLE:
        return
    skip = pytest.mark.skip(reason="Triton was imported without TRITON_INTERPRET before these tests: run "
                                   "tests/interpreter in a pytest process of its own")
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield
    llm_kernels.use("auto")
