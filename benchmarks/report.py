"""What the interleaved A/B benchmarks print and save: per side its median, spread and runs; the rows as JSON."""

from __future__ import annotations

import argparse
import json
import statistics


def summarize(rates: dict[str, list[float]]) -> dict[str, float | list[float]]:
    """Per side: `<side>_tok_s` (the median), `<side>_spread` ((max - min) / median) and `<side>_runs`."""
    row: dict[str, float | list[float]] = {}
    for side, runs in rates.items():
        median = statistics.median(runs)
        row.update({f"{side}_tok_s": median, f"{side}_spread": (max(runs) - min(runs)) / median, f"{side}_runs": runs})
    return row


def write(path: str | None, args: argparse.Namespace, results: list[dict]) -> None:
    """Save the command's options and its rows to `path` (if given)."""
    if path:
        with open(path, "w") as handle:
            json.dump({"config": vars(args), "results": results}, handle, indent=1)
