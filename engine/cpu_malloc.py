"""Keep freed memory in the process while the engine runs on the CPU.

torch's CPU tensors come from the C library's `malloc`. glibc's serves every block over 128 KiB (a threshold that
rises to at most 32 MiB as such blocks are freed) with a fresh memory map, and hands freed memory at the top of its
heap back to the kernel. So each step's activations (a prefill chunk's are megabytes per layer) were new pages,
faulted in one 4 KiB page at a time, every step: 75-85 KiB of faults per prompt token, about a quarter of a
prefill's time on this project's machine (benchmarks/RESULTS.md). Fixing both thresholds keeps blocks of up to
32 MiB on the heap and the freed ones resident, so the next step reuses them; the process's peak memory is what its
steps need at once, as before.

It is process-wide, like torch's thread count, and done once. A user who sets glibc's MALLOC_* variables (or
preloads another allocator, which then owns malloc and leaves these settings unused) keeps their choice.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20          # glibc's upper limit for it on 64-bit machines
TRIM_THRESHOLD = 1 << 30           # freed memory kept at the heap's top before any goes back

_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc malloc's mmap and trim thresholds (once per process); whether they were set. False where the C
    library is not glibc or the user has chosen malloc settings of their own."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not done:
        logger.warning("glibc's mallopt refused the engine's thresholds; CPU steps will fault in fresh pages")
    return done
