"""`specsim fidelity` (issue 6): comparison and crossover logic, and a short real-vs-simulated run.

The short run reuses the committed cpu-local profiles (no capture) so it takes seconds.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulator.analysis.crossover import crossover_point as crossover
from simulator.fidelity.config import METRICS, FidelityConfig, scenario_dict
from simulator.fidelity.metrics import (compare, crossover_distance, crossovers, error_summary,
                                        request_metrics)
from simulator.fidelity.microbench import overhead_at

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ pure functions
def test_request_metrics_by_hand():
    m = request_metrics(arrival=[0.0, 0.0, 1.0], first=[0.5, 1.0, 1.5], finish=[1.0, 2.0, 4.0],
                        output=[3, 1, 6], round_tokens=8, rounds=4)
    assert m["throughput"] == pytest.approx(10 / 4.0)
    # TPOT of requests with > 1 token: (1.0-0.5)/2 = 0.25 and (4.0-1.5)/5 = 0.5
    assert m["tpot_mean"] == pytest.approx(0.375)
    assert m["tpot_p50"] == pytest.approx(0.375)
    assert m["ttft_p50"] == pytest.approx(0.5)
    assert m["tokens_per_round"] == pytest.approx(2.0)
    with pytest.raises(Exception, match="unfinished"):
        request_metrics([0.0], [0.1], [float("nan")], [2], 1, 1)


def _point(mode, c, thr_real, thr_sim, tpot_real=0.01, tpot_sim=0.0105):
    base = {m: 1.0 for m in METRICS}
    real = dict(base, throughput=thr_real, tpot_mean=tpot_real, tpot_p99=tpot_real)
    sim = dict(base, throughput=thr_sim, tpot_mean=tpot_sim, tpot_p99=tpot_sim * 1.5)
    return {"mode": mode, "concurrency": c, "real": real, "sim": sim}


def test_compare_and_error_summary():
    pts = [_point("ar", 1, 100, 108), _point("sd", 1, 125, 115), _point("ar", 2, 150, 150),
           _point("sd", 2, 150, 162)]
    t = compare(pts)
    for m in METRICS:
        assert {f"{m}_real", f"{m}_sim", f"{m}_err"} <= set(t.columns)
    assert list(zip(t["mode"], t["concurrency"])) == [("ar", 1), ("ar", 2), ("sd", 1), ("sd", 2)]
    assert t.loc[0, "throughput_err"] == pytest.approx(0.08)
    assert t.loc[2, "throughput_err"] == pytest.approx(-0.08)
    e = error_summary(t)
    assert e["throughput"]["median_abs"] == pytest.approx(0.08)  # |errs| = .08, 0, .08, .08
    assert e["throughput"]["max_abs"] == pytest.approx(0.08)
    assert e["throughput"]["met"] is True  # <= 10%
    assert e["tpot_mean"]["median_abs"] == pytest.approx(0.05) and e["tpot_mean"]["met"]
    assert e["tpot_p99"]["median_abs"] == pytest.approx(0.575) and e["tpot_p99"]["met"] is False


def test_crossover_logic():
    grid = [1, 2, 4, 8, 16]
    assert crossover(grid, [10, 20, 30, 40, 50], [15, 25, 31, 39, 45]) == 8
    assert crossover(grid, [10] * 5, [11] * 5) is None  # SD wins everywhere
    assert crossover(grid, [10] * 5, [9, 12, 12, 12, 12]) is None  # a dip at batch 1 is not a crossover
    assert crossover(grid, [10] * 5, [9, 12, 9, 9, 9]) == 4  # stops paying for good from 4
    assert crossover(grid, [10] * 5, [9, 9, 9, 9, 9]) == 1  # never paid
    assert crossover(grid, [10] * 5, [12, 10, 9, 9, 9]) == 2  # a tie is "stops beating"
    assert crossover_distance(grid, 8, 8) == 0
    assert crossover_distance(grid, 8, 16) == 1
    assert crossover_distance(grid, 16, None) == 1  # None sits one step past the grid
    assert crossover_distance(grid, 2, None) == 4
    t = compare([_point("ar", 1, 100, 100), _point("sd", 1, 120, 130), _point("ar", 2, 150, 150),
                 _point("sd", 2, 140, 160)])
    c = crossovers(t)
    assert c["real"] == 2 and c["predicted"] is None and c["distance"] == 1 and c["ok"]
    assert c["speedup_real"][1] == pytest.approx(1.2)


def test_scenario_dict_validates_like_yaml():
    from simulator.config.loading import parse_scenario
    cfg = FidelityConfig(gamma=3)
    sc = parse_scenario(scenario_dict(cfg, 8, ROOT / "profiles", {"per_position": [0.8, 0.7, 0.75]}))
    ar, sd = sc.deployments
    assert sc.workload.arrival.concurrency == 8 and sc.workload.requests == cfg.requests
    assert ar.strategy == "ar" and sd.strategy == "sd" and sd.gamma == 3
    assert sd.acceptance.per_position == [0.8, 0.7, 0.75]
    for d in (ar, sd):  # the real loop's scheduling: whole prompts, then decode steps
        assert d.scheduler.chunked_prefill is False and d.scheduler.max_num_seqs == 8
        assert d.latency.backend == "profile"


def test_overhead_interpolation():
    host = {"batch": [1, 4, 16], "ar_s": [1e-4, 4e-4, 1.6e-3], "sd_s": [1e-3, 2e-3, 5e-3]}
    assert overhead_at(host, "ar", 2) == pytest.approx(2e-4)
    assert overhead_at(host, "sd", 16) == pytest.approx(5e-3)
    assert overhead_at(host, "sd", 64) == pytest.approx(5e-3)  # flat beyond the measured range


def test_first_draft_step_q2_charges_more():
    """run_real feeds 2 tokens per sequence in a round's first draft step; the strategy can charge it."""
    from simulator.hardware.models import MODELS
    from simulator.deploy.deployments import resolve_gpu
    from simulator.fidelity.config import CPU_GPU
    from simulator.latency.profile import make_profile_latency
    from simulator.config.schema import InlineGPU
    from simulator.engine.strategies.sd import SpeculativeStrategy
    from simulator.engine.strategies.base import StepBatch

    gpu = resolve_gpu(InlineGPU(name="cpu-local", **CPU_GPU), "gpu")
    lat = {m: make_profile_latency(MODELS[m], gpu, 1, "fp32", root=ROOT / "profiles")
           for m in ("tiny-target", "tiny-draft")}
    b = StepBatch.decoding(5, np.full(4, 100))
    s1 = SpeculativeStrategy(lat["tiny-target"], lat["tiny-draft"], 4, alpha=0.7)
    s2 = SpeculativeStrategy(lat["tiny-target"], lat["tiny-draft"], 4, alpha=0.7)
    s2.draft_first_q = 2
    assert s2.draft_time(b) > s1.draft_time(b) > 0


def test_host_overhead_by_step_kind():
    """Decode steps pay the measured AR step / SD round at their batch; prefill steps one sampled
    token per prompt (not a decode step's overhead at the full concurrency)."""
    from simulator.fidelity.latency import HostOverheadLatency

    class Flat:
        source = "measured"
        stats = {"calls": 0}

        def forward(self, q, ctx, n_logits):
            return np.array([1.0, 0.0, 0.0, 0.0])

    host = {"batch": [1, 4, 16], "ar_s": [1e-4, 4e-4, 1.6e-3], "sd_s": [1e-3, 2e-3, 5e-3]}
    sd = HostOverheadLatency(Flat(), host, "sd", 5)
    assert sd.step_overhead_s == 0.0 and sd.stats == {"calls": 0}  # delegated
    assert sd.forward(np.full(4, 5), np.full(4, 50), 20)[3] == pytest.approx(2e-3)  # verify, b=4
    assert sd.forward(np.array([40]), np.array([0]), 1)[3] == pytest.approx(1e-4)  # one prefill
    assert sd.forward(np.array([5]), np.array([0]), 1)[3] == pytest.approx(1e-4)  # a 5-token prompt
    ar = HostOverheadLatency(Flat(), host, "ar", 1)
    assert ar.forward(np.ones(16, np.int64), np.full(16, 9), 16)[3] == pytest.approx(1.6e-3)

    # The engine prices steps through forward_batch / decode_steps, which take an inner
    # backend's fast paths (sums, uniform batches); through the wrapper they must not skip it.
    from simulator.latency.base import decode_steps, forward_batch, forward_decode_many
    from simulator.latency.pricing import GenericPricer, step_pricer

    class Fast(Flat):
        def forward_sums(self, *a):
            return (1.0, 0.0, 0.0, 0.0)

        def forward_uniform(self, *a):
            return np.array([1.0, 0.0, 0.0, 0.0])

        def decode_steps(self, ctx, steps, *a):
            return (float(steps), 0.0, 0.0, 0.0)

        def forward_mixed(self, *a):
            return (1.0, 0.0, 0.0, 0.0)

        def forward_batch(self, *a):
            return (1.0, 0.0, 0.0, 0.0)

        def forward_decode_many(self, *a):
            return (1.0, 0.0, 0.0, 0.0)

    sd = HostOverheadLatency(Fast(), host, "sd", 5)
    ctx = np.full(4, 50)
    assert forward_batch(sd, 5, ctx, 200, [], [], 20)[3] == pytest.approx(2e-3)
    assert forward_batch(sd, 5, ctx[:0], 0, [40], [0], 1)[3] == pytest.approx(1e-4)  # a prefill
    assert forward_decode_many(sd, 5, 4, np.array([200, 224]), 20) is None  # runs: step by step
    ar = HostOverheadLatency(Fast(), host, "ar", 1)
    assert decode_steps(ar, ctx, 3, 4)[3] == pytest.approx(3 * 4e-4)
    assert type(step_pricer(ar)) is GenericPricer


def test_interleaved_order_and_median():
    from simulator.fidelity.metrics import interleaved_order, median_metrics
    from simulator.fidelity.diagnostics import merge_diagnostics
    assert interleaved_order(1) == ["ar", "sd"]
    assert interleaved_order(2) == ["ar", "sd", "sd", "ar"]
    assert median_metrics([{"x": 1.0}, {"x": 3.0}]) == {"x": 2.0}
    d = merge_diagnostics([{"target_measured_s": 2.0, "target_predicted_s": 1.0, "target_ratio_median": 2.0,
                            "mean_batch": 4.0, "iterations": 10},
                           {"target_measured_s": 1.0, "target_predicted_s": 1.0, "target_ratio_median": 1.0,
                            "mean_batch": 2.0, "iterations": 5}])
    assert d["target_ratio_total"] == pytest.approx(1.5) and d["iterations"] == 15


def test_scenario_schedules_one_prefill_per_step():
    from simulator.config.loading import parse_scenario
    sc = parse_scenario(scenario_dict(FidelityConfig(), 4, ROOT / "profiles", {"alpha": 0.7}))
    assert all(d.scheduler.max_prefills_per_step == 1 for d in sc.deployments)


def test_cli_rejects_bad_concurrency():
    from typer.testing import CliRunner

    from simulator.cli import app
    r = CliRunner().invoke(app, ["fidelity", "--concurrency", "1,x", "--out", "/nonexistent/x"])
    assert r.exit_code == 2 and "--concurrency" in r.output


# --------------------------------------------------------------------------- a short real run
def test_short_fidelity_run_writes_table_with_finite_errors(tmp_path):
    pytest.importorskip("torch")
    import torch

    from simulator.fidelity.experiment import run_fidelity, write_outputs

    torch.set_num_threads(1)
    cfg = FidelityConfig(concurrency=(1, 2), requests=4, gamma=3, prompt_mean=16, output_mean=12,
                         prompt_range=(4, 32), output_range=(4, 24), reuse_profile=True,
                         profiles_dir=str(ROOT / "profiles"), max_drift=0.0)
    res = run_fidelity(cfg, tmp_path)
    paths = write_outputs(res, tmp_path)
    t = pd.read_csv(paths["csv"])
    assert len(t) == 4 and set(t["mode"]) == {"ar", "sd"} and set(t["concurrency"]) == {1, 2}
    for m in METRICS:
        assert np.isfinite(t[f"{m}_real"]).all() and np.isfinite(t[f"{m}_sim"]).all(), m
        assert np.isfinite(t[f"{m}_err"]).all(), m
    assert (t.loc[t["mode"] == "ar", "tokens_per_round_real"] == 1).all()
    sd = t[t["mode"] == "sd"]
    assert ((sd["alpha"] > 0) & (sd["alpha"] < 1)).all(), "alpha is measured and non-trivial"
    md = paths["md"].read_text()
    assert "Crossover" in md and "throughput" in md
    assert paths["png"].stat().st_size > 1000
    j = json.loads(paths["json"].read_text())
    assert {"config", "errors", "crossover", "table", "points", "host_overhead", "profiles"} <= set(j)
    assert all(math.isfinite(j["errors"][m]["median_abs"]) for m in METRICS)
    assert j["profiles"]["tiny-target"]["reused"] is True
    d = j["points"][0]["diagnostics"]
    assert d["target_ratio_total"] > 0 and d["iterations"] > 0
    # drift is measured and reported (never used to scale): a canary around every real run
    assert {"ratio_min", "ratio_median", "ratio_max", "discarded_runs"} <= set(j["drift"])
    p0 = j["points"][0]
    assert len(p0["runs"]) == cfg.repeats and 0.2 < p0["canary"] < 5
    assert "canary" in t.columns and "Canary" in md
    assert "/tmp" not in paths["json"].read_text().replace(str(tmp_path), "")


def test_stops_paying_interpolates_between_last_paying_point_and_crossover():
    from simulator.analysis.crossover import stops_paying
    at, interp = stops_paying([1, 2, 4, 8], [1.5, 0.9, 1.2, 0.8])
    assert at == 8 and interp == pytest.approx(4 * 2 ** 0.5)  # ratio 1.2 -> 0.8: halfway in log
    assert stops_paying([1, 2], [1.1, 1.05]) == (None, None)
    assert stops_paying([1, 2], [0.9, 0.8]) == (1, None)
