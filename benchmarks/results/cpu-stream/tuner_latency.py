"""Steps from a busy process starting mid-run to the thread tuner running one thread (default model, 32 sequences
of 192 new tokens, the busy process started 1.5 s into each of two runs). Run from a checkout:
PYTHONPATH=. python benchmarks/results/cpu-stream/tuner_latency.py"""
import subprocess
import sys
import threading
import time

from benchmarks.throughput import make_workload, workload_params
from engine import DEFAULT_MODEL, LLM

llm = LLM(DEFAULT_MODEL)
tuner = llm.engine.threads
log = []
after_step = tuner.after_step


def logged(tokens: int, seconds: float) -> None:
    after_step(tokens, seconds)
    log.append((time.perf_counter(), tokens, seconds, tuner.current, tuner.probing))


def start_busy(busy: list) -> None:
    time.sleep(1.5)
    busy.append((time.perf_counter(), subprocess.Popen([sys.executable, "-c", "while True: pass"])))


tuner.after_step = logged
for rnd in range(2):
    work = make_workload(32, (21, 255), (192, 192), llm.get_tokenizer().vocab_size, seed=rnd)
    log.clear()
    busy: list = []
    threading.Thread(target=start_busy, args=(busy,)).start()
    llm.generate(work.prompts, workload_params(work), use_tqdm=False)
    started, proc = busy[0]
    proc.kill()
    proc.wait()
    first = next(i for i, e in enumerate(log) if e[0] >= started)
    switched = next((i for i, e in enumerate(log[first:], first) if e[3] == 1 and not e[4]), None)
    probes = [i for i in range(1, len(log)) if log[i][4] and not log[i - 1][4]]
    print(f"round {rnd}: {len(log)} steps; busy from step {first}; first probe after it at "
          f"{next((p for p in probes if p >= first), None)}; running 1 thread from step {switched}")
    for i in range(max(0, first - 3), min(len(log), first + 40)):
        _, tok, s, cur, probing = log[i]
        print(f"  {i:4d} tok {tok:5d} ms {s * 1e3:7.2f} us/tok {s / tok * 1e6:7.1f} cur {cur} probing {probing}")
    time.sleep(3)
