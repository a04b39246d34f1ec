"""SSD pre-speculation and SD with a dedicated draft: closed forms as oracles, schema errors."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import ROOT, run_dict, scenario_dict
from simulator.hardware.gpus import GPUS
from simulator.hardware.models import MODELS
from simulator.deploy.deployments import resolve
from simulator.engine.simulation import Simulation
from simulator.latency.roofline import RooflineLatency
from simulator.run.report import markdown, summary_json
from simulator.config.loading import parse_scenario
from simulator.physics.handshake import Handshake
from simulator.engine.strategies.ssd import SSDStrategy
from simulator.physics.ssd import (batch1_terms, geometric_fanout, geometric_fanout_continuous,
                                   hit_probability, optimal_fanout, ssd_speedup_batch1,
                                   stop_distribution, stop_distribution_per_position,
                                   uniform_fanout)
from simulator.engine.strategies.base import StepBatch
from simulator.config.workload import generate

Z = 3.29  # two-sided 99.9% normal quantile
GAMMA = 4
# Ideal backend (MODEL.md section 5): one forward of a model = 2 * params / peak, whatever its batch.
H100 = GPUS["h100-sxm"]
T_V = 2 * MODELS["llama-3.1-70b"].params / (H100.peak_flops() * 4)
SLOW_GPU = {"name": "slow", "hbm_gb": 80, "bandwidth_tbps": 3.35, "bf16_tflops": 200,
            "interconnect_gbps": 900}


def _dep(name, strategy, **kw):
    d = {"name": name, "target": "llama-3.1-70b", "gpu": "h100-sxm", "tp": 4, "strategy": strategy,
         "latency": {"backend": "ideal"}}
    if strategy != "ar":
        d.update(draft="llama-3.2-1b", gamma=GAMMA, acceptance={"alpha": 0.8})
    d.update(kw)
    return d


def _closed(deps, concurrency, requests, output, prompt=16, **extra):
    return scenario_dict(deps, requests=requests, arrival={"process": "closed", "concurrency": concurrency},
                         prompt={"dist": "fixed", "value": prompt},
                         output={"dist": "fixed", "value": output}, **extra)


def _simulate(dep_dict, concurrency, requests, output, seed=5):
    sc = parse_scenario(_closed([dep_dict], concurrency, requests, output))
    dep = resolve(sc.deployments[0], 0, ROOT)
    sim = Simulation(dep, generate(sc.workload, seed, ROOT), seed=seed)
    return sim.run(), sim.replicas[0].strategy


# ---- pure functions ---------------------------------------------------------------------------
def test_stop_distribution_sums_to_one_and_matches_per_position():
    p = stop_distribution(0.7, 5)
    assert p.sum() == pytest.approx(1.0)
    assert p[5] == pytest.approx(0.7 ** 5) and p[2] == pytest.approx(0.49 * 0.3)
    assert stop_distribution_per_position(np.full(5, 0.7)) == pytest.approx(p)


@pytest.mark.parametrize("alpha,r", [(0.5, 1.0), (0.8, 2.0), (0.9, 0.5)])
def test_geometric_fanout_is_theorem_12(alpha, r):
    f = geometric_fanout_continuous(alpha, GAMMA, r, budget=20)
    assert f.sum() == pytest.approx(20)
    f0 = f[0]
    for k in range(GAMMA):
        assert f[k] == pytest.approx(f0 * alpha ** (k / (1 + r)))
    assert f[GAMMA] == pytest.approx(f0 * alpha ** (GAMMA / (1 + r)) * (1 - alpha) ** (-1 / (1 + r)))
    # The cap pins the largest position and shares the rest in the same proportions.
    cap = (np.sort(f)[-1] + np.sort(f)[-2]) / 2
    capped = geometric_fanout_continuous(alpha, GAMMA, r, budget=20, cap=cap)
    assert capped.max() == pytest.approx(cap) and capped.sum() == pytest.approx(20)
    free = capped < cap - 1e-9
    assert free.sum() == GAMMA
    assert capped[free] / capped[free][0] == pytest.approx(f[free] / f[free][0])


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.7, 0.8, 0.9, 0.95])
@pytest.mark.parametrize("r", [0.5, 1.0, 2.0, 4.0])
def test_geometric_beats_uniform_for_the_same_budget(alpha, r):
    p = stop_distribution(alpha, GAMMA)
    uni = hit_probability(p, uniform_fanout(3, GAMMA), r)
    cont = hit_probability(p, geometric_fanout_continuous(alpha, GAMMA, r, 15), r)
    geo = geometric_fanout(alpha, GAMMA, r, 15)
    assert geo.sum() == 15 and geo.min() >= 1
    assert cont > uni + 1e-6
    # Whole branches: never worse than uniform (uniform is one of the candidates), and strictly
    # better unless the integer optimum is the uniform allocation itself.
    assert hit_probability(p, geo, r) >= uni - 1e-12
    if r <= 2.0:
        assert hit_probability(p, geo, r) > uni + 1e-5


@pytest.mark.parametrize("alpha,r,budget,cap", [(0.6, 1.0, 9, None), (0.9, 0.7, 10, 4),
                                                (0.3, 2.0, 8, None)])
def test_integer_fanout_is_the_brute_force_optimum(alpha, r, budget, cap):
    p = stop_distribution(alpha, 3)
    best = max(hit_probability(p, np.array(c), r)
               for c in itertools.product(range(1, (cap or budget) + 1), repeat=4) if sum(c) == budget)
    f = optimal_fanout(p, r, budget, cap)
    assert f.sum() == budget and (cap is None or f.max() <= cap)
    assert hit_probability(p, f, r) == pytest.approx(best, abs=1e-12)


def test_budget_below_positions_is_rejected():
    with pytest.raises(ValueError, match="below gamma"):
        geometric_fanout_continuous(0.8, GAMMA, 1.0, budget=GAMMA)


def test_theorem7_reduces_to_known_limits():
    # Every guess hits and drafting hides under the verify: speedup = tokens per round.
    assert ssd_speedup_batch1(1.0, 3.0, 0.0, 0.5, 9.0) == pytest.approx(3.0)
    # Never hits: SD with a draft costing T_b per round.
    assert ssd_speedup_batch1(0.0, 0.0, 3.0, 0.5, 0.4) == pytest.approx(3.0 / 1.4)
    p, e_hit, e_miss = batch1_terms(stop_distribution(0.8, GAMMA), uniform_fanout(3, GAMMA), 1.0)
    assert p == pytest.approx(2 / 3)
    assert p * e_hit + (1 - p) * e_miss == pytest.approx((1 - 0.8 ** 5) / 0.2)


# ---- batch 1 against Theorem 7 ----------------------------------------------------------------
@pytest.mark.parametrize("r,slow_draft,backup", [(0.5, False, "jit"), (1.0, False, "jit"),
                                                 (2.0, False, "jit"), (4.0, False, "jit"),
                                                 (1.0, True, "jit"), (3.0, True, "jit"),
                                                 (1.0, False, "fast")])
def test_batch1_speedup_matches_theorem7(rows, r, slow_draft, backup):
    extra = {"draft_gpu": SLOW_GPU} if slow_draft else {}
    ssd = _dep("ssd", "ssd", handshake_s=0.0, ssd={"r": r, "backup": backup}, **extra)
    res = rows(_closed([_dep("ar", "ar"), ssd], 1, requests=12, output=2500))
    t_d = 2 * MODELS["llama-3.2-1b"].params / (200e12 if slow_draft else H100.peak_flops())
    t_p, t_b = (GAMMA + 1) * t_d / T_V, GAMMA * t_d / T_V
    assert (t_p > 1) == slow_draft  # both branches of max(1, T_p) are exercised
    p, e_hit, e_miss = batch1_terms(stop_distribution(0.8, GAMMA), uniform_fanout(3, GAMMA), r, backup)
    expected = ssd_speedup_batch1(p, e_hit, e_miss, t_p, 0.0 if backup == "fast" else t_b)
    got = res["ssd"]["throughput_tokens_per_s"] / res["ar"]["throughput_tokens_per_s"]
    assert got == pytest.approx(expected, rel=0.02)
    assert res["ar"]["throughput_tokens_per_s"] == pytest.approx(1 / T_V, rel=1e-9)


def test_batch1_dedicated_sd_and_full_hiding_with_handshake(rows):
    """r huge: every guess hits, so SSD's round is T_verify + T_handshake; dedicated SD's is
    gamma draft steps + T_verify + T_handshake (Leviathan with the handshake added)."""
    h = 0.4 * T_V
    res = rows(_closed([_dep("ar", "ar"),
                        _dep("ssd", "ssd", handshake_s=h, ssd={"r": 1e6}),
                        _dep("sd", "sd", draft_placement="dedicated", handshake_s=h)],
                       1, requests=12, output=2500))
    e = (1 - 0.8 ** (GAMMA + 1)) / 0.2
    t_d = 2 * MODELS["llama-3.2-1b"].params / H100.peak_flops()
    ar = res["ar"]["throughput_tokens_per_s"]
    assert res["ssd"]["cache_hit_rate"] == 1.0 and res["ssd"]["batch_hit_rate"] == 1.0
    assert res["ssd"]["throughput_tokens_per_s"] / ar == pytest.approx(e / (1 + 0.4), rel=0.02)
    assert res["sd"]["throughput_tokens_per_s"] / ar == pytest.approx(
        e / (1 + 0.4 + GAMMA * t_d / T_V), rel=0.02)
    # The draft GPU works (gamma+1) forwards per round of T_V + h: its busy fraction says so.
    assert res["ssd"]["draft_gpu_busy_fraction"] == pytest.approx(
        (GAMMA + 1) * t_d / (T_V + h), rel=0.02)


def test_round_time_is_verify_plus_handshake_when_every_guess_hits():
    """Real roofline timings at batch 8: pre-speculation fits under the verify, so the round
    costs exactly the verify plus the handshake (drafting fully hidden)."""
    target = RooflineLatency(MODELS["llama-3.1-70b"], H100, 4)
    draft = RooflineLatency(MODELS["llama-3.2-1b"], H100, 1)
    hs = Handshake.from_link(H100.interconnect_gbps, GAMMA, MODELS["llama-3.1-70b"].vocab)
    s = SSDStrategy(target, draft, GAMMA, uniform_fanout(3, GAMMA), r=1e9, handshake=hs)
    n = 8
    b = StepBatch.decoding(GAMMA + 1, np.full(n, 700))
    out = s.sample(np.random.default_rng(0), np.full(n, 0.8))
    assert out.hit.all()
    t = s.step_time(b, out)
    t_v = float(target.forward(b.q, b.ctx, n * (GAMMA + 1)).sum()) + target.step_overhead_s
    assert sum(s.draft_busy) < t_v  # the draft is fast enough
    assert hs.time(n) > 0
    assert t == pytest.approx(t_v + hs.time(n), rel=1e-12)
    # A forced miss instead: verify + jit backup (gamma draft steps) + handshake.
    s2 = SSDStrategy(target, draft, GAMMA, uniform_fanout(1, GAMMA), r=1.0, handshake=hs)
    out2 = s2.sample(np.random.default_rng(0), np.full(n, 0.8))
    assert not out2.hit.any()  # F = 1 never hits (1^-r = 1)
    backup = float(sum(draft.decode_steps(b.ctx, GAMMA, n)))
    assert s2.step_time(b, out2) == pytest.approx(t_v + backup + hs.time(n), rel=1e-12)


# ---- hit rates under batching -----------------------------------------------------------------
@pytest.mark.parametrize("b", [1, 2, 4, 8])
def test_cache_hit_rate_and_all_or_nothing_batch_hits(b):
    """Per-sequence hits match P_hit = 2/3 (F = 3, r = 1) within a 99.9% interval; rounds that use
    the cache match P_hit^n for the n sequences decoding in them (mostly n = b)."""
    rec, s = _simulate(_dep("ssd", "ssd", ssd={"r": 1.0}), b, requests=4 * b, output=1500)
    p = hit_probability(stop_distribution(0.8, GAMMA), uniform_fanout(3, GAMMA), 1.0)
    assert p == pytest.approx(2 / 3)
    n = s.seq_rounds
    assert abs(s.seq_hits / n - p) < Z * math.sqrt(p * (1 - p) / n)
    rounds, full = s.rounds_by_size[b]
    assert rounds > 0.9 * s.step_rounds
    q = p ** b
    assert abs(full / rounds - q) < Z * math.sqrt(q * (1 - q) / rounds) + 1e-12
    expect = sum(c[0] * p ** size for size, c in s.rounds_by_size.items())
    var = sum(c[0] * p ** size * (1 - p ** size) for size, c in s.rounds_by_size.items())
    assert abs(s.cache_rounds - expect) < Z * math.sqrt(var)
    summ = rec.strategy_stats
    assert summ["cache_hit_rate"] == s.seq_hits / n and summ["batch_hit_rate"] == s.cache_rounds / s.step_rounds


def test_per_sequence_policy_keeps_the_hits_and_fast_backup_yields_one_token():
    """Fast backup at batch 8: all_or_nothing gives every sequence 1 token on any miss;
    per_sequence only the misses. Tokens per sequence-round match the closed forms."""
    p_stop = stop_distribution(0.8, GAMMA)
    fan = uniform_fanout(3, GAMMA)
    p, e_hit, _ = batch1_terms(p_stop, fan, 1.0)
    got = {}
    for policy in ("all_or_nothing", "per_sequence"):
        rec, s = _simulate(_dep("ssd", "ssd", ssd={"r": 1.0, "batch_policy": policy, "backup": "fast"}),
                           8, requests=32, output=600)
        got[policy] = rec.round_tokens.sum() / rec.rounds.sum()
    assert got["per_sequence"] == pytest.approx(p * e_hit + (1 - p), rel=0.02)
    # all_or_nothing: a round full of hits gives K+1 each, otherwise 1 each (P_hit^8 ~ 4%).
    q = p ** 8
    assert got["all_or_nothing"] == pytest.approx(q * e_hit + (1 - q), rel=0.03)
    assert got["per_sequence"] > got["all_or_nothing"] + 0.5


def test_backup_switches_to_fast_above_threshold():
    base = {"r": 1.0, "backup": "jit"}
    _, s_lo = _simulate(_dep("ssd", "ssd", ssd={**base, "backup_batch_threshold": 4}), 8, 16, 200)
    _, s_hi = _simulate(_dep("ssd", "ssd", ssd={**base, "backup_batch_threshold": 8}), 8, 16, 200)
    assert s_lo.fast_rounds > 0.5 * s_lo.step_rounds
    assert s_hi.fast_rounds == 0


# ---- resolution, hardware accounting, report --------------------------------------------------
def test_dedicated_draft_gpus_memory_and_cost():
    sc = parse_scenario(scenario_dict([
        _dep("ar", "ar", latency={}),
        _dep("sdc", "sd", latency={}),
        _dep("ssd", "ssd", latency={}, draft_gpus=2, draft_gpu="a100-80gb-sxm"),
    ]))
    ar, sdc, ssd = (resolve(d, i, ROOT) for i, d in enumerate(sc.deployments))
    assert (ar.gpus, sdc.gpus, ssd.gpus) == (4, 4, 6)
    # A colocated draft takes target memory; a dedicated one does not.
    assert sdc.memory.kv_capacity_tokens < ar.memory.kv_capacity_tokens
    assert ssd.memory.draft_weights_gb == 0 and sdc.memory.draft_weights_gb > 0
    assert ssd.memory.kv_bytes_per_token == ar.memory.kv_bytes_per_token
    assert ssd.memory.kv_capacity_tokens > sdc.memory.kv_capacity_tokens
    assert ssd.draft_memory.target_weights_gb == pytest.approx(
        MODELS["llama-3.2-1b"].weight_bytes() / 2 / 1e9)
    # Cost: four H100s and two A100s per replica.
    a100 = GPUS["a100-80gb-sxm"].price_per_gpu_hour
    assert ssd.price_per_gpu_hour * 6 == pytest.approx(4 * H100.price_per_gpu_hour + 2 * a100)
    assert ssd.draft_latency.gpu.name == "a100-80gb-sxm" and ssd.draft_latency.tp == 2
    hs = ssd.handshake
    link = GPUS["a100-80gb-sxm"].interconnect_gbps
    assert hs.time(3) == pytest.approx(
        20e-6 + 3 * (GAMMA * (4 + 128256 * 2) + 8) / (link * 1e9 / 2 * 0.7))


def test_ssd_run_is_deterministic_and_reported():
    d = _closed([_dep("sd", "sd", draft_placement="dedicated"), _dep("ssd", "ssd")], 4, 16, 100,
                sweep={"param": "concurrency", "values": [1, 4]}, baseline="sd",
                compare=[["ssd", "sd"]])
    a, b = run_dict(d), run_dict(d)
    assert summary_json(a) == summary_json(b)
    rows = a.summary["deployments"]
    ssd = [r for r in rows if r["name"] == "ssd"]
    assert all(0 < r["cache_hit_rate"] <= 1 and 0 < r["draft_gpu_busy_fraction"] < 1 for r in ssd)
    assert all(r["gpus"] == 5 for r in rows)
    assert json.loads(summary_json(a))["crossover"][0]["design"] == "ssd"
    md = markdown(a, "x.yaml")
    assert "## SSD pre-speculation" in md and "dedicated 1 x h100-sxm" in md


# ---- invalid combinations: clear errors, exit code 2 ------------------------------------------
@pytest.mark.parametrize("patch,needle", [
    ({"draft": None}, "strategy 'ssd' needs draft"),
    ({"draft_gpus": 0}, "deployments[0].draft_gpus"),
    ({"ssd": {"fanout": {"policy": "geometric", "budget": 4}}}, "ssd.fanout.budget (4) is below gamma + 1 = 5"),
    ({"ssd": {"fanout": {"policy": "geometric", "f": 1, "budget": 9, "cap": 1}}}, "ssd.fanout.cap"),
    ({"ssd": {"fanout": {"policy": "uniform", "budget": 9}}}, "deployments[0].ssd.fanout"),
    ({"ssd": {"fanot": {}}}, "deployments[0].ssd.fanot: unknown key"),
    ({"ssd": {"r": 0}}, "deployments[0].ssd.r"),
    ({"draft_placement": "colocated"}, "strategy 'ssd' runs the draft on dedicated GPU(s)"),
    ({"draft_tp": 1}, "draft_tp applies to a colocated draft"),
    ({"strategy": "sd", "draft_gpus": 1}, "draft_gpus apply to draft_placement: dedicated"),
    ({"strategy": "sd", "ssd": {"r": 1}}, "'ssd' settings apply to strategy 'ssd'"),
    ({"draft_gpu": "h900"}, "deployments[0].draft_gpu: unknown gpu 'h900'"),
    ({"draft_gpu": {"name": "tiny", "hbm_gb": 2, "bandwidth_tbps": 1, "bf16_tflops": 100}},
     "deployments[0].draft_gpu: draft llama-3.2-1b does not fit"),
    ({"draft_gpus": 3}, "deployments[0].draft_gpus: a dedicated draft runs tensor-parallel"),
])
def test_invalid_combinations_are_clear_errors(tmp_path, patch, needle):
    import yaml

    from simulator.cli import app
    dep = _dep("ssd", "ssd", latency={})
    dep.update(patch)
    dep = {k: v for k, v in dep.items() if v is not None}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(scenario_dict([dep])))
    res = CliRunner().invoke(app, ["check", str(path)])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert needle in text, text
    assert "Traceback" not in res.output


def test_compare_names_must_exist():
    from simulator.errors import SpecsimError
    d = _closed([_dep("ssd", "ssd")], 2, 4, 10, sweep={"param": "concurrency", "values": [1]},
                compare=[["ssd", "nope"]])
    with pytest.raises(SpecsimError, match=r"compare\[0\]: \['nope'\] not deployment names"):
        parse_scenario(d)


@pytest.mark.parametrize("alpha", [1.0, 0.999999])
def test_geometric_fanout_with_certain_acceptance_stays_whole(alpha):
    """alpha = 1: P(stop at k) = 0 for k < gamma, so after the capped last position is pinned the
    free positions weigh nothing; the budget used to be split as 0/0 (NaN, then int64 -2^63:
    negative branch counts, or a rounding loop that never ends). Issue 15, rel15.md row 14."""
    from simulator.physics.ssd import geometric_fanout
    gamma = 4
    for cap in range(2, 9):
        for budget in range(gamma + 1, min(20, cap * (gamma + 1)) + 1):
            f = geometric_fanout(alpha, gamma, 2.0, budget, cap)
            assert f.sum() == budget and f.min() >= 1 and f.max() <= cap, (cap, budget, f)
