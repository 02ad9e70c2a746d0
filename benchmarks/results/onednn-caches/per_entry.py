"""Native memory per cached oneDNN linear primitive, by shape and M range."""
import ctypes

import torch

from llm_kernels.cpu.linear import linear, pack


class MI(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MI
def inuse():
    m = libc.mallinfo2()
    return (m.uordblks + m.hblkhd) / 2**20
torch.set_num_threads(2)
for K, N in [(64, 400), (512, 1536), (2048, 6144)]:
    w = pack(torch.randn(N, K))
    for lo in (1, 512):
        a = inuse()
        for m in range(lo, lo + 100):
            linear(torch.randn(m, K), w)
        print(f"K={K} N={N} M={lo}..{lo+99}: {(inuse() - a) / 100 * 1024:.0f} KB per M", flush=True)
