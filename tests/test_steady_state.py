"""Steady-state statistics (simulator/analysis/steady_state.py): synthetic runs with known answers."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from simulator.analysis import steady_state as ss
from simulator.errors import SpecsimError
from simulator.analysis.crossover import stops_paying


def closed_loop(c=8, per_slot=50, out=100, ttft=0.5, tpot=0.02, ramp_ttft=20.0, slow=0, slow_tpot=0.06):
    """A deterministic closed loop of c slots, each issuing its next request at its last one's finish.
    The first request of each slot waits ramp_ttft (+ a stagger) for its first token (the batch
    filling); the first `slow` requests of a slot decode at slow_tpot. Steady rate c*out/e2e."""
    lengths = np.broadcast_to(out, (c, per_slot))  # out: one length, or one per (slot, request)
    mean = float(np.mean(lengths))
    e2e = ttft + (mean - 1) * tpot
    arr, first, fin = [], [], []
    for j in range(c):
        t = 0.0
        for k in range(per_slot):
            wait = (ramp_ttft + j * e2e / c) if k == 0 else ttft
            arr.append(t)
            first.append(t + wait)
            t += wait + (lengths[j, k] - 1) * (slow_tpot if k < slow else tpot)
            fin.append(t)
    o = np.argsort(arr, kind="stable")
    return (np.array(arr)[o], np.array(first)[o], np.array(fin)[o], lengths.T.ravel()[o],
            c * mean / e2e)


def fifo_queue(load, n, seed, prefill=0.05):
    """Single-server FIFO queue, Poisson arrivals at `load`, exponential service of mean 1 (M/M/1).
    The first token comes `prefill` of the way into service; the request finishes at its end."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1.0 / load, n))
    arrival -= arrival[0]
    service = rng.exponential(1.0, n)
    start, finish, free = np.empty(n), np.empty(n), 0.0
    for i in range(n):
        start[i] = max(arrival[i], free)
        free = finish[i] = start[i] + service[i]
    return arrival, start + prefill * service, finish


def test_window_removes_ramp_up_bias_from_closed_loop_throughput():
    # Bug caught: whole-run throughput (ramp-up and drain included), or a window that keeps the ramp.
    a, s, f, out, rate = closed_loop()
    whole = out.sum() / (f.max() - a.min())
    w = ss.steady_window(a, s, f, 8, out)
    m = ss.windowed_metrics(a, s, f, out, w)
    assert w.kind == "steady"
    assert whole < 0.9 * rate
    assert m["throughput_tokens_per_s"] == pytest.approx(rate, rel=0.01)
    # the first cohort's 20 s TTFT is ramp-up, not a steady-state tail
    assert m["ttft_s"]["p99"] == pytest.approx(0.5)
    assert m["throughput_requests_per_s"] == pytest.approx(rate / 100, rel=0.05)


def test_mser_finds_a_warm_up_longer_than_one_turnover():
    # Bug caught: a window that only skips the first cohort (C-th completion) when the transient
    # lasts ten turnovers (slow decoding at first): MSER-5 must see it in the token rate.
    a, s, f, out, rate = closed_loop(per_slot=60, ramp_ttft=0.5, slow=10)
    slow_end = 10 * (0.5 + 99 * 0.06) + 7 / 8 * (0.5 + 99 * 0.02)  # the last-staggered slot's
    for given in (out, None):  # from the token rate, and from the number decoding
        w = ss.steady_window(a, s, f, 8, given)
        assert w.t0 >= slow_end - w.t1 / 100  # MSER-5 resolves 1% of the span
        got = ss.windowed_metrics(a, s, f, out, w)["throughput_tokens_per_s"]
        assert got == pytest.approx(rate, rel=0.01)
    turnover = np.sort(f)[7]
    biased = ss.windowed_metrics(a, s, f, out, ss.Window(turnover, w.t1, "steady", ""))
    assert biased["throughput_tokens_per_s"] < 0.9 * rate


def test_closed_loop_window_starts_after_one_turnover():
    # Bug caught: the first cohort (issued together, its TTFT carrying the fill) in the latency
    # sample when MSER-5 sees no transient in a noisy token rate (it truncates nothing here).
    lengths = np.random.default_rng(1).integers(20, 300, (8, 400))
    a, s, f, out, _ = closed_loop(per_slot=400, out=lengths, ramp_ttft=0.5)
    w = ss.steady_window(a, s, f, 8, out)
    assert w.t0 == np.sort(f)[7]
    assert ss.windowed_metrics(a, s, f, out, w)["ttft_s"]["p999"] == pytest.approx(0.5)


def test_closed_loop_window_ends_at_first_unreplaced_completion():
    # Bug caught: measuring into the drain (population below C) or stopping at the last arrival.
    a, s, f, out, _ = closed_loop(c=4, per_slot=30, ramp_ttft=0.5)
    w = ss.steady_window(a, s, f, 4, out)
    assert w.t1 == np.sort(f)[120 - 4]
    in_system = ((a[:, None] <= [w.t1 - 1e-9]) & (f[:, None] > [w.t1 - 1e-9])).sum()
    assert in_system == 4


def test_uniform_emission_approximation_by_hand():
    # Bug caught: counting all of a request's tokens at its finish, or forgetting the first token.
    # First token at 1, ten more spread over (1, 11]: [0, 6] holds 1 + 10 * 5/10 = 6 tokens.
    got = ss.tokens_in_window([1.0, 2.0, 3.0], [11.0, 2.0, np.nan], [11, 4, 9], 0.0, 6.0)
    assert got.tolist() == pytest.approx([6.0, 4.0, 1.0])


def test_emitted_integral_matches_brute_force():
    # Bug caught: the sorted-cumulative-sum shortcut (MSER's input) off by one or broken by
    # unfinished (NaN) or instantaneous requests.
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 10, 50)
    f = s + rng.uniform(0, 5, 50)
    f[3], f[7] = s[3], np.nan
    out = rng.integers(1, 50, 50)
    edges = np.linspace(-1, 16, 40)
    tokens = [ss.tokens_in_window(s, f, out, -np.inf, e).sum() for e in edges]
    assert ss.emitted_integral(s, f, edges, out) == pytest.approx(tokens, abs=1e-9)
    stop = np.where(np.isnan(f), np.inf, f)
    busy = [np.clip(np.minimum(stop, e) - s, 0, None).sum() for e in edges]
    assert ss.emitted_integral(s, f, edges) == pytest.approx(busy, abs=1e-9)


def test_emission_arrays_replace_the_approximation():
    # Bug caught: ignoring the recorded emission times when they are given.
    a, s, f, out, _ = closed_loop(c=4, per_slot=30, ramp_ttft=0.5)
    w = ss.Window(10.0, 20.0, "steady", "")
    times, tokens = np.array([9.0, 10.0, 15.0, 20.0, 21.0]), np.array([5, 1, 2, 3, 7])
    m = ss.windowed_metrics(a, s, f, out, w, emit_times=times, emit_tokens=tokens)
    assert m["throughput_tokens_per_s"] == pytest.approx(6 / 10)


def test_window_mask_selects_by_arrival_and_keeps_drain_out():
    # Bug caught: selecting by completion (keeps ramp-up requests that finish inside the window),
    # or latencies of requests that ran into the drain.
    a, s, f, out, _ = closed_loop(c=4, per_slot=100, ramp_ttft=5.0)
    w = ss.steady_window(a, s, f, 4, out)
    mask = ss.window_mask(a, f, w)
    assert not mask[(a < w.t0) & (f > w.t0)].any()
    h = np.percentile((f - a)[(a >= w.t0) & (a <= w.t1)], 99)
    assert mask.sum() >= ss.MIN_REQUESTS
    assert (a[mask] <= w.t1 - h).all() and (f[mask] <= w.t1 + 1e-9).all()


def test_short_runs_fall_back_to_whole_run_and_say_so():
    # Bug caught: a zero-width or near-empty window silently used (division by ~0, P99 of 3 requests).
    a, s, f, out, _ = closed_loop(c=8, per_slot=1)  # n = C: never two turnovers
    w = ss.steady_window(a, s, f, 8, out)
    assert (w.kind, w.t0, w.t1) == ("whole-run", a.min(), f.max())
    a, s, f = fifo_queue(0.5, 15, seed=1)
    assert ss.steady_window(a, s, f, None).kind == "whole-run"


def test_open_loop_window_and_stable_throughput():
    # Bug caught: an open-loop window running into the drain (after the last arrival).
    a, s, f = fifo_queue(0.8, 3000, seed=2)
    w = ss.steady_window(a, s, f, None)
    assert w.kind == "steady" and w.t1 == a.max()
    m = ss.windowed_metrics(a, s, f, np.full(a.size, 10), w)
    arrived = ((a >= w.t0) & (a <= w.t1)).sum() / w.width
    assert m["throughput_requests_per_s"] == pytest.approx(arrived, rel=0.03)


def test_replicate_ci_is_student_t():
    # Bug caught: a normal quantile (1.96) instead of t, or the population standard deviation.
    x = [10.0, 12.0]
    ci = ss.replicate_ci(x)
    lo, hi = stats.t.interval(0.95, 1, loc=11.0, scale=stats.sem(x))
    assert (ci["lo"], ci["hi"], ci["n"]) == (pytest.approx(lo), pytest.approx(hi), 2)
    assert ci["half_width"] == pytest.approx(12.706 * 1.0, rel=1e-3)  # t_{0.975,1} s / sqrt(2), s = sqrt(2)
    y = [3.0, 5.0, 4.0, 7.0, 6.0]
    lo90 = stats.t.interval(0.9, 4, loc=np.mean(y), scale=stats.sem(y))[0]
    assert ss.replicate_ci(y, 0.9)["lo"] == pytest.approx(lo90)


def test_replicate_ci_width_shrinks_as_one_over_sqrt_n():
    # Bug caught: dividing by n instead of sqrt(n), or not dividing at all.
    rng = np.random.default_rng(5)
    h16 = np.mean([ss.replicate_ci(rng.normal(0, 1, 16))["half_width"] for _ in range(400)])
    h64 = np.mean([ss.replicate_ci(rng.normal(0, 1, 64))["half_width"] for _ in range(400)])
    expect = 2.0 * stats.t.ppf(0.975, 15) / stats.t.ppf(0.975, 63)
    assert h16 / h64 == pytest.approx(expect, rel=0.05)


def test_one_replication_has_no_interval_and_bad_values_are_refused():
    assert ss.replicate_ci([3.0]) == {"mean": 3.0, "lo": None, "hi": None, "half_width": None, "n": 1}
    with pytest.raises(SpecsimError, match="finite"):
        ss.replicate_ci([1.0, float("nan")])
    with pytest.raises(SpecsimError, match="one value per seed"):
        ss.ratio_ci([1.0, 2.0], [1.0])


def test_paired_ratio_cancels_common_random_numbers():
    # Bug caught: ignoring the pairing. Seed i drives both designs; its workload scales both.
    w = np.array([80.0, 120.0, 95.0, 140.0, 60.0])
    a, b = 1.2 * w * np.array([1.0, 1.01, 0.99, 1.0, 1.0]), w
    paired = ss.ratio_ci(a, b)
    unpaired = ss.ratio_ci(a, b, paired=False)
    assert paired["mean"] == pytest.approx(1.2, rel=0.01)
    assert paired["lo"] > 1.15 and paired["hi"] < 1.25
    assert unpaired["lo"] < 1.0 < unpaired["hi"]  # the workload noise swamps it when unpaired


def test_crossover_ci_significant_and_not():
    # Bug caught: a crossover reported as certain when the ratio's CI at the crossing straddles 1.
    points = [1, 2, 4, 8, 16, 32]
    clear = [[1.8, 1.5, 1.3, 0.80, 0.70, 0.6], [1.7, 1.4, 1.25, 0.85, 0.72, 0.6],
             [1.9, 1.6, 1.35, 0.82, 0.68, 0.5]]
    out = ss.crossover_ci(points, clear, stops_paying)
    assert out["stops_paying_at"] == 8 and (out["lo"], out["hi"]) == (8, 8)
    assert out["significant"] is True and out["straddles"] == []
    assert out["per_replication"] == [stops_paying(points, r)[0] for r in clear]
    murky = [[1.8, 1.5, 1.3, 0.90, 0.70, 0.6], [1.7, 1.4, 1.25, 1.10, 0.72, 0.6],
             [1.9, 1.6, 1.35, 0.95, 0.68, 0.5], [1.8, 1.5, 1.3, 1.08, 0.70, 0.6]]
    out = ss.crossover_ci(points, murky, stops_paying)
    assert out["significant"] is False and out["straddles"] == [8]
    assert (out["lo"], out["hi"]) == (8, 16)
    assert out["per_replication"] == [8, 16, 8, 16]
    one = ss.crossover_ci(points, clear[:1], stops_paying)
    assert one["significant"] is None and one["lo"] is None


def test_crossover_beyond_the_sweep():
    # Bug caught: the interval's top invented inside the sweep when the optimistic ratio never drops.
    points = [1, 2, 4]
    reps = [[1.5, 1.2, 0.98], [1.5, 1.2, 1.03], [1.4, 1.1, 0.97]]
    out = ss.crossover_ci(points, reps, stops_paying)
    assert out["hi"] is None and out["significant"] is False


def test_overload_not_flagged_for_stable_queues_at_80_percent():
    # Bug caught: a TTFT rule that fires on a stable queue's slow random wander. A "last quarter's
    # median > 2x the first's" rule flags 17 of these 300 runs; dropping the rising-medians
    # condition flags 2 (seeds 63 and 177).
    flagged = []
    for seed in range(300):
        a, s, f = fifo_queue(0.8, 2000, seed)
        o = ss.overload(a, s, f, 0.8, None)
        if o["overloaded"]:
            flagged.append((seed, o["reason"]))
        if seed < 4:
            assert o["completed_rate"] == pytest.approx(0.8, rel=0.1)
    assert flagged == []


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_overload_flagged_for_queue_at_120_percent(seed):
    # Bug caught: an overloaded queue shown as a normal result (it ran to completion, no NaN).
    a, s, f = fifo_queue(1.2, 2000, seed)
    o = ss.overload(a, s, f, 1.2, None)
    assert o["overloaded"] is True
    assert "completed rate" in o["reason"] and "TTFT grows" in o["reason"]
    assert o["completed_rate"] == pytest.approx(1.0, rel=0.08)  # the server's rate, not the offered
    assert o["offered_rate"] == 1.2


def test_overload_unfinished_and_closed_loop():
    # Bug caught: requests left unfinished at the horizon not counted; a closed loop judged by rate.
    a, s, f = fifo_queue(0.8, 500, seed=3)
    cut = ss.overload(a, s, f, None, None, duration=float(np.median(f)))
    assert cut["overloaded"] and cut["unfinished"] == (f > np.median(f)).sum()
    a, s, f, _, _ = closed_loop(ramp_ttft=0.5)
    o = ss.overload(a, s, f, None, 8)
    assert o["overloaded"] is False and o["offered_rate"] is None
    # a closed loop whose TTFT grows with time (a queue in front of a batch that keeps shrinking)
    s2 = s + 0.05 * a
    assert ss.overload(a, s2, f + 0.05 * a, None, 8)["overloaded"] is True


def test_batch_stats_are_time_weighted():
    # Bug caught: per-step (unweighted) percentiles, where many short small steps hide the big batch.
    seqs, toks = np.array([1, 1, 1, 100]), np.array([1, 1, 1, 500])
    dur = np.array([0.01, 0.01, 0.01, 0.97])
    b = ss.batch_stats(seqs, toks, dur)
    assert b["seqs_per_step"]["p50"] == 100 and b["tokens_per_step"]["p99"] == 500
    assert b["seqs_per_step"]["mean"] == pytest.approx(0.03 + 97.0)
    b = ss.batch_stats([4, 8], [4, 40], [98.0, 2.0])
    assert (b["seqs_per_step"]["p50"], b["seqs_per_step"]["p99"]) == (4, 8)
    b = ss.batch_stats([4, 8], [4, 40], [99.0, 1.0])
    assert b["seqs_per_step"]["p99"] == 4
    w = ss.Window(1.0, 2.0, "steady", "")
    assert ss.batch_stats([4, 8], [4, 40], [1.0, 1.0], step_start=[0.0, 1.5], window=w)["steps"] == 1
    with pytest.raises(SpecsimError, match="one length"):
        ss.batch_stats([1, 2], [1], [1.0, 1.0])
