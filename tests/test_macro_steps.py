"""Macro-steps (simulator/engine/macro.py) against the single-step reference loop.

Runs of decode steps are priced with the scalar path's float operations, land on the
reference's clock, and read the rounds each request drew when it started decoding, so the two
loops give
byte-identical outputs: deterministic cases (AR, SD alpha = 1, fixed lengths), sampled ones,
preemption, chunked and non-chunked prefill, open and closed loops, several replicas. Where
identity could break (event order at equal times), the distributions must still agree.
"""
from __future__ import annotations

import re

import math
from pathlib import Path

import numpy as np
import pytest
import simpy
from scipy.stats import ks_2samp

from conftest import AR_8B, ROOT, SD_8B, scenario_dict
from simulator.config.loading import load_scenario, parse_scenario
from simulator.config.workload import generate
from simulator.deploy.deployments import resolve
from simulator.engine import macro
from simulator.engine.simulation import Simulation
from simulator.engine.strategies import RunBatch, StepBatch, make_strategy
from simulator.run.report import summary_json
from simulator.run.runner import run_scenario

SMALL_GPU = {"name": "tiny-gpu", "hbm_gb": 24, "bandwidth_tbps": 1.0, "bf16_tflops": 200}
RECORD_FIELDS = ("arrival", "first_token", "finish", "rounds", "accepted", "round_tokens",
                 "preemptions", "replica", "busy_s", "step_replica", "step_start", "step_time",
                 "step_seqs", "step_tokens", "step_emitted")


def simulate(d, macro_steps: bool, index: int = 0, seed: int = 5, lazy: bool = False):
    """One deployment of scenario dict d; the eager table unless `lazy` (this file tests runs)."""
    sc = parse_scenario(d)
    dep = resolve(sc.deployments[index], index, ROOT)
    req = generate(sc.workload, sc.seed, ROOT)
    return Simulation(dep, req, seed=seed, macro_steps=macro_steps, lazy=lazy).run()


def _itl_pairs(rec) -> bytes:
    order = np.lexsort((rec.itl_count, rec.itl))
    return rec.itl[order].tobytes() + rec.itl_count[order].tobytes()


def assert_identical(a, b):
    for f in RECORD_FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.shape == y.shape and (x.tobytes() == y.tobytes()), f
    if a.busy_s.shape[0] == 1:  # one replica: the gaps in the same order
        assert a.itl.tobytes() == b.itl.tobytes() and a.itl_count.tobytes() == b.itl_count.tobytes()
    else:  # replicas append their gaps at their own events: the same gaps, in another order
        assert _itl_pairs(a) == _itl_pairs(b)
    assert a.breakdown_s == b.breakdown_s
    assert (a.steps, a.max_kv_blocks_used, a.mean_in_system) == \
        (b.steps, b.max_kv_blocks_used, b.mean_in_system)


def pressure(dep, chunked, **kw):
    """Long varied prompts on a GPU whose KV cache holds only a few of them: preemption."""
    dep = {**dep, "gpu": SMALL_GPU, "gpu_memory_utilization": 0.95, "engine": {"preset": "ideal"},
           "scheduler": {"chunked_prefill": chunked, "max_num_batched_tokens": 4096}}
    return scenario_dict([dep], requests=150, arrival={"process": "poisson", "rate_per_s": 50},
                         prompt={"dist": "lognormal", "mean": 1500, "std": 800, "max": 4000},
                         output={"dist": "uniform", "min": 1, "max": 600}, **kw)


SD_ALL = {**SD_8B, "acceptance": {"alpha": 1.0}}
SD_DEDICATED_ALL = {**SD_ALL, "name": "sd-ded", "draft_placement": "dedicated"}
CASES = {
    # deterministic: no sampling in the engine
    "ar-preempt-chunked": pressure(AR_8B, True),
    "ar-preempt-whole-prompts": pressure(AR_8B, False),
    "sd-alpha1": scenario_dict([SD_ALL], requests=150, arrival={"process": "poisson", "rate_per_s": 20}),
    "sd-dedicated-alpha1": scenario_dict([SD_DEDICATED_ALL], requests=150),
    "ar-fixed-closed-2-replicas": scenario_dict(
        [{**AR_8B, "replicas": 2}], requests=200, arrival={"process": "closed", "concurrency": 16}),
    # sampled
    "sd-preempt-chunked": pressure(SD_8B, True),
    "sd-preempt-whole-prompts": pressure(SD_8B, False),
    "sd-heterogeneous-closed-3-replicas": scenario_dict(
        [{**SD_8B, "replicas": 3, "router": "least_outstanding",
          "acceptance": {"alpha": 0.7, "heterogeneity": {"concentration": 8}}}],
        requests=300, arrival={"process": "closed", "concurrency": 30},
        output={"dist": "uniform", "min": 1, "max": 300}),
    "sd-per-position-batch-expansion": scenario_dict(
        [{**SD_8B, "acceptance": {"per_position": [0.9, 0.8, 0.7, 0.6]},
          "engine": {"preset": "vllm-0.6-batch-expansion-cudagraph"}}], requests=150,
        arrival={"process": "poisson", "rate_per_s": 15}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_macro_steps_reproduce_the_reference_loop(name, monkeypatch):
    """Catches any drift of a run from single steps: a step priced with other float operations,
    a clock that adds a run's seconds in another order, a token, round, inter-token gap or
    step-log entry lost or wrong at a run's last step, a KV overflow or peak missed inside a run, an arrival admitted late,
    a random stream that runs ahead of the reference's. Runs as short as 2 steps are planned
    (the default threshold leaves short ones to single steps), so every case has many."""
    monkeypatch.setattr(macro, "MIN_RUN", 2)
    monkeypatch.setattr(macro, "MIN_RUN_PRICEY", 2)
    ref, fast = simulate(CASES[name], False), simulate(CASES[name], True)
    assert_identical(ref, fast)
    assert ref.events == ref.steps
    assert fast.events < ref.steps  # runs happened (not a silent fallback to single steps)
    if "preempt" in name:
        assert ref.preemptions.sum() > 0


def _short_outputs(dep: dict, chunked: bool) -> dict:
    """Outputs of 1..12 tokens: sequences enter with fewer tokens left than the batch's least."""
    dep = {**dep, "scheduler": {"chunked_prefill": chunked}}
    return scenario_dict([dep], requests=200, arrival={"process": "poisson", "rate_per_s": 40},
                         output={"dist": "uniform", "min": 1, "max": 12})


UNIFORM = {**{n: d for n, d in CASES.items() if "alpha1" in n or n.startswith("ar-")},
           **{f"{s}-short-{c}": _short_outputs(d, c == "chunked")
              for s, d in (("ar", AR_8B), ("sd-alpha1", SD_ALL))
              for c in ("chunked", "whole-prompts")}}


@pytest.mark.parametrize("name", list(UNIFORM))
def test_uniform_fast_path_equals_the_general_apply(name, monkeypatch):
    """Steps in which every sequence gets the same tokens (AR, SD alpha = 1) skip per-sequence
    comparisons while none finishes; applying them the general way must give the same records.
    Catches a stale minimum of tokens left (a sequence that enters with few, or one preempted,
    would run past its output), a forgotten accepted-count or round update, a wrong emitted
    count in the step log."""
    from simulator.engine.replica import Replica
    fast = simulate(UNIFORM[name], False)
    monkeypatch.setattr(Replica, "uniform_fast", False)
    assert_identical(simulate(UNIFORM[name], False), fast)


@pytest.mark.parametrize("name", [n for n in CASES if "preempt" in n or "closed" in n])
def test_admission_on_the_bound_equals_exact_counting(name, monkeypatch):
    """With a request waiting and no overflow possible, admission decides on the KV bound and
    counts exactly only when the bound would refuse a request or set a new peak. It must admit
    the same requests and report the same peak as counting exactly every time. Catches a bound
    that refuses a request the exact count admits, and a peak taken from the bound."""
    from simulator.engine.replica import Replica
    fast = simulate(CASES[name], False)
    monkeypatch.setattr(Replica, "bound_admission", False)
    assert_identical(simulate(CASES[name], False), fast)


# Run scenarios (plan files, with a `search:` space instead of deployments, run many of these).
SCENARIOS = sorted(p for p in (ROOT / "scenarios").glob("*.yaml") if "\ndeployments:" in p.read_text())


def _run(path: Path, macro_steps: bool, monkeypatch):
    monkeypatch.setenv("SPECSIM_MACRO_STEPS", "1" if macro_steps else "0")
    sc, base = load_scenario(path)
    wl = sc.workload.model_copy(update={"requests": min(sc.workload.requests, 80)})
    return run_scenario(sc.model_copy(update={"workload": wl}), base)


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_bundled_scenarios_same_outputs_and_distributions(path, monkeypatch):
    """Every bundled scenario (SSD, preemption-free and chunked/non-chunked prefill, profile and
    roofline backends, sweeps): requests.csv and summary.json byte-identical between the loops;
    the distribution checks (means within 1%, KS not rejecting at 1%) are the fallback
    contract should event order at equal times ever differ."""
    outside = [p for p in re.findall(r"path: *([^,}\s]+)", path.read_text())
               if not (path.parent / p).exists()]
    if outside:  # e.g. the Vidur traces under ../shared/data, beside the project, not in it
        pytest.skip(f"needs data beside the project: {outside[0]}")
    ref, fast = _run(path, False, monkeypatch), _run(path, True, monkeypatch)
    a, b = ref.requests, fast.requests
    assert a.to_csv(float_format="%.9g") == b.to_csv(float_format="%.9g")
    assert summary_json(ref) == summary_json(fast)
    for ra, rb in zip(ref.summary["deployments"], fast.summary["deployments"]):
        assert rb["throughput_tokens_per_s"] == pytest.approx(ra["throughput_tokens_per_s"], rel=0.01)
    for c in ("ttft_s", "tpot_s", "e2e_s"):
        x, y = a[c].dropna(), b[c].dropna()
        assert y.mean() == pytest.approx(x.mean(), rel=0.01)
        if c != "ttft_s":
            assert ks_2samp(x, y).pvalue > 0.01


def test_macro_steps_take_far_fewer_events_than_steps():
    """A decode-heavy open-loop SD run (an arrival every ~15 steps): most steps ride in runs.
    Catches a silent fallback to single steps (events == steps), runs cut far too early, and a
    back-off after failed plans that never resets (macro.try_run)."""
    d = scenario_dict([SD_8B], requests=300, arrival={"process": "poisson", "rate_per_s": 2},
                      output={"dist": "fixed", "value": 400})
    rec = simulate(d, True)
    assert rec.events * 3 < rec.steps


def test_ssd_runs_one_step_per_event():
    """SSD's rounds depend on sampled cache hits and its sample() keeps per-round statistics:
    it stays on single steps (the documented fallback)."""
    sc, base = load_scenario(ROOT / "scenarios/ssd-vs-sd-llama70b.yaml")
    i = next(i for i, d in enumerate(sc.deployments) if d.strategy == "ssd")
    dep = resolve(sc.deployments[i], i, base)
    assert not make_strategy(dep).macro_safe


PRICING = {
    "ar-roofline-vllm": AR_8B,
    "ar-ideal-preset": {**AR_8B, "engine": {"preset": "ideal"}},
    "ar-ideal-backend": {**AR_8B, "latency": {"backend": "ideal"}},
    "sd-roofline-vllm": SD_8B,
    "sd-batch-expansion": {**SD_8B, "engine": {"preset": "vllm-0.6-batch-expansion-cudagraph"}},
    "sd-sglang": {**SD_8B, "engine": {"preset": "sglang"}},
    "sd-dedicated": {**SD_8B, "draft_placement": "dedicated"},
    "ar-profile": {**AR_8B, "target": "llama-3.1-70b", "tp": 4, "latency": {"backend": "profile"}},
    "sd-ideal-backend-batch-expansion": {**SD_8B, "latency": {"backend": "ideal"},
                                         "engine": {"preset": "vllm-0.6-batch-expansion-cudagraph"}},
    "sd-profile-batch-expansion": {**SD_8B, "target": "llama-3.1-70b", "tp": 4,
                                   "latency": {"backend": "profile"},
                                   "engine": {"preset": "vllm-0.6-batch-expansion-cudagraph"},
                                   "draft_latency": {"backend": "calibrated"}},
}


@pytest.mark.parametrize("name", list(PRICING))
def test_run_pricing_equals_step_pricing_bit_for_bit(name):
    """Strategy.run_times_many prices a whole run at once; each step must equal step_time's
    seconds exactly (an oracle: the scalar path), and the charged components too. Catches a
    reordered float sum, a constant charged per run instead of per step, a missing vector path
    (None: the run would silently be priced step by step)."""
    dep = resolve(parse_scenario(scenario_dict([PRICING[name]])).deployments[0], 0, ROOT)
    s = make_strategy(dep)
    rng = np.random.default_rng(1)
    for n in (1, 3, 8, 37, 128, 300):
        ctx = rng.integers(16, 4000, n)
        k = 12
        prev = np.cumsum(rng.integers(1, 6, (k, n)), axis=0) - 1
        sums = ctx.sum() + prev.sum(axis=1)
        rb = RunBatch(n, s.query_tokens, sums, (ctx + prev).max(axis=1), lambda j: ctx + prev[j])
        got = s.run_times_many(rb)
        assert got is not None
        dt, charges = np.broadcast_to(got[0], (k,)), got[1]
        for j in range(k):
            s.target_busy, s.draft_busy = [0.0] * 4, [0.0] * 4
            want = s.step_time(StepBatch(s.query_tokens, ctx + prev[j], int(sums[j])), None)
            assert dt[j] == want
            for acc_name, parts in charges.items():
                acc = getattr(s, f"{acc_name}_busy")
                assert [float(np.broadcast_to(p, (k,))[j]) for p in parts] == acc


def test_sleep_lands_on_times_no_single_delay_reaches():
    """0.08776607404386244 + d never rounds to 0.7139725096163995 for any d (a tie that rounds
    to even); the replica's two-hop sleep must still wake at exactly that time."""
    now, t = 0.08776607404386244, 0.7139725096163995
    d = macro.exact_delay(now, t)
    assert now + d != t and all(now + math.nextafter(d, x) != t for x in (0, 1))

    env, woke = simpy.Environment(initial_time=now), []

    def proc():
        yield from macro.sleep_until(env, t)
        woke.append(env.now)

    env.process(proc())
    env.run()
    assert woke == [t]


def test_run_cut_keeps_the_step_in_progress():
    """An arrival at t keeps the steps up to the one running at t; at a step boundary the step
    that would start there is not run (it would have seen the arrival)."""
    r = macro.Run(2, np.ones(4), [1.0, 2.0, 3.0, 4.0], None, {}, True)
    assert r.cut(0.5) == 1 and r.cut(2.0) == 2 and r.cut(2.5) == 3 and r.cut(9.0) == 4


def test_run_threshold_follows_the_pricing_cost():
    """Runs are planned from MIN_RUN expected steps where a step is priced from the batch's sums
    (the roofline's or a mean-context profile's memoised path), from MIN_RUN_PRICEY where the
    generic path prices it (a backend without a fast path, a profile at the longest context).
    Catches the two thresholds swapped or a strategy that reports its draft's pricing wrongly."""
    def strategy(dep):
        sc = parse_scenario(scenario_dict([dep], requests=4))
        return make_strategy(resolve(sc.deployments[0], 0, ROOT))

    assert strategy(AR_8B).cheap_steps and strategy(SD_8B).cheap_steps
    assert strategy(PRICING["ar-profile"]).cheap_steps
    assert not strategy(PRICING["ar-ideal-backend"]).cheap_steps
    assert not strategy({**SD_8B, "draft_latency": {"backend": "ideal"}}).cheap_steps
    assert macro.MIN_RUN_PRICEY < macro.MIN_RUN


@pytest.mark.parametrize("name", ["ar-preempt-chunked", "sd-preempt-whole-prompts", "sd-alpha1",
                                  "sd-heterogeneous-closed-3-replicas"])
def test_kept_context_sum_and_least_tokens_left_match_the_table(name, monkeypatch):
    """The replica keeps its decode table's context sum and least tokens left across steps
    instead of recomputing them. Checked against the table at every step planned, through
    preemption, finishes, entries and runs: catches a cache left stale by any of them (a step
    priced over a wrong context sum, a sequence run past its output)."""
    from simulator.engine.replica import Replica
    from simulator.engine.request_state import CTX, REM
    plan, checked = Replica._plan, [0]

    def checked_plan(self):
        for cached, true in ((self._ctx_sum, lambda: int(self.D[CTX].sum())),
                             (self._rem_min, lambda: int(self.D[REM].min()))):
            if cached is not None and self.D.shape[1]:
                assert cached == true()
                checked[0] += 1
        return plan(self)

    monkeypatch.setattr(Replica, "_plan", checked_plan)
    monkeypatch.setattr(macro, "MIN_RUN", 2)
    simulate(CASES[name], True)
    assert checked[0] > 10
