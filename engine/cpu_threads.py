"""The CPU thread count, chosen by measuring: torch's default (one OpenMP thread per core) is fastest on an idle
machine and collapses on a shared one.

Torch's OpenMP threads wait for each other at the end of every parallel region, spinning. When another process
takes one of the cores, the thread that was descheduled holds up all the others at every matmul: measured on a
2-core machine (benchmarks/RESULTS.md), two threads beside one busy process kept 0.37 of their idle throughput,
where one thread kept 0.96 of its own (but is 25% slower when the machine is idle). No fixed count is right for
both, and the load can change while the engine runs.

So `ThreadTuner` measures. Now and then it probes: for `PROBE_STEPS` steps it alternates between the full thread
count and one thread, step by step (neighbouring steps are alike under continuous batching, so both see the same
mix of work), and compares their seconds per token. The faster runs the next steps: `RUN_STEPS`, twice as many
after each probe that found the loser more than twice as slow (up to `MAX_RUN_STEPS`: a probe costs its slow
steps), and again `RUN_STEPS` after a close one. A run whose seconds per token over its last `PROBE_STEPS` steps
grow past twice what the probe measured for it probes again at once, and so does one in which the load changed:
`CoreLoad` reads how many cores other processes keep busy on this process's CPUs (over `LOAD_WINDOW_S` at least,
checked every `PROBE_STEPS` steps), and a probe follows when that passes, by `LOAD_BAND`, the line past which they
leave the tuner's threads fewer cores than threads, on the other side from the probe's reading (a busy process
that comes or goes; measured in RESULTS.md: the timing rule alone missed a load that doubled the step time, and
cannot see a load leave while one thread runs, its steps as fast as before). Only where the user left the count
to torch (`cpu_threads=None`) on a CPU device, between the count torch had when the engine was built
(one per physical core, unless the user set another) and one. The engine reports no step that verified speculative
drafts: such a step computes several times its neighbours' tokens in about their time.
"""

from __future__ import annotations

import os
import time
from collections import deque

import torch


class FixedThreads:
    """Sets the engine's thread count before each step: torch's count belongs to the thread that runs the steps,
    and other engines in the process (or the user) may change it between two steps of this one."""

    def __init__(self, count: int) -> None:
        self.current = count
        self.num_probes = 0

    def before_step(self) -> None:
        """Use this engine's count for the step."""
        if torch.get_num_threads() != self.current:
            torch.set_num_threads(self.current)

    def after_step(self, tokens: int, seconds: float) -> None:
        """Nothing to learn."""


class CoreLoad:
    """How many cores other processes keep busy on the CPUs this process may run on (Linux's /proc/stat, their time
    stolen by a hypervisor included): the busy time of those CPUs over a stretch of wall time, less this process's
    own CPU time. Unmeasurable (None) where /proc/stat cannot be read or lacks one of those CPUs. The CPUs are
    those the calling thread may run on, or all of them where that is fewer than the `threads` the process runs."""

    def __init__(self, threads: int = 1) -> None:
        try:
            cpus = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            cpus = set()
        if len(cpus) < threads:
            cpus = range(os.cpu_count() or 1)
        self.cpus = len(cpus)
        self._names = {f"cpu{i}".encode() for i in cpus}
        self._last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        """The CPUs' busy seconds so far, the wall clock and this process's CPU seconds (None: no /proc/stat)."""
        try:
            with open("/proc/stat", "rb") as f:
                lines = f.read().splitlines()
            ticks = found = 0
            for line in lines[1:]:
                if not line.startswith(b"cpu"):
                    break
                fields = line.split()
                if fields[0] in self._names:     # user nice system idle iowait irq softirq steal
                    ticks += sum(map(int, fields[1:9])) - int(fields[4]) - int(fields[5])
                    found += 1
            if found < len(self._names):
                return None
            return ticks / os.sysconf("SC_CLK_TCK"), time.perf_counter(), time.process_time()
        except (OSError, ValueError, IndexError, AttributeError):
            return None

    def others(self, min_seconds: float = 0.0) -> float | None:
        """The cores other processes kept busy since the last call that returned (or since this was built); None,
        from the same start next time, before `min_seconds` of wall time (the kernel counts in ticks of 10 ms: a
        tenth of a second reads one core's use to within about 0.1)."""
        now, last = self._read(), self._last
        if now is not None and last is not None and now[1] - last[1] < min_seconds:
            return None
        self._last = now
        if now is None or last is None or now[1] <= last[1]:
            return None
        return max(0.0, (now[0] - last[0]) - (now[2] - last[2])) / (now[1] - last[1])


class ThreadTuner:
    """Sets torch's thread count for each step (on the thread that runs the steps) and learns from its time."""

    PROBE_STEPS = 16
    RUN_STEPS = 256
    MAX_RUN_STEPS = 4096
    LOAD_MARGIN = 0.4       # cores of other processes' work beyond the free ones that count as a load
    LOAD_BAND = 0.15        # ... and how far past that line (either way) a reading must be to count as a change
    LOAD_WINDOW_S = 0.5     # the least wall time a reading of the load covers

    def __init__(self, most: int, load: CoreLoad | None = None) -> None:
        self.choices = (most, 1)
        self.current = most
        self._probing = True
        self._steps = 0
        self._tokens = {choice: 0 for choice in self.choices}
        self._seconds = {choice: 0.0 for choice in self.choices}
        self._expected = 0.0            # seconds per token the probe measured for the running choice
        self._run_steps = self.RUN_STEPS
        self._recent: deque[tuple[int, float]] = deque(maxlen=self.PROBE_STEPS)     # the run's last steps
        self.num_probes = 0
        self._load = load or CoreLoad(most)
        self._load_line = self._load.cpus - most + self.LOAD_MARGIN     # past it, fewer free cores than threads
        self._probe_load: float | None = None                        # the cores others kept busy during the probe
        self._last_step = time.perf_counter()                         # when the last step ended

    @property
    def probing(self) -> bool:
        """Whether it is alternating its thread counts now."""
        return self._probing

    def before_step(self) -> None:
        """Choose this step's thread count. After the engine sat idle for LOAD_WINDOW_S or more, the load is read
        from here on: what other processes did while this one waited is not what its steps will meet."""
        if time.perf_counter() - self._last_step > self.LOAD_WINDOW_S:
            self._load.others()
        want = self.choices[self._steps % 2] if self._probing else self.current
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)

    def after_step(self, tokens: int, seconds: float) -> None:
        """The step just chosen for computed `tokens` tokens in `seconds`."""
        self._last_step = time.perf_counter()
        if tokens <= 0:
            return
        choice = torch.get_num_threads()
        self._steps += 1
        self._tokens[choice] = self._tokens.get(choice, 0) + tokens
        self._seconds[choice] = self._seconds.get(choice, 0.0) + seconds
        if self._probing and self._steps >= self.PROBE_STEPS:
            rates = {c: self._seconds[c] / self._tokens[c] for c in self.choices if self._tokens.get(c)}
            self.current = min(rates, key=rates.get)
            self._expected = rates[self.current]
            clear = max(rates.values()) > 2 * self._expected
            self._run_steps = min(2 * self._run_steps, self.MAX_RUN_STEPS) if clear else self.RUN_STEPS
            self._probe_load = self._load.others()
            self._start(probing=False)
        elif not self._probing:
            self._recent.append((tokens, seconds))
            recent_tokens = sum(t for t, _ in self._recent)
            slower = (len(self._recent) == self.PROBE_STEPS
                      and sum(s for _, s in self._recent) > 2 * self._expected * recent_tokens)
            if self._steps >= self._run_steps or slower or (
                    self._steps % self.PROBE_STEPS == 0 and self._load_changed(self._load.others(self.LOAD_WINDOW_S))):
                self._start(probing=True)

    def _load_changed(self, now: float | None) -> bool:
        """Whether other processes' load `now` is past the load line, by LOAD_BAND, on the other side from the
        probe's (the band keeps a reading's noise near the line from probing again and again)."""
        then, line = self._probe_load, self._load_line
        if now is None or then is None:
            return False
        return now > line + self.LOAD_BAND if then <= line else now < line - self.LOAD_BAND

    def _start(self, probing: bool) -> None:
        self._probing = probing
        if probing:
            self._load.others()             # the probe's load is measured from here
        self._recent.clear()
        self.num_probes += probing
        self._steps = 0
        self._tokens = {choice: 0 for choice in self.choices}
        self._seconds = {choice: 0.0 for choice in self.choices}


def thread_policy(device: torch.device, cpu_threads: int | None, most: int) -> ThreadTuner | FixedThreads | None:
    """How a CPU engine sets its threads each step: `cpu_threads` if given; else, where the process allows `most`
    threads (torch's count when the engine was built: one per physical core unless the user set another) and that
    is more than one, a tuner between `most` and one. None on a GPU."""
    if device.type != "cpu":
        return None
    if cpu_threads is not None or most < 2:
        return FixedThreads(cpu_threads or most)
    return ThreadTuner(most)
