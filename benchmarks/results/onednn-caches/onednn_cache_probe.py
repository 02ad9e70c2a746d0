"""Does calling the engine's packed oneDNN linear (llm_kernels.cpu.linear) with many distinct row counts M keep
native memory? Prints glibc's in-use bytes (mallinfo2 uordblks+hblkhd) as more distinct M are used, then repeats
already-seen M. usage: onednn_cache_probe.py [max_M]"""
import ctypes
import sys

import torch

from llm_kernels.cpu.linear import linear, pack


class MI(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MI
def _inuse():
    m = libc.mallinfo2()
    return (m.uordblks + m.hblkhd) / 2**20
def inuse():
    with open("/proc/self/status") as f:
        rss = int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024
    return f"{_inuse():.1f} MB, RSS {rss:.1f}"
torch.set_num_threads(1)
shapes = [(64, 128), (128, 64), (64, 256), (64, 64), (64, 400)]          # (K, N): qwen3-tiny-like linears
ws = [(k, pack(torch.randn(n, k))) for k, n in shapes]
top = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
print(f"start in-use {inuse()} MB")
for M in range(1, top + 1):
    for k, w in ws:
        linear(torch.randn(M, k), w)
    if M in (1, 16, 64, 256, 512, 1024, 1536, 2048, 3000, 4096):
        print(f"after distinct M=1..{M}: in-use {inuse()} MB", flush=True)
for rep in range(2):
    for M in range(1, 513):
        for k, w in ws:
            linear(torch.randn(M, k), w)
    print(f"after repeating M=1..512 (rep {rep}): in-use {inuse()} MB")
