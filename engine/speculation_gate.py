"""When speculative decoding pays: a model of the step's time and of the acceptance rate, fitted as the engine
runs (engine/speculative.py drafts only as far as this says)."""

from __future__ import annotations

from collections import deque


class SpeculationGate:
    """Decides, step by step, how many decoding sequences may draft. A step's forward is modelled as fixed +
    per_token * tokens seconds, fitted on the recent decoding steps; drafting costs per_token for each draft token
    it verifies, plus the time to propose (measured: a draft model's k forwards, or the n-gram searches).

    While sequences wait for a place in the batch, a sequence that ends early lets one in, so every accepted draft
    token counts: drafting yields r extra tokens per draft token (r: accepted over drafted, recently), and pays
    when those extra tokens per extra second beat the rate of a step of the whole batch without drafts, running /
    (fixed + per_token * running), the sequences still computing their prompts included (they are about to
    decode at that rate): a small batch pays at almost any r (the fixed cost dominates), a large one only at a
    high r.

    In a closed batch (nothing waits), every token is computed once either way, and the batch takes as many steps
    as its slowest sequences need: drafting saves `fixed` seconds for each step by which a step moves the slowest
    sequences further than one token, and costs per_token for each rejected draft token plus the proposing. All
    three are measured per step that searched for drafts, recently (g steps gained, j tokens rejected, p seconds
    of proposing; a step that moves only some of the slowest gains part of a step, see `Speculation.observe`), and
    it pays when g * fixed > j * per_token + p. (Accepted tokens of the other sequences only end them sooner, which
    saves nothing: their tokens are computed anyway.)

    While it does not pay, one sequence (in a closed batch all the slowest, which alone can move it) still drafts
    now and then (after `PROBE_EVERY` steps, then twice as many each time up to `MAX_PROBE_EVERY`), to keep r and g
    current at the cost of a few tokens. A closed batch's probe drafts for up to the whole batch, so its interval
    grows on to `MAX_CLOSED_PROBE_EVERY`: a closed batch of 32 random prompts made two probes a run of 128 steps,
    80 to 150 draft tokens, where on a code workload, whose drafting paid between its probes, they came 8 to 32
    steps apart (benchmarks/RESULTS.md). Until the time model is fitted, every `PROBE_EVERY`-th step drafts
    nothing, so that it sees steps of more than one size."""

    PROBE_EVERY = 8
    MAX_PROBE_EVERY = 64
    MAX_CLOSED_PROBE_EVERY = 256
    WINDOW = 64                          # the recent steps the time model is fitted on

    def __init__(self) -> None:
        self.fixed_s: float | None = None
        self.per_token_s: float | None = None
        self._samples: deque[tuple[int, float]] = deque(maxlen=self.WINDOW)
        self._sums = [0.0, 0.0, 0.0, 0.0]     # of the samples' t, s, t * t and t * s (summed afresh each WINDOW)
        self._since_sum = 0
        self._accepted = 1.0             # decayed counts, a prior of one accepted draft in two
        self._drafted = 2.0
        # In a closed batch, per step that searched for drafts, recently (a prior of half a step gained):
        self.steps_gained = 0.5          # steps by which the slowest sequences went further than one token
        self.rejected_per_step = 0.0     # draft tokens rejected
        self.propose_s_per_step = 0.0    # seconds of proposing
        self.drafts_per_seq = 1.0        # draft tokens a drafting sequence verifies, recently
        self.propose_s_per_seq = 0.0     # seconds of proposing per drafting sequence, recently
        self._steps = 0
        self._probe_every = self.PROBE_EVERY

    @property
    def acceptance(self) -> float:
        """Accepted over drafted tokens, recently."""
        return self._accepted / self._drafted

    def allowed(self, batch: int, running: int | None = None, closed: bool = False) -> int:
        """How many of `batch` decoding sequences may draft this step, of `running` sequences in all (default
        `batch`; the others are computing their prompts, and will decode at the rate drafting must beat), in a
        closed batch or not (then `batch` holds its slowest decoding sequences)."""
        self._steps += 1
        if self.fixed_s is None:            # a step without drafts now and then, so that steps differ in size
            return 0 if self._steps % self.PROBE_EVERY == 0 else batch
        if self.pays(batch, running, closed):
            self._probe_every = self.PROBE_EVERY
            return batch
        if self._steps % self._probe_every:
            return 0
        longest = self.MAX_CLOSED_PROBE_EVERY if closed else self.MAX_PROBE_EVERY
        self._probe_every = min(2 * self._probe_every, longest)     # while it keeps not paying
        return batch if closed else 1

    def closed_idle(self) -> bool:
        """Whether a step of a closed batch drafts nothing, whatever its sequences: the time model is fitted,
        drafting does not pay and no probe is due. If so, the step is counted as a call of `allowed` would count
        it, and the caller need not look for the sequences that may draft (most steps, where drafting does not
        pay)."""
        if (self.fixed_s is None or (self._steps + 1) % self._probe_every == 0
                or self.pays(0, closed=True)):
            return False
        self._steps += 1
        return True

    def pays(self, batch: int, running: int | None = None, closed: bool = False) -> bool:
        """Whether drafting for `batch` decoding sequences gives more tokens per second than a step of `running`
        (default `batch`) decoding sequences makes; in a closed batch, whether it saves more time than it costs."""
        if closed:
            return self.steps_gained * self.fixed_s > (self.per_token_s * self.rejected_per_step
                                                       + self.propose_s_per_step)
        running = running or batch
        drafts = batch * self.drafts_per_seq
        extra_s = self.per_token_s * drafts + self.propose_s_per_seq * batch
        step_s = self.fixed_s + self.per_token_s * running
        return self.acceptance * drafts * step_s > running * extra_s

    def observe_step(self, tokens: int, rows: int, seconds: float) -> None:
        """A forward that computed `tokens` tokens and drew `rows` of them took `seconds`: refit the time model on
        the recent steps that only decoded or verified (every token drawn, as a draft token is; a prefill chunk's
        tokens cost less, having no logits)."""
        if tokens != rows:
            return
        samples, sums = self._samples, self._sums
        if len(samples) == self.WINDOW:      # the oldest leaves the window
            t, s = samples[0]
            sums[0] -= t
            sums[1] -= s
            sums[2] -= t * t
            sums[3] -= t * s
        samples.append((tokens, seconds))
        self._since_sum += 1
        if self._since_sum == self.WINDOW:   # running sums drift: sum the window afresh now and then
            self._since_sum = 0
            sums[:] = [sum(t for t, _ in samples), sum(s for _, s in samples), sum(t * t for t, _ in samples),
                       sum(t * s for t, s in samples)]
        else:
            sums[0] += tokens
            sums[1] += seconds
            sums[2] += tokens * tokens
            sums[3] += tokens * seconds
        n = len(samples)
        var = sums[2] - sums[0] * sums[0] / n
        if var < 0.25:                      # every step of one size (whole token counts: two sizes give >= 0.5)
            return
        slope = (sums[3] - sums[0] * sums[1] / n) / var
        self.per_token_s = max(slope, 1e-9)
        self.fixed_s = max((sums[1] - self.per_token_s * sums[0]) / n, 1e-9)

    def observe_proposal(self, seqs: int, seconds: float) -> None:
        """Proposing for `seqs` sequences took `seconds`."""
        if seqs:
            self.propose_s_per_seq = 0.8 * self.propose_s_per_seq + 0.2 * seconds / seqs

    def observe_acceptance(self, seqs: int, drafted: int, accepted: int) -> None:
        """Verification accepted `accepted` of the `drafted` draft tokens of `seqs` sequences."""
        if drafted:
            self._accepted = 0.95 * self._accepted + accepted
            self._drafted = 0.95 * self._drafted + drafted
            self.drafts_per_seq = 0.8 * self.drafts_per_seq + 0.2 * drafted / seqs

    def observe_closed_step(self, gained: float, rejected: int, propose_s: float) -> None:
        """A step of a closed batch that searched for drafts for `propose_s` seconds moved its slowest sequences
        `gained` tokens further than one (a fraction: some of them moved), and rejected `rejected` draft tokens."""
        self.steps_gained = 0.8 * self.steps_gained + 0.2 * gained
        self.rejected_per_step = 0.8 * self.rejected_per_step + 0.2 * rejected
        self.propose_s_per_step = 0.8 * self.propose_s_per_step + 0.2 * propose_s
