"""Why a choice stopped, in the two extensions clients of vLLM and SGLang read beside finish_reason."""

from __future__ import annotations


def stop_fields(finish_reason: str | None, stop_reason: str | int | None, last_token: int | None) -> dict:
    """vLLM's `stop_reason` (the stop string or stop token id that ended the choice; null for EOS, for length and
    while it runs) and SGLang's `matched_stop` (the same, or the EOS token id when the end of text ended it)."""
    matched = stop_reason if stop_reason is not None else last_token if finish_reason == "stop" else None
    return {"stop_reason": stop_reason, "matched_stop": matched}
