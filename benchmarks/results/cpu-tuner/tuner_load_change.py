"""The thread tuner when a busy process comes and goes (default model, 32 sequences, prompts 21-255, 192 new tokens
each). Each round: an idle run (the busy process of the round before has just ended: steps until the tuner runs
two threads again, and its tok/s), then a run with a busy process started 1.5 s in (steps from its start to the
tuner's first probe and to one thread). Run from a checkout: PYTHONPATH=. python <this file> [rounds]"""
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
    log.append((time.perf_counter(), tuner.current, tuner.probing))


def start_busy(busy: list) -> None:
    time.sleep(1.5)
    busy.append((time.perf_counter(), subprocess.Popen([sys.executable, "-c", "while True: pass"])))


def first(condition, start: int = 0) -> int | None:
    return next((i - start for i in range(start, len(log)) if condition(log[i])), None)


tuner.after_step = logged
for rnd in range(int(sys.argv[1]) if len(sys.argv) > 1 else 4):
    work = make_workload(32, (21, 255), (192, 192), llm.get_tokenizer().vocab_size, seed=rnd)
    tokens = 32 * 192
    log.clear()
    at_start = tuner.current
    started = time.perf_counter()
    llm.generate(work.prompts, workload_params(work), use_tqdm=False)
    idle_rate = tokens / (time.perf_counter() - started)
    back = first(lambda e: e[1] == 2 and not e[2])
    log.clear()
    busy: list = []
    threading.Thread(target=start_busy, args=(busy,)).start()
    started = time.perf_counter()
    llm.generate(work.prompts, workload_params(work), use_tqdm=False)
    loaded_s = time.perf_counter() - started
    busy_at, proc = busy[0]
    proc.kill()
    proc.wait()
    at = first(lambda e, busy_at=busy_at: e[0] >= busy_at)
    probe = first(lambda e: e[2], at) if at is not None else None
    one = first(lambda e: e[1] == 1 and not e[2], at) if at is not None else None
    print(f"round {rnd}: idle run: {at_start} thread(s) at its start, two threads from step {back}, "
          f"{idle_rate:.0f} tok/s | busy run: {loaded_s:.2f} s, busy from step {at} of {len(log)}, steps from "
          f"then to a probe {probe}, to one thread {one}", flush=True)
