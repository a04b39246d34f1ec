"""Per-request records -> the numbers a user reads (MODEL.md section 7).

TTFT = first token - arrival; TPOT = (finish - first token) / (tokens - 1) for requests of more
than one token; ITL = gaps between successive emissions of a request (with speculation, one
emission can carry several tokens, as a streaming client sees it); E2E = finish - arrival.
Duration is the makespan, first arrival to last completion.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from simulator.engine.records import Records

PERCENTILES = {"p50": 50, "p90": 90, "p99": 99, "p999": 99.9}


def percentile_set(extra=()) -> dict:
    """The summary's percentiles: the contract's four (p50, p90, p99, p999) plus any requested
    (`specsim run --percentiles 95,99.99` adds p95 and p9999), keyed "p" + the digits."""
    out = dict(PERCENTILES)
    for p in sorted({float(x) for x in extra}):
        if not 0 < p < 100:
            raise ValueError(f"a percentile must be between 0 and 100, got {p:g}")
        out.setdefault("p" + f"{p:g}".replace(".", ""), int(p) if p.is_integer() else p)
    return dict(sorted(out.items(), key=lambda kv: kv[1]))


def distribution(x: np.ndarray, count: np.ndarray | None = None, pct: dict = PERCENTILES) -> dict:
    """Mean and percentiles of x, where x[i] occurred count[i] times (once each without count);
    percentiles interpolate linearly between order statistics, as np.percentile does."""
    if x.size == 0:
        return {"mean": None, **{k: None for k in pct}}
    if count is None:
        qs = np.percentile(x, list(pct.values()))
        return {"mean": float(x.mean()), **{k: float(v) for k, v in zip(pct, qs)}}
    order = np.argsort(x, kind="stable")
    xs, cum = x[order], np.cumsum(count[order])
    n = int(cum[-1])
    h = (n - 1) * np.array(list(pct.values())) / 100.0
    lo = np.floor(h)
    # The order statistic at 0-based rank j is the first value whose cumulative count exceeds j.
    a = xs[np.searchsorted(cum, lo, side="right")]
    b = xs[np.minimum(np.searchsorted(cum, lo + 1, side="right"), xs.shape[0] - 1)]
    qs = a + (b - a) * (h - lo)
    return {"mean": float(np.dot(xs, count[order]) / n), **{k: float(v) for k, v in zip(pct, qs)}}


def tpot(first: np.ndarray, finish: np.ndarray, output: np.ndarray,
         include: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The one TPOT definition: (mask, TPOT) over the requests of more than one token (and in
    `include`, when given), TPOT = (finish - first token) / (output tokens - 1)."""
    multi = output > 1 if include is None else include & (output > 1)
    return multi, (finish[multi] - first[multi]) / (output[multi] - 1)


def request_table(rec: Records) -> pd.DataFrame:
    """One row per request (the requests.csv contract, minus the deployment column)."""
    multi, per_request = tpot(rec.first_token, rec.finish, rec.output)
    tpot_s = np.full(rec.output.shape, np.nan)
    tpot_s[multi] = per_request
    return pd.DataFrame({
        "request_id": np.arange(rec.output.shape[0]),
        "replica": rec.replica,
        "arrival_s": rec.arrival,
        "first_token_s": rec.first_token,
        "finish_s": rec.finish,
        "prompt_tokens": rec.prompt,
        "output_tokens": rec.output,
        "ttft_s": rec.first_token - rec.arrival,
        "tpot_s": tpot_s,
        "e2e_s": rec.finish - rec.arrival,
        "rounds": rec.rounds,
        "accepted_tokens": rec.accepted,
        "drafted_tokens": rec.drafted,
        "preemptions": rec.preemptions,
    })


def summarise(rec: Records, gpus: int, price_per_gpu_hour: float,
              slo_ttft: float | None, slo_tpot: float | None, pct: dict = PERCENTILES) -> dict:
    """The per-deployment metrics of the summary contract (names as in the README)."""
    done = ~np.isnan(rec.finish)
    t0 = float(np.nanmin(rec.arrival))
    duration = float(np.nanmax(rec.finish)) - t0 if done.any() else 0.0
    tokens = int(rec.output[done].sum())
    ttft = (rec.first_token - rec.arrival)[done]
    e2e = (rec.finish - rec.arrival)[done]
    _, tpot_s = tpot(rec.first_token, rec.finish, rec.output, done)
    rounds = int(rec.rounds.sum())
    drafted = int(rec.drafted.sum())
    goodput = None
    if slo_ttft is not None or slo_tpot is not None:
        ok = done.copy()
        if slo_ttft is not None:
            ok &= (rec.first_token - rec.arrival) <= slo_ttft
        if slo_tpot is not None:
            multi, per_request = tpot(rec.first_token, rec.finish, rec.output)
            tp_all = np.zeros(rec.output.shape)  # a one-token request meets any TPOT SLO
            tp_all[multi] = per_request
            ok &= tp_all <= slo_tpot
        goodput = float(ok.sum() / duration) if duration > 0 else 0.0
    hours = duration / 3600.0
    return {
        "requests_completed": int(done.sum()),
        "output_tokens": tokens,
        "duration_s": duration,
        "throughput_tokens_per_s": tokens / duration if duration > 0 else 0.0,
        "throughput_requests_per_s": float(done.sum()) / duration if duration > 0 else 0.0,
        "ttft_s": distribution(ttft, pct=pct),
        "tpot_s": distribution(tpot_s, pct=pct),
        "itl_s": distribution(rec.itl, rec.itl_count, pct),
        "e2e_s": distribution(e2e, pct=pct),
        "mean_tokens_per_round": float(rec.round_tokens.sum() / rounds) if rounds else None,
        "acceptance_rate": float(rec.accepted.sum() / drafted) if drafted else None,
        "gpu_busy_fraction": float(rec.busy_s.sum() / (len(rec.busy_s) * duration)) if duration else 0.0,
        "goodput_requests_per_s": goodput,
        "cost_per_million_tokens": (gpus * price_per_gpu_hour * hours / (tokens / 1e6)
                                    if tokens else None),
        "throughput_tokens_per_s_per_gpu": tokens / duration / gpus if duration > 0 else 0.0,
        "mean_requests_in_system": rec.mean_in_system,
        "preemptions": int(rec.preemptions.sum()),
        "steps": rec.steps,
        "output_tokens_per_step": float(tokens / rec.steps) if rec.steps else 0.0,
        "kv_peak_fraction": rec.max_kv_blocks_used / rec.kv_blocks_total,
        "busy_breakdown_s": rec.breakdown_s,
        **rec.strategy_stats,
    }
