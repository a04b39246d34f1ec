"""Steady-state keys of a summary row (issue 16, parts 5 and 6): the measurement window, the figures
measured in it, the overload verdict, the batch actually run, KV capacity in requests, and the
confidence intervals over replications. The statistics are simulator/analysis/steady_state.py's;
this module only applies them to a run's Records and lays the results out as the JSON contract
(README, "Output contract").

Which figures a row shows: replication 0's (so a one-replication run reads as before); `ci` puts
a Student-t 95% interval on the steady-state figures of all replications; `replicates` lists each
replication's seed, window kind, overload verdict and throughputs, which the crossover pairs.
"""
from __future__ import annotations

import numpy as np

from simulator.analysis.steady_state import (Window, batch_stats, overload, replicate_ci,
                                             steady_window, windowed_metrics)
from simulator.engine.records import Records

# Figures given a confidence interval: (key in row["steady"], percentile or None)
CI_FIGURES = [("throughput_tokens_per_s", None), ("throughput_requests_per_s", None),
              ("ttft_s", "p50"), ("ttft_s", "p99"), ("tpot_s", "p50"), ("tpot_s", "p99")]


def steady_figures(rec: Records, concurrency: int | None, offered_rate: float | None) -> dict:
    """The steady-state keys of one run: window, steady, overloaded, overload, batch."""
    a, s, f, out = rec.arrival, rec.first_token, rec.finish, rec.output
    w = steady_window(a, s, f, concurrency, out)
    steady = None
    if w.width > 0:
        m = windowed_metrics(a, s, f, out, w, emit_times=rec.step_start + rec.step_time,
                             emit_tokens=rec.step_emitted)
        steady = {k: m[k] for k in ("throughput_tokens_per_s", "throughput_requests_per_s",
                                    "latency_requests", "ttft_s", "tpot_s", "e2e_s")}
    ov = overload(a, s, f, offered_rate, concurrency)
    return {"window": {"t0": w.t0, "t1": w.t1, "kind": w.kind, "reason": w.reason},
            "steady": steady,
            "overloaded": ov["overloaded"],
            "overload": {k: ov[k] for k in ("reason", "completed_rate", "offered_rate",
                                            "ttft_trend", "unfinished")},
            "batch": _batch(rec, w)}


def _batch(rec: Records, w: Window) -> dict:
    """Sequences and scheduled tokens per step, time-weighted, over the steps starting in the
    window (all steps when the window is the whole run)."""
    b = batch_stats(rec.step_seqs, rec.step_tokens, rec.step_time, rec.step_start, w)
    return {"seqs": b["seqs_per_step"], "tokens": b["tokens_per_step"], "steps": b["steps"],
            "basis": w.kind}


def kv_capacity(kv_capacity_tokens: int, prompt: np.ndarray, output: np.ndarray) -> dict:
    """KV capacity per replica in tokens and in concurrent requests of the workload's mean
    prompt + output length (each request holds its whole context at its end)."""
    mean_len = float(np.mean(prompt) + np.mean(output))
    return {"kv_capacity_tokens": int(kv_capacity_tokens),
            "kv_capacity_requests": kv_capacity_tokens / mean_len if mean_len > 0 else None}


def replicate_entry(seed: int, whole_run_throughput: float, figures: dict) -> dict:
    """One replication's key figures (figures: its steady_figures)."""
    st = figures["steady"] or {}
    return {"seed": seed, "window": figures["window"]["kind"], "overloaded": figures["overloaded"],
            "throughput_tokens_per_s": st.get("throughput_tokens_per_s"),
            "throughput_tokens_per_s_whole_run": whole_run_throughput,
            **{f"{k}_{p}": (st.get(k) or {}).get(p) for k, p in CI_FIGURES if p},
            "throughput_requests_per_s": st.get("throughput_requests_per_s")}


def ci(replicates: list[dict]) -> dict:
    """95% intervals over the replications' steady-state figures (None where a replication lacks
    the figure, e.g. no steady window)."""
    out: dict = {"basis": "steady-state window", "confidence": 0.95, "n": len(replicates)}
    for key, p in CI_FIGURES:
        vals = [r[f"{key}_{p}" if p else key] for r in replicates]
        c = None
        if all(v is not None and np.isfinite(v) for v in vals):
            c = {**replicate_ci(vals), "values": vals}
        if p:
            out.setdefault(key, {})[p] = c
        else:
            out[key] = c
    return out


def invalidate_if_overloaded(row: dict) -> None:
    """An overloaded row's goodput and $/Mtok are not options: null them in the row and keep the
    raw numbers under row["overload"]."""
    if not row["overloaded"]:
        return
    for k in ("goodput_requests_per_s", "cost_per_million_tokens"):
        row["overload"][k] = row[k]
        row[k] = None
