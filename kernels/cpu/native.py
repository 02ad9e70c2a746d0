"""Build the C kernels of this directory with the machine's C compiler on first use, and load them with ctypes.

No torch headers and no build step at install time: one C file compiles in well under a second with `cc`
(or `$CC`), into a cache directory keyed by the source, the flags and the CPU, so each machine builds once.
The kernels use OpenMP; built with `-fopenmp` they share the `libgomp.so.1` that torch has already loaded, and
so torch's thread count (`torch.set_num_threads`). Without a compiler, or if the build fails, `load` returns
None and says why once: the callers then use the torch references.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).parent

# -O3 and the host's vector units; reassociation lets the compiler vectorise the dot-product reductions
# (no -ffast-math: it would also change the whole process's denormal handling).
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
         "-shared", "-fPIC"]


def cache_dir() -> Path:
    """Where built libraries go: $KERNELS_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache, under triton-serve/."""
    if os.environ.get("KERNELS_CACHE_DIR"):
        return Path(os.environ["KERNELS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "triton-serve"


def _cpu_signature() -> str:
    """The CPU model and feature flags, so that a cache shared between machines never runs foreign code."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))


def _build(source: Path, compiler: str) -> Path:
    """Compile `source` into the cache (once per source, flags and CPU) and return the library's path."""
    key = hashlib.sha256("\0".join([source.read_text(), compiler, *FLAGS, _cpu_signature()]).encode()).hexdigest()
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:                                       # a read-only home: build into the temp directory
        directory = Path(tempfile.gettempdir()) / "triton-serve"
        directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{source.stem}-{key[:16]}.so"
    if target.exists():
        return target
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    for openmp in (["-fopenmp"], []):                     # a compiler without OpenMP builds a one-thread kernel
        result = subprocess.run([compiler, *FLAGS, *openmp, str(source), "-o", str(partial)],
                                capture_output=True, text=True)
        if result.returncode == 0:
            os.replace(partial, target)                   # atomic: concurrent builders all end with one file
            return target
    raise RuntimeError(f"{compiler} failed on {source.name}:\n{result.stderr.strip()}")


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The library built from `<name>.c` in this directory, or None (with one warning) if it cannot be built."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        warnings.warn(f"no C compiler ({compiler!r}) found: the CPU uses the torch reference kernels", stacklevel=2)
        return None
    try:
        return ctypes.CDLL(str(_build(HERE / f"{name}.c", compiler)))
    except (OSError, RuntimeError) as error:
        warnings.warn(f"CPU kernel {name} unavailable, using the torch reference: {error}", stacklevel=2)
        return None
