"""Build the C kernels of this directory with the machine's C compiler on first use, and load them with ctypes.

No torch headers and no build step at install time: one C file compiles in well under a second with `cc`
(or `$CC`), into a cache directory keyed by the source, the compiler, the flags and the CPU, so each machine
builds once. The kernels use OpenMP and take their thread count from the caller (torch's). Without a compiler,
or if the build fails, `load` returns None and says why once: the callers then use the torch references.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

from llm_kernels.backend import setting

try:
    import fcntl
except ImportError:                                       # Windows: no cross-process lock, the rename still holds
    fcntl = None

HERE = Path(__file__).parent

# -O3 and the host's vector units; reassociation lets the compiler vectorise the dot-product reductions
# (no -ffast-math: it would also change the whole process's denormal handling).
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
         "-shared", "-fPIC"]

_lock = threading.Lock()


def compiler() -> list[str]:
    """The C compiler command ($CC, which may carry arguments, else `cc`); empty if it is not on the PATH."""
    command = shlex.split(os.environ.get("CC") or "cc")
    return command if command and shutil.which(command[0]) else []


def cache_dir() -> Path:
    """Where built libraries go: $LLM_KERNELS_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache, under triton-serve/."""
    if chosen := setting("CACHE_DIR"):
        return Path(chosen)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "triton-serve"


def _machine_signature(command: list[str]) -> str:
    """The compiler (path and version) and the CPU (model, features), so that a cache shared between machines
    never runs another machine's `-march=native` code."""
    version = subprocess.run([*command, "--version"], capture_output=True, text=True).stdout
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    keys = ("model name", "flags", "Features", "CPU implementer", "CPU part")   # x86 and Arm spellings
    cpu = sorted({line for line in cpuinfo if line.startswith(keys)})
    return "\n".join([shutil.which(command[0]) or "", *command[1:], version, platform.machine(),
                      platform.processor(), *cpu])


@contextlib.contextmanager
def _exclusive(path: Path):
    """Hold an exclusive lock on `path` (created if needed) against other processes building the same file."""
    with open(path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _compile(command: list[str], source: Path, directory: Path, target: Path) -> None:
    """Compile `source` to `target` through a private temporary file, renamed into place when complete."""
    handle, partial = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(handle)
    try:
        errors = []
        for openmp in (["-fopenmp"], []):
            result = subprocess.run([*command, *FLAGS, *openmp, str(source), "-o", partial],
                                    capture_output=True, text=True)
            if result.returncode == 0:
                if not openmp:
                    warnings.warn(f"{command[0]} could not build {source.name} with OpenMP ({errors[0]}): the CPU "
                                  "kernel runs on one thread", stacklevel=4)
                os.replace(partial, target)
                return
            errors.append(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no message")
        raise RuntimeError(f"{command[0]} failed on {source.name}:\n{result.stderr.strip()}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


def _build(source: Path, command: list[str]) -> Path:
    """The library built from `source` (compiled now unless this machine's cache already holds it)."""
    key = hashlib.sha256("\0".join([source.read_text(), *FLAGS, _machine_signature(command)]).encode())
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError:               # no writable cache: a private directory of this process (built every run)
        directory = Path(tempfile.mkdtemp(prefix="triton-serve-"))
    target = directory / f"{source.stem}-{key.hexdigest()[:16]}.so"
    with _lock, _exclusive(target.with_suffix(".lock")):     # threads of this process, then other processes
        if not target.exists():
            _compile(command, source, directory, target)
    return target


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The library built from `<name>.c` in this directory, or None (with one warning) if it cannot be built.
    Concurrent first calls, from threads or processes, build it once."""
    command = compiler()
    if not command:
        warnings.warn(f"no C compiler ({os.environ.get('CC') or 'cc'!r}) found: the CPU uses the torch reference "
                      "kernels", stacklevel=2)
        return None
    try:
        return ctypes.CDLL(str(_build(HERE / f"{name}.c", command)))
    except (OSError, RuntimeError) as error:
        warnings.warn(f"CPU kernel {name} unavailable, using the torch reference: {error}", stacklevel=2)
        return None
