"""Where speculation stops paying: the crossover of a design's throughput ratio to its baseline
over a sweep. `stops_paying` is the one definition; the scenario runner and the fidelity
experiment both read their crossovers from it. The scenario's crossover pairs the replications of
design and baseline by seed, on steady-state throughput where every window is steady
(simulator/analysis/steady_state.py), and gives the crossover's interval.
"""
from __future__ import annotations

import numpy as np

from simulator.analysis.steady_state import crossover_ci


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


def _pair_ratios(d: dict, b: dict) -> tuple[str, list[float]] | None:
    """Per-replication throughput ratios design/baseline at one sweep point, paired by seed: on the
    steady-state window's throughput when every replication of both has a steady window, else on
    the whole run's. None when a baseline throughput is zero."""
    dr = d.get("replicates") or [{"throughput_tokens_per_s_whole_run": d["throughput_tokens_per_s"]}]
    br = b.get("replicates") or [{"throughput_tokens_per_s_whole_run": b["throughput_tokens_per_s"]}]
    steady = all(r.get("window") == "steady" and r.get("throughput_tokens_per_s") for r in dr + br)
    key = "throughput_tokens_per_s" if steady else "throughput_tokens_per_s_whole_run"
    if not all(r[key] for r in br):
        return None
    return ("steady" if steady else "whole-run"), [x[key] / y[key] for x, y in zip(dr, br)]


def crossover(summary_rows: list[dict], baseline: str, param: str) -> list[dict]:
    """Per design: its throughput ratio to the baseline at each sweep point (mean over the paired
    replications, with its 95% interval) and where it stops paying for good (stops_paying on the
    mean ratios), with the crossover's interval and whether it is significant
    (steady_state.crossover_ci)."""
    by: dict[str, list[dict]] = {}
    for row in summary_rows:
        by.setdefault(row["name"], []).append(row)
    base = {r["sweep"][param]: r for r in by.get(baseline, [])}
    out = []
    for name, rows in by.items():
        if name == baseline:
            continue
        pts, bases, reps, whole = [], [], [], []
        for r in rows:
            x = r["sweep"][param]
            b = base.get(x)
            pair = _pair_ratios(r, b) if b is not None and b["throughput_tokens_per_s"] else None
            if pair is None:
                continue
            pts.append(x)
            bases.append(pair[0])
            reps.append(pair[1])
            whole.append(r["throughput_tokens_per_s"] / b["throughput_tokens_per_s"])
        out.append(_entry(name, baseline, param, pts, bases, reps, whole))
    return out


def _entry(name: str, baseline: str, param: str, pts: list, bases: list[str],
           reps: list[list[float]], whole: list[float]) -> dict:
    entry = {"design": name, "baseline": baseline, "param": param}
    if not pts:
        return {**entry, "speedup": [], "stops_paying_at": None,
                "stops_paying_at_interpolated": None, "stops_paying_ci": None, "significant": None}
    c = crossover_ci(pts, np.asarray(reps, float).T, stops_paying)
    speedup = [{param: x, "ratio": sp["mean"], "basis": basis, "ratio_whole_run": w,
                "ci": {k: sp[k] for k in ("lo", "hi", "half_width", "n")}}
               for x, basis, w, sp in zip(pts, bases, whole, c["speedup"])]
    return {**entry, "speedup": speedup, "stops_paying_at": c["stops_paying_at"],
            "stops_paying_at_interpolated": c["stops_paying_at_interpolated"],
            "stops_paying_ci": {k: c[k] for k in ("lo", "hi", "per_replication", "straddles")},
            "significant": c["significant"]}
