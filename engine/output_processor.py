"""After each step: append the drawn tokens, detokenize, decide which sequences stop, and build outputs.

A sequence that verified draft tokens gets its accepted ones and the token after them, one at a time through the
same rules: a stop among them ends it there, and the rest are dropped.

A structured-output sequence first feeds the token to its grammar's matcher: the grammar's end (its stop token,
EOS, drawn once the text is complete) ends the sequence with "stop", whatever ignore_eos says.

Stop rules, in order, as vLLM's: EOS (unless ignore_eos) and `stop_token_ids` end a sequence without adding their
text (unless include_stop_str_in_output; the sampler draws neither before `min_tokens` tokens exist); after
`min_tokens` tokens, a stop string ending in the new text (it may begin earlier, across token boundaries) cuts the
text before it (or after it with include_stop_str_in_output). Then `max_tokens`, which already includes the end of
the context, ends it with "length". The stop reason is the stop string or stop token, or None for the tokenizer's
EOS (the other EOS ids of generation_config.json are stop tokens, as in vLLM).

Streamed outputs are deltas, and never carry text that could still turn out to be the start of a stop
string: that tail is held back until it is not.
"""

from __future__ import annotations

import time

from engine.model_runner import StepOutput
from engine.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestOutput
from engine.sampler import TopLogprobs
from engine.sequence import Request, Sequence
from engine.tokenizer import Tokenizer


class OutputProcessor:
    """Applies a step's results to its sequences and reports which finished."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(tokenizer.eos_token_ids)
        self.primary_eos = tokenizer.hf.eos_token_id

    def process(self, step: StepOutput, now: float) -> list[Sequence]:
        """Record the step's prompt logprobs and new tokens; return the sequences that just finished."""
        if step.prompt_logprobs is not None:
            row = 0
            for seq, span in zip(step.prompt_seqs, step.prompt_positions):
                request = seq.request
                for position in span:
                    token = request.prompt_token_ids[position]
                    request.prompt_logprobs.append(self._position_logprobs(step.prompt_logprobs, row, token))
                    row += 1
        finished = []
        if step.sampled is None:
            return finished
        sampled = step.sampled
        token_ids = sampled.token_ids
        logprob_row = {row: i for i, row in enumerate(sampled.logprob_rows)}
        for seq, first, accepted in zip(step.sampled_seqs, step.first_rows, step.num_accepted):
            if seq.request.first_token_time is None:
                seq.request.first_token_time = now
            if seq.max_tokens == 0:          # only the prompt was wanted (prompt logprobs)
                seq.finish_reason = "length"
                finished.append(seq)
                continue
            for row in range(first, first + accepted + 1):      # its accepted drafts, then one token more
                token = token_ids[row]
                seq.token_ids.append(token)
                if seq.thinking is not None:
                    seq.thinking.accept(token)
                if logprob_row and row in logprob_row:
                    self._add_logprobs(seq, sampled.logprobs, logprob_row[row], token)
                if (seq.matcher is not None and _grammar_ended(seq, token)) or self._check_stop(seq, token):
                    finished.append(seq)
                    break
        return finished

    def _add_logprobs(self, seq: Sequence, top: TopLogprobs, i: int, token: int) -> None:
        seq.logprobs.append(self._position_logprobs(top, i, token))
        seq.cumulative_logprob += top.chosen_logprob[i]

    def _position_logprobs(self, top: TopLogprobs, i: int, chosen: int) -> PositionLogprobs:
        text = self.tokenizer.token_text
        entry = {tid: Logprob(lp, rank, text(tid))
                 for rank, (tid, lp) in enumerate(zip(top.top_ids[i], top.top_logprobs[i]), start=1)}
        if chosen not in entry:
            entry[chosen] = Logprob(top.chosen_logprob[i], top.chosen_rank[i], text(chosen))
        return entry

    def _check_stop(self, seq: Sequence, token: int) -> bool:
        params = seq.params
        num_output = len(seq.token_ids) - seq.num_prompt_tokens
        may_stop = num_output >= params.min_tokens
        if may_stop and token in self.eos_token_ids and not params.ignore_eos:
            seq.finish_reason = "stop"
            if token != self.primary_eos:       # generation_config's other EOS ids are stop tokens (as vLLM's)
                seq.stop_reason = token
        elif may_stop and params.stop_token_ids and token in params.stop_token_ids:
            seq.finish_reason, seq.stop_reason = "stop", token
        else:
            if seq.text_each_step:
                text = seq.detokenizer.step(token)
                if text:
                    before = len(seq.text)
                    seq.text += text
                    if num_output > params.min_tokens and params.stop and _cut_at_stop(seq, before):
                        return True                     # the text ends at the stop string
            if num_output < seq.max_tokens:
                return False
            seq.finish_reason = "length"
            return _finish_text(seq, num_output)
        return _finish_at_stop_token(seq, num_output)

    def make_output(self, request: Request) -> RequestOutput | None:
        """The request's output now, or None if there is nothing to say. A streamed request gets what is new
        since its last output; any other gets everything, once, when it finishes."""
        finished = request.finished
        stream = request.stream
        if not stream and not finished:
            return None
        choices = []
        for seq in request.seqs:            # a loop, not a comprehension: every step, every streamed request
            choice = _choice(seq, stream)
            if choice is not None:
                choices.append(choice)
        if not choices:
            return None
        prompt_logprobs = None if request.prompt_logprobs_sent else request.prompt_logprobs
        if stream and prompt_logprobs is not None:
            request.prompt_logprobs_sent = True
        return RequestOutput(request.request_id, request.prompt, request.prompt_token_ids, choices, finished,
                             prompt_logprobs, request.num_cached_tokens, _timings(request) if finished else {})


def _timings(request: Request) -> dict[str, float]:
    """A finished request's moments (time.monotonic()): arrival, first scheduled, first token, finished."""
    times = {"arrival_time": request.arrival_time, "first_scheduled_time": request.first_scheduled_time,
             "first_token_time": request.first_token_time, "finished_time": time.monotonic()}
    return {name: value for name, value in times.items() if value is not None}


def _grammar_ended(seq: Sequence, token: int) -> bool:
    """Feed `token` to the sequence's matcher; True (finish reason "stop", the token's text added only with
    include_stop_str_in_output) once the grammar has ended, or if the token was not one the mask allowed (which
    only a bug can draw)."""
    if seq.matcher.accept_token(token) and not seq.matcher.is_terminated():
        return False
    seq.finish_reason = "stop"
    return _finish_at_stop_token(seq, len(seq.token_ids) - seq.num_prompt_tokens)


def _finish_at_stop_token(seq: Sequence, num_output: int) -> bool:
    """A sequence ends on the last of its `num_output` tokens, a stop token: its text is added only with
    include_stop_str_in_output (as vLLM's)."""
    return _finish_text(seq, num_output if seq.params.include_stop_str_in_output else num_output - 1)


def _finish_text(seq: Sequence, num_text_tokens: int) -> bool:
    """A sequence ends: its text becomes that of its first `num_text_tokens` generated tokens (those not yet
    detokenized are, at once), and what the detokenizer held back (it may end inside a multi-byte character).
    Returns True (finished). Without SamplingParams.detokenize the text stays empty."""
    if not seq.params.detokenize:
        return True
    start = seq.num_prompt_tokens
    seq.text += seq.detokenizer.finish(seq.token_ids[start:start + num_text_tokens])
    return True


def _choice(seq: Sequence, delta: bool) -> CompletionOutput | None:
    """One choice: everything so far, or (delta) what is new since the last output and safe to show."""
    wants_logprobs = seq.params.logprobs is not None
    if not delta:
        return CompletionOutput(seq.index, seq.text, seq.output_token_ids, _cumulative(seq),
                                seq.logprobs if wants_logprobs else None, seq.finish_reason, seq.stop_reason)
    if seq.finish_sent:
        return None
    finished = seq.finished
    shown = len(seq.text)
    if seq.params.stop and not finished:
        shown -= _held_back(seq.text, seq.params.stop)
    new_tokens = seq.token_ids[seq.num_prompt_tokens + seq.sent_tokens:]
    if not new_tokens and shown <= seq.sent_text and not finished:
        return None
    choice = CompletionOutput(seq.index, seq.text[seq.sent_text:shown], new_tokens, _cumulative(seq),
                              seq.logprobs[seq.sent_tokens:] if wants_logprobs else None,
                              seq.finish_reason, seq.stop_reason)
    seq.sent_text = max(seq.sent_text, shown)
    seq.sent_tokens += len(new_tokens)
    seq.finish_sent = finished
    return choice


def _cumulative(seq: Sequence) -> float | None:
    return seq.cumulative_logprob if seq.params.logprobs is not None else None


def _cut_at_stop(seq: Sequence, before: int) -> bool:
    """If a stop string occurs in the text added since `before`, cut the text there and finish."""
    best = None
    for stop in seq.params.stop:
        at = seq.text.find(stop, max(0, before - len(stop) + 1))
        if at != -1 and (best is None or at < best[0]):
            best = (at, stop)
    if best is None:
        return False
    at, stop = best
    seq.text = seq.text[:at + len(stop)] if seq.params.include_stop_str_in_output else seq.text[:at]
    seq.finish_reason, seq.stop_reason = "stop", stop
    return True


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    return hold
