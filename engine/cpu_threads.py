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
grow past twice what the probe measured for it (the load changed) probes again at once. Only where the user left
the count to torch (`cpu_threads=None`) on a CPU device, between the count torch had when the engine was built
(one per physical core, unless the user set another) and one. The engine reports no step that verified speculative
drafts: such a step computes several times its neighbours' tokens in about their time.
"""

from __future__ import annotations

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


class ThreadTuner:
    """Sets torch's thread count for each step (on the thread that runs the steps) and learns from its time."""

    PROBE_STEPS = 16
    RUN_STEPS = 256
    MAX_RUN_STEPS = 4096

    def __init__(self, most: int) -> None:
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

    @property
    def probing(self) -> bool:
        """Whether it is alternating its thread counts now."""
        return self._probing

    def before_step(self) -> None:
        """Choose this step's thread count."""
        want = self.choices[self._steps % 2] if self._probing else self.current
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)

    def after_step(self, tokens: int, seconds: float) -> None:
        """The step just chosen for computed `tokens` tokens in `seconds`."""
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
            self._start(probing=False)
        elif not self._probing:
            self._recent.append((tokens, seconds))
            recent_tokens = sum(t for t, _ in self._recent)
            slower = (len(self._recent) == self.PROBE_STEPS
                      and sum(s for _, s in self._recent) > 2 * self._expected * recent_tokens)
            if self._steps >= self._run_steps or slower:
                self._start(probing=True)

    def _start(self, probing: bool) -> None:
        self._probing = probing
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
