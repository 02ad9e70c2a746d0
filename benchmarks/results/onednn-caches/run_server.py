"""Run `python -m api ...` unchanged, plus a SIGUSR1 handler that appends one JSON line of internal sizes to
$INTROSPECT_OUT (default ./introspect.jsonl). TRACEMALLOC=N starts tracemalloc with N frames and adds the top
allocation sites (by size) to each line.

usage: run_server.py <the api's own arguments>
"""
import ctypes
import gc
import json
import os
import runpy
import signal
import sys
import threading
import time
import tracemalloc


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _MallInfo2
_libc.malloc_trim.argtypes = [ctypes.c_size_t]


def mallinfo():
    m = _libc.mallinfo2()
    names = ("arena", "hblkhd", "uordblks", "fordblks", "keepcost")
    return {f: getattr(m, f) >> 20 for f, _ in _MallInfo2._fields_ if f in names} | {"hblks": m.hblks}


def rss_mb():
    with open("/proc/self/status") as f:
        lines = f.readlines()
    for line in lines:
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024


def trim(*_):
    before, mi = rss_mb(), mallinfo()
    t = time.time()
    _libc.malloc_trim(0)
    rec = {"t": time.time(), "trim": True, "rss_before": before, "rss_after": rss_mb(), "mallinfo_before_MB": mi,
           "mallinfo_after_MB": mallinfo(), "trim_s": time.time() - t}
    with open(OUT, "a") as f:
        f.write(json.dumps(rec) + "\n")

OUT = os.environ.get("INTROSPECT_OUT", "introspect.jsonl")
TM = int(os.environ.get("TRACEMALLOC", "0"))
if TM:
    tracemalloc.start(TM)


def _find(cls_name, module_prefix):
    for o in gc.get_objects():
        t = type(o)
        if t.__name__ == cls_name and str(getattr(t, "__module__", "")).startswith(module_prefix):
            yield o


def snapshot(*_):
    rec = {"t": time.time(), "rss": rss_mb(), "mallinfo_MB": mallinfo()}
    try:
        gc.collect()
        for a in _find("AsyncLLM", "engine"):
            e = a._engine
            rec["streams"] = len(a._streams)
            rec["in_flight"] = a._in_flight
            rec["engine_requests"] = len(e.requests)
            rec["compiling"] = len(e._compiling)
            rec["grammar_lru"] = len(e.grammars._cache)
            comp = e.grammars._compiler
            rec["xgr_cache_bytes"] = comp.get_cache_size_bytes() if comp is not None else None
            s = e.scheduler
            rec["sched"] = {k: len(v) for k, v in vars(s).items() if isinstance(v, (list, dict, set))
                            or type(v).__name__ == "deque"} if hasattr(s, "__dict__") else None
            b = e.blocks
            rec["blocks_free"] = b.num_free_blocks
            rec["block_mgr"] = {k: len(v) for k, v in (vars(b) if hasattr(b, "__dict__") else {}).items()
                                if isinstance(v, (list, dict, set))}
        for st in _find("ResponseStore", "api"):
            rec["response_store"] = {k: (len(v) if hasattr(v, "__len__") else v) for k, v in vars(st).items()} \
                if hasattr(st, "__dict__") else str(st)
        for tt in _find("TokenTable", "api"):
            rec["token_table_cache"] = len(tt._cache)
        counts = {}
        for o in gc.get_objects():
            t = type(o)
            n = f"{getattr(t, '__module__', '?')}.{getattr(t, '__qualname__', t.__name__)}"
            counts[n] = counts.get(n, 0) + 1
        rec["gc_objects"] = len(gc.get_objects())
        rec["top_types"] = sorted(counts.items(), key=lambda kv: -kv[1])[:25]
        rec["proj_types"] = {k: v for k, v in counts.items() if k.startswith(("api.", "engine."))}
        rec["threads"] = sorted(t.name for t in threading.enumerate())
        if TM:
            snap = tracemalloc.take_snapshot()
            stats = snap.statistics("traceback" if TM > 1 else "lineno")
            rec["tracemalloc_total_mb"] = sum(s.size for s in stats) / 2**20
            rec["tracemalloc_top"] = [[s.size // 1024, s.count, "\n".join(s.traceback.format()[-2 * TM:])]
                                      for s in stats[:25]]
    except Exception as exc:  # keep the server alive whatever happens here
        rec["error"] = repr(exc)
    with open(OUT, "a") as f:
        f.write(json.dumps(rec, default=str) + "\n")


signal.signal(signal.SIGUSR1, snapshot)
signal.signal(signal.SIGUSR2, trim)
sys.argv = ["api"] + sys.argv[1:]
runpy.run_module("api", run_name="__main__", alter_sys=True)
