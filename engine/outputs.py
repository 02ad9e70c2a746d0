"""What the engine hands back: RequestOutput with one CompletionOutput per choice (vLLM's shapes)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Logprob:
    """The log-probability of one token under the raw model distribution, its rank (1 = most likely) and text."""

    logprob: float
    rank: int
    decoded_token: str


# One dict per position: token id -> Logprob, holding the top-k tokens plus the chosen one.
PositionLogprobs = dict[int, Logprob]


@dataclass(slots=True)
class CompletionOutput:
    """One choice. In a streamed (delta) output, text, token_ids and logprobs hold only what is new."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[PositionLogprobs] | None = None
    finish_reason: str | None = None          # "stop" | "length" | "abort" | None while running
    stop_reason: str | int | None = None      # the stop string or stop token id that ended it

    @property
    def finished(self) -> bool:
        """Whether this choice has ended."""
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestOutput:
    """The result of one request: its prompt and its choices, in index order."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    num_cached_tokens: int = 0                # prompt tokens served from the prefix cache
    # Once finished: arrival_time, first_scheduled_time, first_token_time, finished_time (time.monotonic()).
    metrics: dict[str, float] = field(default_factory=dict)
