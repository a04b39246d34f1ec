"""Arrival processes against their definitions: mean rate, the coefficient of variation of gamma
inter-arrivals (= burstiness), trace `speedup` dividing time, `duration_s` bounding arrivals.

Statistical checks use 40,000 gaps with a fixed seed; their tolerances are several standard
errors wide yet far tighter than what the bugs they target produce (noted per test).
"""
from __future__ import annotations

import numpy as np
import pytest

# Scenario schema (public) and the workload generator (the one internal this file needs).
from simulator.config.loading import parse_scenario
from simulator.config.workload import generate

from conftest import ROOT

N = 40_000


def workload(arrival: dict, *, requests=None, duration_s=None, seed=5):
    w = {"arrival": arrival, "prompt_tokens": {"dist": "fixed", "value": 8},
         "output_tokens": {"dist": "fixed", "value": 8}}
    w.update({"requests": requests} if requests is not None else {"duration_s": duration_s})
    sc = parse_scenario({"name": "w", "seed": seed, "workload": w, "deployments": [
        {"name": "a", "target": "llama-3.1-8b", "gpu": "h100-sxm"}]})
    return generate(sc.workload, sc.seed, ROOT)


def gaps(arrival: dict) -> np.ndarray:
    t = workload(arrival, requests=N).arrival
    assert t[0] == 0.0 and (np.diff(t) >= 0).all()
    return np.diff(t)


@pytest.mark.parametrize("burstiness", [0.5, 2.0, 4.0])
def test_gamma_interarrival_cv_equals_burstiness_and_rate_holds(burstiness):
    """CV of Gamma(shape k) is 1/sqrt(k), so k = 1/burstiness^2. A shape of 1/burstiness would
    give CV 0.71 / 1.41 / 2.0 instead of 0.5 / 2 / 4 (off by 29% or more); the standard error
    of the sample CV here is under 4% even at burstiness 4 (kurtosis 3 + 6 b^2)."""
    g = gaps({"process": "gamma", "rate_per_s": 8.0, "burstiness": burstiness})
    cv = g.std() / g.mean()
    assert cv == pytest.approx(burstiness, rel=0.12)
    # mean rate: SE of the mean gap is burstiness / sqrt(N) relative (2% at b = 4)
    assert 1.0 / g.mean() == pytest.approx(8.0, rel=0.08)


def test_poisson_rate_and_cv():
    g = gaps({"process": "poisson", "rate_per_s": 3.0})
    assert 1.0 / g.mean() == pytest.approx(3.0, rel=0.02)
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.03)


def test_gamma_with_burstiness_one_is_poisson_like():
    g = gaps({"process": "gamma", "rate_per_s": 3.0, "burstiness": 1.0})
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.03)


def test_constant_arrivals_are_exact():
    t = workload({"process": "constant", "rate_per_s": 4.0}, requests=5).arrival
    assert t.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.fixture
def trace(tmp_path):
    p = tmp_path / "arrivals.csv"
    p.write_text("arrived_at\n100\n110\n130\n160\n")
    return str(p)


@pytest.mark.parametrize("speedup,expected", [(1.0, [0, 10, 30, 60]), (2.0, [0, 5, 15, 30]),
                                              (0.5, [0, 20, 60, 120])])
def test_trace_speedup_divides_time(trace, speedup, expected):
    """Times are shifted to start at 0 and divided by speedup (> 1 compresses: more load)."""
    t = workload({"process": "trace", "path": trace, "speedup": speedup}, requests=4).arrival
    assert t.tolist() == pytest.approx(expected)


def test_trace_speedup_with_duration(trace):
    """duration_s applies to the compressed times: at speedup 2, 20 s hold 0, 5 and 15."""
    t = workload({"process": "trace", "path": trace, "speedup": 2.0}, duration_s=20).arrival
    assert t.tolist() == [0.0, 5.0, 15.0]


def test_duration_bounds_constant_arrivals_exactly():
    """Rate 2 for 10 s: arrivals at 0, 0.5, ..., 10.0 (both ends included): 21 requests."""
    t = workload({"process": "constant", "rate_per_s": 2.0}, duration_s=10.0).arrival
    assert len(t) == 21 and t[-1] == 10.0


@pytest.mark.parametrize("arrival", [{"process": "poisson", "rate_per_s": 50.0},
                                     {"process": "gamma", "rate_per_s": 50.0, "burstiness": 3.0}],
                         ids=["poisson", "gamma"])
def test_duration_bounds_random_arrivals(arrival):
    """Every arrival within duration_s, none dropped before it: the count matches rate x
    duration (Poisson: within 4 sigma; gamma renewal: variance ~ b^2 x mean), and the last
    arrival is near the end (the generator drew past it, not short of it)."""
    dur = 200.0
    t = workload(arrival, duration_s=dur).arrival
    mean = 50.0 * dur
    b = arrival.get("burstiness", 1.0)
    assert t.max() <= dur
    assert abs(len(t) - mean) < 4 * b * np.sqrt(mean)
    assert t.max() > dur - 10 * b / 50.0


@pytest.mark.parametrize("arrival", [{"process": "gamma", "rate_per_s": 1.0, "burstiness": 10.0},
                                     {"process": "poisson", "rate_per_s": 1.0}])
def test_duration_fills_the_window_at_high_burstiness(arrival):
    """duration_s keeps every arrival of the process within the window: the same arrivals as
    drawing by count (same seed, same stream) and cutting at duration_s. Gamma, burstiness 10,
    rate 1/s, 100 s, seed 0 used to stop at 230 pre-drawn gaps summing to 74 s (rel15.md W1)."""
    t = workload(arrival, duration_s=100.0, seed=0).arrival
    full = workload(arrival, requests=5000, seed=0).arrival
    assert full[-1] > 100.0  # the count-drawn process passes the window
    want = full[full <= 100.0]
    assert len(t) == len(want) and np.allclose(t, want, rtol=1e-12, atol=1e-9)
