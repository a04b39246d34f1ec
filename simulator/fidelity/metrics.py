"""Fidelity's pure metrics: per-run request metrics (TTFT, TPOT by simulator/analysis/metrics.py's
one definition), real-vs-simulated comparison, error summary, crossovers (by
simulator/analysis/crossover.py), and how repeated real runs combine."""
from __future__ import annotations

import numpy as np
import pandas as pd

from simulator.analysis.crossover import crossover_point
from simulator.analysis.metrics import tpot
from simulator.errors import SpecsimError
from simulator.fidelity.config import METRICS, TARGETS

# metric -> (label, scale, format) in the table and the plot
LABELS = {"throughput": ("throughput tok/s", 1.0, "{:.1f}"), "ttft_p50": ("TTFT P50 ms", 1e3, "{:.0f}"),
           "ttft_p99": ("TTFT P99 ms", 1e3, "{:.0f}"), "tpot_mean": ("TPOT mean ms", 1e3, "{:.1f}"),
           "tpot_p50": ("TPOT P50 ms", 1e3, "{:.1f}"), "tpot_p99": ("TPOT P99 ms", 1e3, "{:.1f}"),
           "tokens_per_round": ("tokens/round", 1.0, "{:.2f}")}


def request_metrics(arrival, first, finish, output, round_tokens: float, rounds: float) -> dict:
    """The compared metrics from per-request arrays (times in s from the run's start).

    throughput = output tokens / (last finish - first arrival); TTFT = first - arrival;
    TPOT = (finish - first) / (tokens - 1) over requests with more than one token;
    tokens_per_round = decode-round tokens / rounds (prefill tokens excluded; 1 for AR)."""
    arrival, first, finish = (np.asarray(x, float) for x in (arrival, first, finish))
    output = np.asarray(output, np.int64)
    if len(output) == 0 or np.isnan(finish).any():
        raise SpecsimError("fidelity: a run left requests unfinished")
    dur = float(finish.max() - arrival.min())
    ttft = first - arrival
    _, tpot_s = tpot(first, finish, output)
    q = (lambda x, p: float(np.quantile(x, p)) if len(x) else float("nan"))
    return {"throughput": float(output.sum()) / dur if dur > 0 else float("nan"),
            "ttft_p50": q(ttft, 0.5), "ttft_p99": q(ttft, 0.99),
            "tpot_mean": float(tpot_s.mean()) if len(tpot_s) else float("nan"),
            "tpot_p50": q(tpot_s, 0.5), "tpot_p99": q(tpot_s, 0.99),
            "tokens_per_round": float(round_tokens / rounds) if rounds else float("nan"),
            "duration_s": dur, "output_tokens": int(output.sum()), "requests": int(len(output))}


def real_metrics(run) -> dict:
    r = run.requests
    return request_metrics(r.arrival, r.first_token, r.finish, r.output_tokens,
                           float(run.rounds.emitted.sum()), float(len(run.rounds)))


def sim_metrics(rec) -> dict:
    return request_metrics(rec.arrival, rec.first_token, rec.finish, rec.output,
                           float(rec.round_tokens.sum()), float(rec.rounds.sum()))


def compare(points: list[dict]) -> pd.DataFrame:
    """One row per (mode, concurrency): <metric>_real, <metric>_sim, <metric>_err (sim/real - 1).

    `points`: dicts with mode, concurrency, real (metrics), sim (metrics), optional alpha."""
    rows = []
    for p in points:
        row = {"mode": p["mode"], "concurrency": int(p["concurrency"]), "alpha": p.get("alpha")}
        if "canary" in p:  # machine speed vs the profile during the point's real runs (reported only)
            row["canary"], row["canary_drift"] = p["canary"], p.get("canary_drift")
        for m in METRICS:
            a, b = p["real"][m], p["sim"][m]
            row[f"{m}_real"], row[f"{m}_sim"] = a, b
            row[f"{m}_err"] = b / a - 1.0 if a and a == a and b == b else float("nan")
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.sort_values(["mode", "concurrency"], kind="stable").reset_index(drop=True)


def error_summary(table: pd.DataFrame, targets: dict = TARGETS) -> dict:
    """Per metric over all rows: median and max absolute relative error, and the target check."""
    out = {}
    for m in METRICS:
        e = table[f"{m}_err"].abs().dropna()
        if m == "tokens_per_round":
            e = table.loc[table["mode"] == "sd", f"{m}_err"].abs().dropna()
        s = {"median_abs": float(e.median()) if len(e) else float("nan"),
             "max_abs": float(e.max()) if len(e) else float("nan"), "points": int(len(e))}
        if m in targets:
            s["target"] = targets[m]
            s["met"] = bool(s["median_abs"] <= targets[m])
        out[m] = s
    return out


def crossover_distance(grid, real: int | None, predicted: int | None) -> int:
    """Grid steps between two crossovers; 'never within the grid' sits one step past its end."""
    grid = [int(c) for c in grid]
    pos = lambda c: len(grid) if c is None else grid.index(int(c))  # noqa: E731
    return abs(pos(real) - pos(predicted))


def crossovers(table: pd.DataFrame) -> dict:
    ar = table[table["mode"] == "ar"].set_index("concurrency")
    sd = table[table["mode"] == "sd"].set_index("concurrency")
    grid = sorted(set(ar.index) & set(sd.index))
    if not grid:
        return {"grid": [], "real": None, "predicted": None, "distance": 0, "ok": True}
    res = {"grid": grid}
    for side in ("real", "sim"):
        res["real" if side == "real" else "predicted"] = crossover_point(
            grid, [ar.loc[c, f"throughput_{side}"] for c in grid], [sd.loc[c, f"throughput_{side}"] for c in grid])
        res[f"speedup_{side}"] = {int(c): float(sd.loc[c, f"throughput_{side}"] / ar.loc[c, f"throughput_{side}"])
                                  for c in grid}
    res["distance"] = crossover_distance(grid, res["real"], res["predicted"])
    res["ok"] = res["distance"] <= 1
    return res


def interleaved_order(repeats: int) -> list[str]:
    """Run order of one concurrency point: AR, SD, SD, AR, AR, SD, ... (ABBA blocks), so that
    each mode's runs sit symmetrically in time and a linear drift of the machine cancels."""
    out = []
    for i in range(repeats):
        out += ["ar", "sd"] if i % 2 == 0 else ["sd", "ar"]
    return out


def median_metrics(runs: list[dict]) -> dict:
    """Per-metric median over repeated real runs (the mean of two)."""
    keys = runs[0].keys()
    return {k: float(np.median([r[k] for r in runs])) for k in keys}
