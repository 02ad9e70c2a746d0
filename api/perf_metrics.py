"""Fireworks' `perf_metrics_in_response`: a request's server-side timings and token counts in its response (the
last chunk of a stream, the one with the final finish_reason), under the names of Fireworks' `fireworks-*`
response headers without the prefix. Times are seconds, from the request's arrival at the server."""

from __future__ import annotations

import time

from api.runner import Job


def perf_metrics(job: Job) -> dict:
    """The job's metrics so far; call once its last output is in."""
    now = time.monotonic()
    stamps = list(job.timings.values())
    first = [s["first_token_time"] for s in stamps if "first_token_time" in s]
    scheduled = [s["first_scheduled_time"] for s in stamps if "first_scheduled_time" in s]
    metrics = {"prompt-tokens": job.prompt_tokens, "cached-prompt-tokens": job.cached_tokens(),
               "server-processing-time": round(now - job.arrival, 6)}
    if first:
        metrics["server-time-to-first-token"] = round(min(first) - job.arrival, 6)
    if scheduled:
        metrics["prefill-queue-duration"] = round(min(scheduled) - job.arrival, 6)
        if first:
            metrics["prefill-duration"] = round(max(0.0, min(first) - min(scheduled)), 6)
    return metrics
