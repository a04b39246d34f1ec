"""Scheduler key `max_prefills_per_step`: at most that many sequences prefill in one engine step."""
import numpy as np
import pytest

from conftest import AR_8B, ROOT, SD_8B, scenario_dict
from simulator.deploy.deployments import resolve
from simulator.engine.simulation import Simulation
from simulator.errors import SpecsimError
from simulator.config.loading import parse_scenario
from simulator.config.workload import generate

C = 6


def _run(dep, scheduler, *, requests=C, prompt=256):
    d = scenario_dict([{**dep, "scheduler": scheduler}], requests=requests,
                      arrival={"process": "closed", "concurrency": C},
                      prompt={"dist": "fixed", "value": prompt}, output={"dist": "fixed", "value": 16})
    sc = parse_scenario(d)
    dep_r = resolve(sc.deployments[0], 0, ROOT)
    req = generate(sc.workload, sc.seed, ROOT)
    return Simulation(dep_r, req, seed=5).run(), req


@pytest.mark.parametrize("dep", [AR_8B, SD_8B], ids=["ar", "sd"])
@pytest.mark.parametrize("chunked", [False, True])
def test_one_prefill_per_step_staggers_ttft(dep, chunked):
    """C identical prompts arrive together: with the limit 1 their first tokens come one
    prefill apart (a prefill-only step each); without it they all share one step."""
    base = {"chunked_prefill": chunked, "max_num_batched_tokens": 8192}
    one, req = _run(dep, {**base, "max_prefills_per_step": 1})
    ttft = np.sort(one.first_token - one.arrival)
    gaps = np.diff(ttft)
    assert (gaps > 0).all()  # strictly staggered, one request per step
    if not chunked:  # prefill-only steps of identical prompts: identical gaps
        assert np.allclose(gaps, gaps[0], rtol=1e-6)
        assert np.isclose(ttft[0], gaps[0], rtol=1e-6)  # the first one waited for nothing
    free, _ = _run(dep, base)
    t_free = free.first_token - free.arrival
    assert np.allclose(t_free, t_free[0])  # default: one batched prefill step for all of them
    assert ttft[-1] > t_free.max()
    assert np.isfinite(one.finish).all() and (one.round_tokens + 1 == req.output).all()


def test_limit_above_arrivals_changes_nothing():
    """A limit no step reaches gives exactly the unlimited schedule (default unchanged)."""
    sch = {"chunked_prefill": False}
    a, _ = _run(AR_8B, sch, requests=40)
    b, _ = _run(AR_8B, {**sch, "max_prefills_per_step": C}, requests=40)
    for f in ("first_token", "finish"):
        assert np.array_equal(getattr(a, f), getattr(b, f))


def test_chunked_limit_two_with_small_budget():
    """Chunked prefill with budget < prompt and limit 2: every prompt still completes and at
    most two sequences are ever mid-prefill together (TTFTs come in pairs at most)."""
    rec, req = _run(AR_8B, {"chunked_prefill": True, "max_num_batched_tokens": 300,
                            "max_prefills_per_step": 2}, requests=12, prompt=500)
    assert np.isfinite(rec.finish).all()
    first = rec.first_token[:C]
    _, counts = np.unique(np.round(first, 12), return_counts=True)
    assert counts.max() <= 2


def test_schema_rejects_non_positive():
    d = scenario_dict([{**AR_8B, "scheduler": {"max_prefills_per_step": 0}}])
    with pytest.raises((SpecsimError, ValueError)):
        parse_scenario(d)
