"""Steady-state statistics of a simulated run (MODEL.md section 7; issue 16, part 5). Pure functions
over the per-request arrays of a run (arrival, first_token, finish, output; NaN = did not happen).

Method: replication/deletion (Law & Kelton, Simulation Modeling and Analysis, 5th ed., 2015,
sec. 9.5.1-9.5.2): delete the warm-up of each run, measure in the steady window, repeat with
independent seeds, and put a Student-t interval on the per-seed estimates (sec. 9.4.1).

Window rule (steady_window). The end is structural, where the drain starts: open loop, the last
arrival (after it the offered load is zero); closed loop with concurrency C over n requests, the
(n-C+1)-th completion (completions 1..n-C each issue a replacement, that one cannot, and from then
the population is below C). The start is the MSER-5 truncation point (White, Simulation 69(6), 1997;
White, Cobb & Spratt, WSC 2000; the best automated warm-up rule in Hoad, Robinson & Davies, JORS
61(9), 2010) of the output token rate (tokens_in_window's approximation; without output lengths,
the number of requests decoding, first token <= t < finish), averaged over MSER_BINS equal time
bins from the fill time (open: first arrival; closed: when C requests are in) to the end, batched
in fives, truncating at most half. A closed loop also starts no earlier than the C-th completion
(one turnover of the population: the synchronised first cohort is gone). If fewer than
MIN_REQUESTS requests arrive in the window, or a closed loop has n < 2C, the window is the whole run
(first arrival to last finish) and says so: kind "whole-run".

Which requests (window_mask): by arrival, in [t0, t1 - h], h = the P99 end-to-end latency of those
arriving in [t0, t1]. By arrival, not completion: selecting by completion keeps the short requests of
any interval and hides a growing queue. The h margin keeps requests whose life would run into the
drain (lighter batches, hence lower latency) out of the latency sample; if that leaves fewer than
MIN_REQUESTS, all arrivals in [t0, t1] are used.

Tokens in the window (tokens_in_window): the engine records a request's first token and finish, not
each emission, so the first token counts at first_token and the other output-1 are spread at a
uniform rate over (first_token, finish]. Under speculation tokens come in bursts of up to gamma+1 per
round, so the error is at most one round's tokens per request crossing a window edge. Given the
emission times and counts, those are used instead. Unfinished requests count their first token only.

Overload (overload): see its docstring. Batch actually run (batch_stats): time-weighted percentiles.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from simulator.analysis.metrics import distribution, tpot
from simulator.errors import SpecsimError

MIN_REQUESTS = 20  # fewest requests a window must hold (a P99 of fewer is an extreme, not a tail)
MSER_BINS = 500  # time bins for MSER-5: 100 batches of 5, warm-up resolution of 1% of the span
MSER_BATCH = 5  # White, Cobb & Spratt (2000): batch means of 5 before MSER
RATE_TOLERANCE = 0.05  # completions may lag arrivals by 5% in each half of the window (overload())


@dataclass(frozen=True)
class Window:
    t0: float
    t1: float
    kind: str  # "steady" or "whole-run"
    reason: str

    @property
    def width(self) -> float:
        return self.t1 - self.t0


def _arrays(arrival, first_token, finish) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, s, f = (np.asarray(x, dtype=float) for x in (arrival, first_token, finish))
    if not (a.shape == s.shape == f.shape) or a.ndim != 1 or a.size == 0:
        raise SpecsimError(f"steady_state: arrival, first_token and finish must be non-empty 1-D arrays "
                           f"of one length, got shapes {a.shape}, {s.shape}, {f.shape}")
    return a, s, f


def _sum_min(x: np.ndarray, w: np.ndarray, t: np.ndarray) -> np.ndarray:
    """sum_i w_i min(t, x_i) at each t (x may hold inf)."""
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], w[order]
    with np.errstate(invalid="ignore"):
        below = np.concatenate([[0.0], np.cumsum(np.where(np.isinf(xs), 0.0, ws * xs))])
    above = np.concatenate([np.cumsum(ws[::-1])[::-1], [0.0]])
    k = np.searchsorted(xs, t, side="right")
    return below[k] + t * above[k]


def emitted_integral(first_token, finish, edges: np.ndarray, output=None) -> np.ndarray:
    """At each edge e: with output, the tokens emitted by time e under the uniform-rate approximation
    (module docstring); without it, the integral over [0, e] of the number of requests decoding
    (first_token <= t < finish; a request with a first token and no finish decodes to the end)."""
    s = np.asarray(first_token, float)
    f = np.asarray(finish, float)
    live = ~np.isnan(s)
    s, f = s[live], np.where(np.isnan(f[live]), np.inf, f[live])
    if output is None:
        w = np.ones_like(s)
        steps = np.zeros_like(edges)
    else:
        out = np.asarray(output, float)[live]
        span = f - s
        w = np.where(np.isfinite(span) & (span > 0), (out - 1.0) / np.where(span > 0, span, 1.0), 0.0)
        # first tokens, plus all of a request whose tokens came at one instant
        jump = 1.0 + np.where(np.isfinite(span) & (span <= 0), out - 1.0, 0.0)
        order = np.argsort(s, kind="stable")
        cum = np.concatenate([[0.0], np.cumsum(jump[order])])
        steps = cum[np.searchsorted(s[order], edges, side="right")]
    return steps + _sum_min(f, w, edges) - _sum_min(s, w, edges)


def mser5(y: np.ndarray) -> int:
    """MSER-5 truncation: how many leading observations of y to delete (a multiple of 5). Batch means
    z of 5; d* = argmin over d <= m/2 of sum_{i>d} (z_i - mean(z_{d+1..m}))^2 / (m-d)^2."""
    m = y.size // MSER_BATCH
    if m < 2:
        return 0
    z = y[:m * MSER_BATCH].reshape(m, MSER_BATCH).mean(axis=1)
    z = z - z.mean()  # centred: the sums of squares below lose nothing to a large mean
    tail_n = np.arange(m, 0, -1, dtype=float)  # m - d for d = 0..m-1
    s1 = np.cumsum(z[::-1])[::-1]
    s2 = np.cumsum((z * z)[::-1])[::-1]
    sse = np.maximum(s2 - s1 * s1 / tail_n, 0.0)
    d_max = m // 2
    return int(np.argmin(sse[:d_max + 1] / tail_n[:d_max + 1] ** 2)) * MSER_BATCH


def steady_window(arrival, first_token, finish, concurrency: int | None, output=None) -> Window:
    """The measurement window [t0, t1] of one run (rule in the module docstring); MSER-5 reads the
    token emission rate when output lengths are given, else the number of requests decoding."""
    a, s, f = _arrays(arrival, first_token, finish)
    n, done = a.size, np.sort(f[~np.isnan(f)])
    whole = Window(float(np.nanmin(a)), float(done[-1]) if done.size else float(np.nanmax(a)),
                   "whole-run", "")
    arr = np.sort(a[~np.isnan(a)])
    if concurrency is not None:
        c = int(concurrency)
        if c < 1:
            raise SpecsimError(f"steady_state: concurrency must be a positive integer, got {concurrency}")
        if n < 2 * c or done.size < n - c + 1:
            return Window(whole.t0, whole.t1, "whole-run",
                          f"closed loop of {n} requests at concurrency {c}: under two turnovers")
        start, end, floor = arr[c - 1], done[n - c], done[c - 1]
    else:
        start, end, floor = arr[0], arr[-1], arr[0]
    if not end > start:
        return Window(whole.t0, whole.t1, "whole-run", "no time between fill and drain")
    edges = np.linspace(start, end, MSER_BINS + 1)
    busy = np.diff(emitted_integral(s, f, edges, output)) / np.diff(edges)
    t0 = max(float(edges[mser5(busy)]), float(floor))
    t1 = float(end)
    inside = int(np.count_nonzero((a >= t0) & (a <= t1)))
    if t1 <= t0 or inside < MIN_REQUESTS:
        return Window(whole.t0, whole.t1, "whole-run",
                      f"{inside} requests arrive in the steady window (need {MIN_REQUESTS})")
    return Window(t0, t1, "steady", "MSER-5 warm-up deletion; drain cut")


def window_mask(arrival, finish, window: Window) -> np.ndarray:
    """Requests whose latencies describe the window: arrival in [t0, t1 - h] (module docstring)."""
    a, f = np.asarray(arrival, float), np.asarray(finish, float)
    inside = (a >= window.t0) & (a <= window.t1)
    if window.kind == "whole-run":
        return inside
    e2e = (f - a)[inside & ~np.isnan(f)]
    if e2e.size == 0:
        return inside
    h = float(np.percentile(e2e, 99))
    early = inside & (a <= window.t1 - h)
    return early if np.count_nonzero(early) >= MIN_REQUESTS else inside


def tokens_in_window(first_token, finish, output, t0: float, t1: float) -> np.ndarray:
    """Output tokens each request emitted in [t0, t1], under the uniform-rate approximation."""
    s, f = np.asarray(first_token, float), np.asarray(finish, float)
    out = np.asarray(output, float)
    first = ((s >= t0) & (s <= t1)).astype(float)
    span = f - s
    with np.errstate(invalid="ignore", divide="ignore"):
        overlap = np.clip(np.minimum(f, t1) - np.maximum(s, t0), 0.0, None)
        frac = np.where(span > 0, overlap / span, ((f >= t0) & (f <= t1)).astype(float))
    rest = np.where(np.isnan(f) | np.isnan(s), 0.0, (out - 1.0) * frac)
    return first + rest


def windowed_metrics(arrival, first_token, finish, output, window: Window,
                     emit_times=None, emit_tokens=None) -> dict:
    """Throughput over the window (tokens emitted in [t0, t1] / (t1 - t0); exact from emit_times and
    emit_tokens, the flat per-emission arrays, when given) and latencies of window_mask's requests."""
    a, s, f = _arrays(arrival, first_token, finish)
    out = np.asarray(output, float)
    width = window.width
    if width <= 0:
        raise SpecsimError(f"steady_state: the window [{window.t0}, {window.t1}] is empty")
    if (emit_times is None) != (emit_tokens is None):
        raise SpecsimError("steady_state: emit_times and emit_tokens go together (one per emission)")
    if emit_times is not None:
        et, ek = np.asarray(emit_times, float), np.asarray(emit_tokens, float)
        tokens = float(ek[(et >= window.t0) & (et <= window.t1)].sum())
    else:
        tokens = float(tokens_in_window(s, f, out, window.t0, window.t1).sum())
    completed = int(np.count_nonzero((f >= window.t0) & (f <= window.t1)))
    sel = window_mask(a, f, window) & ~np.isnan(f)
    _, tpot_s = tpot(s, f, out, sel)
    return {
        "window": window.kind, "window_reason": window.reason,
        "window_start_s": window.t0, "window_end_s": window.t1,
        "throughput_tokens_per_s": tokens / width,
        "throughput_requests_per_s": completed / width,
        "latency_requests": int(np.count_nonzero(sel)),
        "ttft_s": distribution((s - a)[sel]),
        "tpot_s": distribution(tpot_s),
        "e2e_s": distribution((f - a)[sel]),
    }


def replicate_ci(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean over independent replications and its Student-t interval, mean +- t_{(1+c)/2, n-1} s/sqrt(n)
    (Law & Kelton sec. 9.4.1); with one replication the bounds are None."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
        raise SpecsimError(f"steady_state: replicate_ci needs finite values, got {list(values)!r}")
    if not 0.0 < confidence < 1.0:
        raise SpecsimError(f"steady_state: confidence must be in (0, 1), got {confidence}")
    mean, n = float(x.mean()), int(x.size)
    if n == 1:
        return {"mean": mean, "lo": None, "hi": None, "half_width": None, "n": 1}
    from scipy import stats  # lazy: scipy.stats costs 0.2 s to import, most commands never need it
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / np.sqrt(n))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "half_width": half, "n": n}


def ratio_ci(a_reps: Sequence[float], b_reps: Sequence[float], paired: bool = True,
             confidence: float = 0.95) -> dict:
    """CI on the throughput ratio a/b across seeds. Paired (seed i drove both designs: common random
    numbers, Law & Kelton sec. 11.2): a t-interval on the per-seed ratios a_i/b_i, whose shared
    workload noise cancels (the paired-t of sec. 10.2, on ratios). Unpaired: mean(a)/mean(b) with the
    delta-method variance R^2 (s_a^2/(n_a a^2) + s_b^2/(n_b b^2)) and min(n_a, n_b) - 1 degrees of
    freedom (conservative)."""
    a, b = np.asarray(a_reps, float), np.asarray(b_reps, float)
    if a.size == 0 or b.size == 0 or np.any(b <= 0) or np.any(a < 0):
        raise SpecsimError("steady_state: ratio_ci needs non-empty throughputs, the baseline's positive")
    if paired:
        if a.shape != b.shape:
            raise SpecsimError(f"steady_state: paired ratio_ci needs one value per seed for both, "
                               f"got {a.size} and {b.size}")
        return {**replicate_ci(a / b, confidence), "paired": True}
    r, n = float(a.mean() / b.mean()), min(a.size, b.size)
    if n < 2:
        return {"mean": r, "lo": None, "hi": None, "half_width": None, "n": n, "paired": False}
    rel = a.var(ddof=1) / (a.size * a.mean() ** 2) + b.var(ddof=1) / (b.size * b.mean() ** 2)
    from scipy import stats
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * r * np.sqrt(rel))
    return {"mean": r, "lo": r - half, "hi": r + half, "half_width": half, "n": n, "paired": False}


def crossover_ci(points: Sequence[float], ratio_reps, stops_paying: Callable,
                 confidence: float = 0.95) -> dict:
    """Crossover over a sweep with replications. ratio_reps[r][j]: replication r's (per-seed, paired)
    throughput ratio to the baseline at points[j]; stops_paying(points, ratios) -> (point | None,
    interpolated | None) is the project's rule (simulator.analysis.crossover.stops_paying).

    Estimate: the rule on the mean ratios. Interval: [rule on the CI's lower bounds, rule on its upper
    bounds] (a lower ratio can only move the crossover earlier; hi None = beyond the sweep).
    Significant: the interval is one sweep point, i.e. the ratio's CI lies above 1 just before the
    crossover and at or below 1 from it on; None with one replication. `straddles`: the points whose
    CI contains 1 strictly inside."""
    r = np.asarray(ratio_reps, dtype=float)
    pts = list(points)
    if r.ndim != 2 or r.shape[1] != len(pts) or r.shape[0] == 0:
        raise SpecsimError(f"steady_state: ratio_reps must be replications x {len(pts)} sweep points, "
                           f"got shape {r.shape}")
    cis = [replicate_ci(r[:, j], confidence) for j in range(len(pts))]
    means = [c["mean"] for c in cis]
    at, interp = stops_paying(pts, means)
    per_rep = [stops_paying(pts, list(row))[0] for row in r]
    speedup = [{"point": p, **c} for p, c in zip(pts, cis)]
    if r.shape[0] == 1:
        return {"stops_paying_at": at, "stops_paying_at_interpolated": interp, "lo": None, "hi": None,
                "per_replication": per_rep, "significant": None, "straddles": [], "speedup": speedup}
    lo, _ = stops_paying(pts, [c["lo"] for c in cis])
    hi, _ = stops_paying(pts, [c["hi"] for c in cis])
    straddles = [p for p, c in zip(pts, cis) if c["lo"] < 1.0 < c["hi"]]
    return {"stops_paying_at": at, "stops_paying_at_interpolated": interp, "lo": lo, "hi": hi,
            "per_replication": per_rep, "significant": lo == hi, "straddles": straddles,
            "speedup": speedup}


def _ttft_trend(a: np.ndarray, s: np.ndarray, sel: np.ndarray) -> tuple[float | None, bool]:
    """Median TTFT of the last arrival quarter over the first's, and whether TTFT grows: the four
    quarter medians rise strictly and the last quarter's P25 is above the first quarter's P75."""
    idx = np.flatnonzero(sel & ~np.isnan(s))
    if idx.size < 2 * MIN_REQUESTS:
        return None, False
    ttft = (s - a)[idx[np.argsort(a[idx], kind="stable")]]
    quarters = np.array_split(ttft, 4)
    med = [float(np.median(q)) for q in quarters]
    ratio = med[3] / med[0] if med[0] > 0 else (np.inf if med[3] > 0 else 1.0)
    rising = all(x < y for x, y in zip(med, med[1:]))
    apart = np.percentile(quarters[3], 25) > np.percentile(quarters[0], 75)
    return float(ratio), bool(rising and apart)


def _lag(a: np.ndarray, f: np.ndarray, lo: float, hi: float) -> float:
    """1 - completions / arrivals in [lo, hi): the share of the arrivals the system fell behind by."""
    arrived = np.count_nonzero((a >= lo) & (a < hi))
    completed = np.count_nonzero((f >= lo) & (f < hi))
    return 1.0 - completed / arrived if arrived else 0.0


def overload(arrival, first_token, finish, offered_rate: float | None, concurrency: int | None,
             duration: float | None = None) -> dict:
    """Whether the queue keeps up. Overloaded if any of:
    - unfinished: requests without a finish (or finishing after `duration`, the simulated horizon
      from the first arrival, when the run was cut);
    - open loop, rate: in each half of the span from the window start to the last arrival,
      completions lag arrivals by more than RATE_TOLERANCE (5%) of them. The arrivals realised in
      the span are the offered load, so Poisson noise in them is not read as a deficit. A lag is
      the change in the number in the system; an overloaded queue's grows steadily (17% of its
      arrivals at 120% load, in both halves), a stable one's wanders, so asking both halves to lag
      rejects growth confined to one half. Near capacity a short run cannot tell the two apart:
      quickstart.yaml's SD deployment at 18 req/s (91% of the 19.8 req/s it completes when
      overloaded) is flagged at 1,000 requests (one run's population rose from 33 to 173) and not at
      6,000 (two seeds); the reason gives the lags, so the user can run longer;
    - TTFT grows: over the requests arriving in that span (closed loop: window_mask's), split in
      four quarters by arrival, the median TTFT rises quarter to quarter and the last quarter's P25
      is above the first quarter's P75. An overloaded queue's wait grows linearly, shifting the whole
      distribution; a stable queue's wait wanders slowly (an M/M/1 at 80% load relaxes over ~90
      service times) but its lower tail stays at the floor (20% of its arrivals find it idle). A
      ratio rule (last quarter's median > 2x the first's) flagged 6% of stable M/M/1 runs at 80% load
      of 2,000 requests, so it is reported (ttft_trend) but does not decide. A closed loop cannot
      fall behind a rate, so only this test applies to it, and only in a steady window: without
      one (under two turnovers) its requests queue behind the first cohort in issue order, a TTFT
      that rises with arrival by construction, not a growing queue.
    """
    a, s, f = _arrays(arrival, first_token, finish)
    horizon = np.inf if duration is None else float(np.nanmin(a)) + float(duration)
    unfinished = int(np.count_nonzero(np.isnan(f) | (f > horizon)))
    f = np.where(f > horizon, np.nan, f)
    w = steady_window(a, s, f, concurrency)
    reasons = [f"{unfinished} requests unfinished"] if unfinished else []
    if concurrency is None:
        t0 = w.t0 if w.kind == "steady" else float(np.nanmin(a))
        t1 = float(np.nanmax(a))
        sel = (a >= t0) & (a <= t1)
        width = t1 - t0
        arrived = int(np.count_nonzero(sel))
        completed = int(np.count_nonzero((f >= t0) & (f <= t1)))
        arrival_rate = arrived / width if width > 0 else None
        completed_rate = completed / width if width > 0 else None
        offered = float(offered_rate) if offered_rate is not None else arrival_rate
        mid = (t0 + t1) / 2
        lags = [_lag(a, f, lo, hi) for lo, hi in ((t0, mid), (mid, t1))]
        if all(lag > RATE_TOLERANCE for lag in lags):
            reasons.append(f"completed rate {completed_rate:.4g}/s below the arrival rate "
                           f"{arrival_rate:.4g}/s: completions lag arrivals by "
                           f"{lags[0]:.0%} and {lags[1]:.0%} in the window's two halves")
    else:
        sel = window_mask(a, f, w) & (w.kind == "steady")
        completed = int(np.count_nonzero((f >= w.t0) & (f <= w.t1)))
        completed_rate = completed / w.width if w.width > 0 else None
        offered = None
    trend, growing = _ttft_trend(a, s, sel)
    if growing:
        reasons.append(f"TTFT grows with arrival time (last quarter's median {trend:.3g}x the first's)")
    return {"overloaded": bool(reasons), "completed_rate": completed_rate, "offered_rate": offered,
            "ttft_trend": trend, "unfinished": unfinished, "reason": "; ".join(reasons) or "keeps up"}


def _weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    """Smallest value whose weighted cumulative share reaches q (inverse CDF, no interpolation:
    a batch size is an integer that ran, not a blend of two)."""
    order = np.argsort(x, kind="stable")
    cum = np.cumsum(w[order])
    k = int(np.searchsorted(cum, q * cum[-1] * (1 - 1e-12), side="left"))
    return float(x[order][min(k, x.size - 1)])


def batch_stats(step_seqs, step_tokens, step_durations, step_start=None,
                window: Window | None = None) -> dict:
    """P50/P99 and mean of sequences and tokens per step, weighted by step duration: the batch the GPU
    was running at a uniformly random busy instant (an unweighted count would over-weight the many
    short steps of small batches). With step_start and a window, only steps starting in it."""
    n_, t_, d = (np.asarray(x, dtype=float) for x in (step_seqs, step_tokens, step_durations))
    if not (n_.shape == t_.shape == d.shape) or n_.ndim != 1:
        raise SpecsimError(f"steady_state: step arrays must be 1-D of one length, got "
                           f"{n_.shape}, {t_.shape}, {d.shape}")
    if np.any(d < 0) or np.any(np.isnan(d)):
        raise SpecsimError("steady_state: step_durations must be non-negative numbers")
    if window is not None and step_start is not None:
        st = np.asarray(step_start, dtype=float)
        keep = (st >= window.t0) & (st <= window.t1)
        n_, t_, d = n_[keep], t_[keep], d[keep]
    empty = {"mean": None, "p50": None, "p99": None}
    if d.sum() <= 0:
        return {"seqs_per_step": dict(empty), "tokens_per_step": dict(empty), "steps": int(d.size)}

    def one(x: np.ndarray) -> dict:
        return {"mean": float(np.dot(x, d) / d.sum()), "p50": _weighted_quantile(x, d, 0.50),
                "p99": _weighted_quantile(x, d, 0.99)}

    return {"seqs_per_step": one(n_), "tokens_per_step": one(t_), "steps": int(d.size)}
