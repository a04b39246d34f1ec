"""Where speculation stops paying: the crossover of a design's throughput ratio to its baseline
over a sweep. `stops_paying` is the one definition; the scenario runner and the fidelity
experiment both read their crossovers from it.
"""
from __future__ import annotations

import numpy as np


def stops_paying(points: list[float], ratios: list[float]) -> tuple[float | None, float | None]:
    """Where a design stops paying over a sweep, from its throughput ratio to the baseline.

    The crossover is the first sweep point from which the ratio stays <= 1 to the end of the
    sweep (a dip that recovers at larger batches is not where speculation stops paying); None if
    the design still pays at the last point. Also the log-linear interpolation between the last
    point that paid and the crossover (None when the design never paid).
    """
    i = len(ratios)
    while i > 0 and ratios[i - 1] <= 1.0:
        i -= 1
    if i == len(ratios):
        return None, None
    if i == 0:
        return points[0], None
    (x0, s0), (x1, s1) = (points[i - 1], ratios[i - 1]), (points[i], ratios[i])
    f = (s0 - 1.0) / (s0 - s1)
    return points[i], float(np.exp(np.log(x0) + f * (np.log(x1) - np.log(x0))))


def crossover_point(points, baseline_throughput, design_throughput) -> int | None:
    """The sweep point from which the design stops beating the baseline for good (its throughput
    <= the baseline's there and at every larger point); None when it still wins at the last."""
    at, _ = stops_paying(list(points), [s / a for a, s in zip(baseline_throughput, design_throughput)])
    return None if at is None else int(at)


def crossover(summary_rows: list[dict], baseline: str, param: str) -> list[dict]:
    """Per design: throughput ratio to the baseline at each sweep point, and where it stops paying
    for good (stops_paying)."""
    by = {}
    for row in summary_rows:
        by.setdefault(row["name"], []).append(row)
    base = {r["sweep"][param]: r["throughput_tokens_per_s"] for r in by.get(baseline, [])}
    out = []
    for name, rows in by.items():
        if name == baseline:
            continue
        ratios = [(r["sweep"][param], r["throughput_tokens_per_s"] / base[r["sweep"][param]])
                  for r in rows if base.get(r["sweep"][param])]
        stops, interp = stops_paying([x for x, _ in ratios], [r for _, r in ratios])
        out.append({"design": name, "baseline": baseline, "param": param,
                    "speedup": [{param: x, "ratio": s} for x, s in ratios],
                    "stops_paying_at": stops, "stops_paying_at_interpolated": interp})
    return out
