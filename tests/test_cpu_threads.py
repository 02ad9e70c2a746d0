"""The engine's CPU thread count (engine/cpu_threads.py): the tuner follows the load, a fixed count holds per engine."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from engine.cpu_threads import CoreLoad, FixedThreads, ThreadTuner, thread_policy


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class ScriptedLoad:
    """Other processes' load as a test sets it, on a 2-core machine; counts its readings."""

    cpus = 2

    def __init__(self, cores: float = 0.0) -> None:
        self.cores = cores
        self.readings = 0

    def others(self, min_seconds: float = 0.0) -> float:
        self.readings += 1
        return self.cores


def run_steps(tuner: ThreadTuner, count: int, ms_per_token: dict[int, float], tokens: int = 32) -> list[int]:
    """`count` steps of `tokens` tokens whose time depends on the thread count; the counts used."""
    used = []
    for _ in range(count):
        tuner.before_step()
        threads = torch.get_num_threads()
        used.append(threads)
        tuner.after_step(tokens, tokens * ms_per_token[threads] / 1000)
    return used


def test_tuner_takes_the_faster_count_and_follows_the_load(restore_threads):
    tuner = ThreadTuner(2, ScriptedLoad())
    idle, busy = {2: 1.0, 1: 1.6}, {2: 3.0, 1: 1.7}
    used = run_steps(tuner, ThreadTuner.PROBE_STEPS, idle)
    assert used == [2, 1] * (ThreadTuner.PROBE_STEPS // 2)                     # the probe alternates
    assert run_steps(tuner, 100, idle) == [2] * 100
    used = run_steps(tuner, 3 * ThreadTuner.PROBE_STEPS, busy)                 # another process takes a core
    assert used[-ThreadTuner.PROBE_STEPS:] == [1] * ThreadTuner.PROBE_STEPS and tuner.num_probes == 1
    used = run_steps(tuner, ThreadTuner.RUN_STEPS + 2 * ThreadTuner.PROBE_STEPS, idle)   # ... and leaves
    assert used[-ThreadTuner.PROBE_STEPS:] == [2] * ThreadTuner.PROBE_STEPS


def test_a_clear_winner_is_probed_ever_more_rarely(restore_threads):
    tuner = ThreadTuner(2, ScriptedLoad())
    runs, probing = [], True
    for _ in range(20000):
        run_steps(tuner, 1, {2: 1.0, 1: 5.0})
        if probing and not tuner._probing:
            runs.append(tuner._run_steps)
        probing = tuner._probing
    assert runs[:5] == [512, 1024, 2048, 4096, 4096]
    run_steps(tuner, 3 * ThreadTuner.PROBE_STEPS, {2: 3.0, 1: 3.3})       # slower: a probe, a close one
    assert tuner._run_steps == ThreadTuner.RUN_STEPS and not tuner._probing


def test_tuner_probes_when_another_process_comes_or_goes(restore_threads):
    """A load the step times do not show (less than twice as slow; or gone while one thread runs, as fast as
    before) still makes the tuner probe within PROBE_STEPS steps, once it leaves fewer free cores than threads."""
    load = ScriptedLoad()
    tuner = ThreadTuner(2, load)
    idle, busy = {2: 1.0, 1: 1.4}, {2: 1.9, 1: 1.5}
    run_steps(tuner, ThreadTuner.PROBE_STEPS + 40, idle)
    assert tuner.current == 2 and tuner.num_probes == 0
    for cores in (0.1, 0.5):                          # noise; a reading just past the line (within its band)
        load.cores = cores
        assert run_steps(tuner, 100, idle) == [2] * 100 and tuner.num_probes == 0
    load.cores = 0.8
    used = run_steps(tuner, 3 * ThreadTuner.PROBE_STEPS, busy)
    assert tuner.num_probes == 1 and used[-ThreadTuner.PROBE_STEPS:] == [1] * ThreadTuner.PROBE_STEPS
    load.cores = 0.6                                  # the same load, measured lower: no probe
    assert run_steps(tuner, 100, busy) == [1] * 100 and tuner.num_probes == 1
    load.cores = 0.0
    used = run_steps(tuner, 3 * ThreadTuner.PROBE_STEPS, idle)
    assert tuner.num_probes == 2 and used[-ThreadTuner.PROBE_STEPS:] == [2] * ThreadTuner.PROBE_STEPS


def test_the_load_is_read_afresh_after_the_engine_sat_idle(restore_threads):
    """A reading of the load that began before an idle stretch is dropped at the next step (a server between
    requests): steps in quick succession read it only at the tuner's checks."""
    import time

    load = ScriptedLoad()
    tuner = ThreadTuner(2, load)
    run_steps(tuner, ThreadTuner.PROBE_STEPS + 3, {2: 1.0, 1: 1.4})        # a probe, then a run
    readings = load.readings
    run_steps(tuner, 10, {2: 1.0, 1: 1.4})
    assert load.readings == readings                      # no check due within these steps, no gap
    time.sleep(ThreadTuner.LOAD_WINDOW_S + 0.1)
    run_steps(tuner, 1, {2: 1.0, 1: 1.4})
    assert load.readings == readings + 1


def test_core_load_sees_a_busy_process():
    """CoreLoad against the kernel's own accounting: a process spinning beside this (idle) one keeps about one core
    busy; this process's own work is not counted."""
    import subprocess
    import sys
    import time

    load = CoreLoad()
    if load.others() is None and load.others() is None:
        pytest.skip("no /proc/stat here")
    assert load.others(min_seconds=60) is None      # too short a stretch: nothing yet, measured on from its start

    def own_work_counted() -> float:
        """What this process's spinning adds to the reading, beside whatever else runs on the machine."""
        time.sleep(0.5)
        before = load.others()
        started = time.perf_counter()
        while time.perf_counter() - started < 0.5:
            pass
        spinning = load.others()
        time.sleep(0.5)
        return spinning - max(before, load.others())

    # Counted, it would add about one core; a load that changes in the meantime may add some: one of three tries.
    assert any(own_work_counted() < 0.5 for _ in range(3))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        load.others()
        time.sleep(0.6)
        assert load.others() > 0.6
    finally:
        busy.kill()
        busy.wait()


def test_policies(restore_threads):
    assert thread_policy(torch.device("cuda"), None, 2) is None
    assert isinstance(thread_policy(torch.device("cpu"), None, 2), ThreadTuner)
    assert thread_policy(torch.device("cpu"), None, 1).current == 1          # the user's count of one is kept
    fixed = thread_policy(torch.device("cpu"), 3, 2)
    assert isinstance(fixed, FixedThreads)
    torch.set_num_threads(1)
    fixed.before_step()
    assert torch.get_num_threads() == 3


def test_building_an_engine_leaves_the_process_count_alone(checkpoint_factory, restore_threads):
    """An engine with its own count does not change the count the next engine (or the user) sees."""
    torch.set_num_threads(2)
    one = LLM(checkpoint_factory("llama"), cpu_threads=1)
    assert torch.get_num_threads() == 2
    tuned = LLM(checkpoint_factory("llama"))
    assert isinstance(tuned.engine.threads, ThreadTuner) and tuned.engine.threads.choices == (2, 1)
    assert one.engine.threads.current == 1


def test_each_engine_keeps_its_own_count(checkpoint_factory, restore_threads):
    """Two engines in one process (one thread, two threads): each step runs with its own engine's count, whatever
    the other set last."""
    path = checkpoint_factory("llama")
    one, two = LLM(path, cpu_threads=1), LLM(path, cpu_threads=2)
    seen = []
    for llm in (one, two, one):
        runner = llm.engine.runner
        execute = runner.execute
        runner.execute = lambda step, execute=execute: seen.append(torch.get_num_threads()) or execute(step)
        llm.generate(["hi"], SamplingParams(max_tokens=2), use_tqdm=False)
        runner.execute = execute
    assert seen == [1, 1, 2, 2, 1, 1]
