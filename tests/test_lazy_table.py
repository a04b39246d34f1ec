"""The lazy decode table (simulator/engine/lazy_table.py) against the eager reference loop, and
the per-request trajectories both read (Strategy.rounds, simulator/engine/trajectories.py).

Both tables read the same rounds, drawn when each request starts decoding, so they must give
byte-identical records: sampled and deterministic acceptance, preemption, chunked and whole-prompt
prefill, open and closed loops, several replicas."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from conftest import AR_8B, ROOT, SD_8B, scenario_dict
from simulator.config.loading import load_scenario, parse_scenario
from simulator.config.workload import generate
from simulator.deploy.deployments import resolve
from simulator.engine import macro, trajectories
from simulator.engine.lazy_table import LazyReplica
from simulator.engine.replica import Replica
from simulator.engine.simulation import Simulation
from simulator.engine.strategies import make_strategy
from simulator.physics.acceptance import (expected_tokens_per_round, sample_accepted_same_alpha,
                                          truncated_geometric_cdf)
from test_macro_steps import CASES, assert_identical, pressure, simulate

MORE = {
    **CASES,
    "sd-open-chunked-2-replicas": scenario_dict(
        [{**SD_8B, "replicas": 2, "acceptance": {"alpha": 0.75}}], requests=300,
        arrival={"process": "poisson", "rate_per_s": 30},
        prompt={"dist": "uniform", "min": 50, "max": 3000},
        output={"dist": "uniform", "min": 1, "max": 400}),
    # measured profiles (mean context): Llama-3.1-70B on 2x A100 leaves a small KV cache
    "ar-profile-preempt-chunked": scenario_dict(
        [{**AR_8B, "target": "llama-3.1-70b", "gpu": "a100-80gb-sxm", "tp": 2,
          "latency": {"backend": "profile"},
          "scheduler": {"chunked_prefill": True, "max_num_batched_tokens": 512}}], requests=150,
        arrival={"process": "poisson", "rate_per_s": 4},
        prompt={"dist": "lognormal", "mean": 1000, "std": 600, "max": 2000},
        output={"dist": "uniform", "min": 1, "max": 500}),
    "sd-profile-batch-expansion": scenario_dict(
        [{**SD_8B, "target": "llama-3.1-70b", "tp": 4, "latency": {"backend": "profile"},
          "draft_latency": {"backend": "calibrated"},
          "engine": {"preset": "vllm-0.6-batch-expansion-cudagraph"}}], requests=150,
        arrival={"process": "poisson", "rate_per_s": 10},
        output={"dist": "uniform", "min": 1, "max": 300}),
    "ar-whole-prompts-closed": scenario_dict(
        [{**AR_8B, "scheduler": {"chunked_prefill": False}}], requests=200,
        arrival={"process": "closed", "concurrency": 24},
        output={"dist": "uniform", "min": 1, "max": 200}),
}


SSD_8B = {"name": "ssd", "target": "llama-3.1-8b", "draft": "llama-3.2-1b", "gpu": "h100-sxm",
          "strategy": "ssd", "draft_gpus": 1, "gamma": 4, "acceptance": {"alpha": 0.75}}
SSD_CASES = {  # SSD draws its hits with each request's rounds (jit backup, whole-batch re-draft)
    "ssd-preempt-chunked": pressure(SSD_8B, True),
    "ssd-open-whole-prompts": scenario_dict(
        [{**SSD_8B, "scheduler": {"chunked_prefill": False}}], requests=200,
        arrival={"process": "poisson", "rate_per_s": 20}, output={"dist": "uniform", "min": 1, "max": 300}),
    "ssd-alpha1-closed-2-replicas": scenario_dict(
        [{**SSD_8B, "replicas": 2, "acceptance": {"alpha": 1.0}}], requests=200,
        arrival={"process": "closed", "concurrency": 16}),
}


def _classes(d) -> set[str]:
    """The replica classes the fast engine builds for scenario dict d."""
    sc = parse_scenario(d)
    sim = Simulation(resolve(sc.deployments[0], 0, ROOT), generate(sc.workload, sc.seed, ROOT), 5)
    return {type(r).__name__ for r in sim.replicas}


@pytest.mark.parametrize("runs", [False, True], ids=["steps", "runs"])
@pytest.mark.parametrize("name", list(MORE))
def test_lazy_table_reproduces_the_eager_reference(name, runs, monkeypatch):
    """Catches a finish booked one epoch off, a preempted request whose future tokens or blocks
    stay in the ring (or whose counters keep rounds it did not run), a KV count that drifts from
    the exact one (peak, preemption points), a context sum that misses a leaving row; with runs
    (planned from 2 expected steps, so that every case has many), a run that crosses a finish or
    a KV overflow, a peak or a step log entry lost inside a run."""
    assert _classes(MORE[name]) == {"LazyReplica"}
    ref = simulate(MORE[name], False)
    monkeypatch.setattr(macro, "MIN_RUN", 2 if runs else 10**9)
    lazy = simulate(MORE[name], True, lazy=True)
    assert_identical(ref, lazy)
    assert (lazy.events < lazy.steps) == runs
    if "preempt" in name:
        assert ref.preemptions.sum() > 0


@pytest.mark.parametrize("name", list(SSD_CASES))
def test_lazy_table_reproduces_the_eager_reference_for_ssd(name):
    """SSD on both tables, its hits drawn with each request's rounds: the same records, and the
    same cache statistics (each step's count of misses read from the ring must equal the count
    over the rows' marks). Catches a preempted request whose future misses stay in the ring, a
    miss booked one epoch off, a backup priced over the wrong contexts."""
    assert _classes(SSD_CASES[name]) == {"LazyReplica"}
    sims = []
    for lazy in (False, True):
        sc = parse_scenario(SSD_CASES[name])
        sim = Simulation(resolve(sc.deployments[0], 0, ROOT), generate(sc.workload, sc.seed, ROOT),
                         seed=5, lazy=lazy)
        sims.append((sim, sim.run()))
    (ref_sim, ref), (lazy_sim, lazy) = sims
    assert_identical(ref, lazy)
    for a, b in zip(ref_sim.replicas, lazy_sim.replicas):
        sa, sb = a.strategy, b.strategy
        assert (sa.seq_rounds, sa.seq_hits, sa.step_rounds, sa.cache_rounds, sa.rounds_by_size) == \
            (sb.seq_rounds, sb.seq_hits, sb.step_rounds, sb.cache_rounds, sb.rounds_by_size)
        assert 0 < sa.seq_hits < sa.seq_rounds
    if "preempt" in name:
        assert ref.preemptions.sum() > 0


@pytest.mark.parametrize("name", ["sd-preempt-chunked", "ar-preempt-whole-prompts"])
def test_lazy_sums_equal_the_rows_at_every_step(name, monkeypatch):
    """The ring's context sum and exact KV block count, checked before and after planning every
    step (after its preemptions) against each row's own context (entry context + tokens its
    rounds emitted so far). Catches a preemption that leaves its row's blocks or context in the
    sums (the next decode step would reload the blocks from the ring, hiding it until then)."""
    plan, checked = LazyReplica._plan, [0]

    def check(self):
        e, cq, bs = self.epoch, self._cq, self.bs
        ctx = [w.c0 + w.before(e - w.s) for w in self.rows.values()]
        assert len(ctx) == self.n
        assert sum(ctx) == self.ctx_sum
        assert sum((c + cq) // bs for c in ctx) == self.blocks
        checked[0] += bool(ctx)

    def checked_plan(self):  # before the step, and after its preemptions
        check(self)
        b = plan(self)
        check(self)
        return b

    monkeypatch.setattr(LazyReplica, "_plan", checked_plan)
    simulate(MORE[name], True, lazy=True)
    assert checked[0] > 100


def test_the_fast_engine_picks_the_table_that_applies():
    """Lazy only where steps are priced from sums and outcomes are drawn per request: SSD with
    per-step draws (a fast backup, per-sequence re-drafts), a profile priced at the longest
    context (per-row contexts) and the reference loop stay eager; SSD's default (jit backup,
    whole-batch re-draft) and a mean-context profile go lazy."""
    assert _classes(MORE["sd-alpha1"]) == {"LazyReplica"}
    sc, base = load_scenario(ROOT / "scenarios/ssd-vs-sd-llama70b.yaml")
    for i, d in enumerate(sc.deployments):
        s = make_strategy(resolve(d, i, base))
        assert Simulation._replica(True, s) is LazyReplica
        assert Simulation._replica(False, s) is Replica
    for ssd in ({"backup": "fast"}, {"batch_policy": "per_sequence"},
                {"backup_batch_threshold": 8}):  # SSD drawn per step: eager
        s = make_strategy(resolve(parse_scenario(scenario_dict([{**SSD_8B, "ssd": ssd}])).deployments[0],
                                  0, ROOT))
        assert s.per_step_outcomes and Simulation._replica(True, s) is Replica
    prof = {**SD_8B, "target": "llama-3.1-70b", "tp": 4, "latency": {"backend": "profile"},
            "draft_latency": {"backend": "calibrated"}}
    s = make_strategy(resolve(parse_scenario(scenario_dict([prof])).deployments[0], 0, ROOT))
    assert s.cheap_steps and Simulation._replica(True, s) is LazyReplica
    sc, base = load_scenario(ROOT / "scenarios/cpu-tiny.yaml")  # torch-sdpa-padded: the max
    for i, d in enumerate(sc.deployments):
        s = make_strategy(resolve(d, i, base))
        assert not s.cheap_steps and Simulation._replica(True, s) is Replica


def _strategy(acceptance: dict):
    d = scenario_dict([{**SD_8B, "acceptance": acceptance}])
    return make_strategy(resolve(parse_scenario(d).deployments[0], 0, ROOT))


@pytest.mark.parametrize("acceptance", [{"alpha": 0.6}, {"alpha": 1.0},
                                        {"per_position": [0.9, 0.7, 0.5, 0.3]},
                                        {"alpha": 0.7, "heterogeneity": {"concentration": 5}}])
def test_trajectory_ends_at_the_first_round_reaching_rem(acceptance):
    """Catches a trajectory one round short (the request never finishes) or one round long (a
    round that emits nothing)."""
    s, rng = _strategy(acceptance), np.random.default_rng(1)
    for rem in [1, 2, 5, 6, 7, 64, 500, *rng.integers(1, 3000, 40).tolist()]:
        tok = s.rounds(rng, 0.7, rem)[0]
        cum = np.cumsum(tok)
        assert cum[-1] >= rem and (tok.shape[0] == 1 or cum[-2] < rem)
        assert ((tok >= 1) & (tok <= s.gamma + 1)).all()


def test_pooled_rounds_are_the_stream_in_order():
    """Trajectories of requests that share one alpha are consecutive rounds of one stream, drawn
    POOL at a time: concatenated they equal the stream drawn directly. Catches a round dropped or
    repeated where the pool is refilled, and a pool restarted per request."""
    s, rng = _strategy({"alpha": 0.6}), np.random.default_rng(7)
    got = np.concatenate([s.rounds(rng, 0.6, int(r))[0]
                          for r in np.random.default_rng(3).integers(1, 400, 800)])
    assert got.shape[0] > 2 * s.POOL  # the pool was refilled at least twice
    ref, want = np.random.default_rng(7), []
    while sum(w.shape[0] for w in want) < got.shape[0]:
        want.append(sample_accepted_same_alpha(ref, s.cdf, s.POOL) + 1)
    np.testing.assert_array_equal(got, np.concatenate(want)[:got.shape[0]])


@pytest.mark.parametrize("acceptance", [{"alpha": 0.6}, {"alpha": 0.8, "heterogeneity": {"concentration": 1e6}}])
def test_trajectory_rounds_follow_the_truncated_geometric_law(acceptance):
    """Rounds before a trajectory's last (not conditioned on reaching rem) follow
    P(K = k) = (1 - a) a^k for k < gamma, a^gamma at gamma (Leviathan): chi-square at 1%, and
    the mean within 1% of E[K+1]. Catches a law off by one position or a biased block draw."""
    s, rng = _strategy(acceptance), np.random.default_rng(5)
    a = acceptance["alpha"]
    toks = np.concatenate([s.rounds(rng, a, 300)[0][:-1] for _ in range(1500)])
    k = toks - 1
    p = np.append((1 - a) * a ** np.arange(s.gamma), a ** s.gamma)
    counts = np.bincount(k, minlength=s.gamma + 1)
    assert chisquare(counts, p * counts.sum()).pvalue > 0.01
    assert toks.mean() == pytest.approx(expected_tokens_per_round(a, s.gamma), rel=0.01)
    assert np.allclose(truncated_geometric_cdf(a, s.gamma), np.cumsum(p)[:-1])


def test_trajectory_buffer_packing_changes_nothing(monkeypatch):
    """The eager table's trajectory buffer packs live rounds to its front and doubles when
    needed; with a tiny first size it packs again and again and must give the same records.
    Catches rows whose round offsets are not rebased when the buffer packs."""
    d = MORE["sd-preempt-chunked"]
    ref = simulate(d, False)
    packs = [0]
    pack = trajectories.TrajectoryBuffer._pack

    def counted(self, *a):
        packs[0] += 1
        return pack(self, *a)

    monkeypatch.setattr(trajectories.TrajectoryBuffer, "_pack", counted)
    monkeypatch.setattr(trajectories.TrajectoryBuffer.__init__, "__defaults__", (64,))
    assert_identical(ref, simulate(d, False))
    assert packs[0] > 5


def test_ar_rounds_are_shared_read_only_views():
    """AR's rounds are one token each, as views of arrays every request shares (nothing drawn):
    one per token and their running sums, across a growth of the shared arrays; writing into them
    raises, so a table that mutated a request's rounds in place (and with them every other
    request's) would fail here rather than corrupt a run."""
    sc = parse_scenario(scenario_dict([AR_8B]))
    s, rng = make_strategy(resolve(sc.deployments[0], 0, ROOT)), np.random.default_rng(0)
    state = rng.bit_generator.state
    for rem in (1, 7, 3, 5000, 2, 20000):
        tok, before = s.rounds(rng, float("nan"), rem)
        np.testing.assert_array_equal(tok, np.ones(rem, np.int64))
        np.testing.assert_array_equal(before, np.arange(rem + 1))
        with pytest.raises(ValueError):
            tok[0] = 2
        with pytest.raises(ValueError):
            before += 1
    assert rng.bit_generator.state == state  # nothing drawn
