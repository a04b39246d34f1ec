"""The bound step pricing (simulator/latency/pricing.py) against latency/base.py's generic path.

The roofline's fast path memoises what does not depend on the context sum and recomputes
attention with the generic path's float operations; every step's seconds and every charged
component must equal the generic path's bit for bit, over random decode-only and mixed batches,
AR and SD (draft_first_q 1 and 2), several engine presets, the roofline, calibrated, ideal and
profile backends. Catches a memo keyed without a shape term (q, n_logits, the draft's step
count, the step's token count), batch expansion's rows forgotten, a term added in another
order (the sampling and proposer terms summed first), max(0, cpu - gpu) dropped, a padding or
launch constant taken from the wrong branch. Each of these was made on purpose and failed here.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
import pytest

from conftest import AR_8B, ROOT, SD_8B, scenario_dict
from simulator.config.loading import parse_scenario
from simulator.deploy.deployments import resolve
from simulator.engine.strategies import StepBatch, make_strategy
from simulator.engine.strategies import base as strategies_base
from simulator.engine.strategies import sd as strategies_sd
from simulator.latency import pricing
from simulator.latency.base import decode_steps, forward_batch, step_overhead

SD_70B = {**SD_8B, "target": "llama-3.1-70b", "tp": 4, "gamma": 5}
AR_70B = {**AR_8B, "target": "llama-3.1-70b", "tp": 4}
CASES = {  # name -> (deployment, the pricer the target gets)
    "ar-vllm": (AR_8B, pricing.RooflinePricer),
    "ar-70b-tp4-vllm": (AR_70B, pricing.RooflinePricer),
    "ar-sglang": ({**AR_70B, "engine": {"preset": "sglang"}}, pricing.RooflinePricer),
    "ar-ideal-preset": ({**AR_8B, "engine": {"preset": "ideal"}}, pricing.RooflinePricer),
    "ar-ideal-backend": ({**AR_8B, "latency": {"backend": "ideal"}}, pricing.GenericPricer),
    "ar-profile": ({**AR_70B, "latency": {"backend": "profile"}}, pricing.ProfilePricer),
    "ar-profile-bare": ({**AR_70B, "latency": {"backend": "profile"}, "engine": {"preset": "ideal"}},
                        pricing.ProfilePricer),
    "sd-vllm": (SD_8B, pricing.RooflinePricer),
    "sd-70b-tp4-vllm": (SD_70B, pricing.RooflinePricer),
    "sd-70b-calibrated": ({**SD_70B, "latency": {"backend": "calibrated"}}, pricing.RooflinePricer),
    "sd-sglang": ({**SD_70B, "engine": {"preset": "sglang"}}, pricing.RooflinePricer),
    "sd-batch-expansion": ({**SD_70B, "engine": {"preset": "vllm-0.6-batch-expansion-cudagraph"}},
                           pricing.RooflinePricer),
    "sd-dedicated": ({**SD_70B, "draft_placement": "dedicated"}, pricing.RooflinePricer),
    "sd-ideal-preset": ({**SD_70B, "engine": {"preset": "ideal"}}, pricing.RooflinePricer),
    "sd-profile": ({**SD_70B, "latency": {"backend": "profile"},
                    "draft_latency": {"backend": "calibrated"}}, pricing.ProfilePricer),
    "sd-profile-both": ({**SD_70B, "draft": "llama-2-7b-hf", "latency": {"backend": "profile"},
                         "draft_latency": {"backend": "profile"}}, pricing.ProfilePricer),
    "sd-profile-batch-expansion": ({**SD_70B, "latency": {"backend": "profile"},
                                    "draft_latency": {"backend": "calibrated"},
                                    "engine": {"preset": "vllm-0.6-batch-expansion-cudagraph"}},
                                   pricing.ProfilePricer),
}


class Reference:
    """latency/base.py's definitions bound to a model, nothing memoised: the oracle."""

    from_sums = False

    def __init__(self, model):
        self.forward_batch = partial(forward_batch, model)
        self.decode_steps = partial(decode_steps, model)
        self.step_overhead = partial(step_overhead, model)


def bits(t) -> bytes:
    return np.asarray(t, dtype=float).tobytes()


def deployment(d: dict, first_q: int = 1):
    dep = resolve(parse_scenario(scenario_dict([d])).deployments[0], 0, ROOT)
    return dataclasses.replace(dep, draft_first_q=first_q) if dep.draft is not None else dep


def batches(rng, qs, count: int):
    """Random step batches of q_dec drawn from qs: few shapes (so memoised entries are hit again
    with other contexts), decode-only and with 1-3 prefill chunks, some with no decoding
    sequence."""
    shapes = [int(n) for n in rng.choice([0, 1, 3, 8, 37, 55, 128, 300], 5)]
    for _ in range(count):
        n = shapes[rng.integers(len(shapes))]
        ctx = rng.integers(2, 8000, n).astype(np.int64)
        k = int(rng.integers(0, 4)) if n else int(rng.integers(1, 4))
        pre_q = [int(x) for x in rng.integers(1, 2049, k)]
        pre_ctx = [int(x) for x in rng.integers(0, 4000, k)]
        yield StepBatch(int(rng.choice(qs)), ctx, int(ctx.sum()), pre_q, pre_ctx,
                        int(rng.integers(0, k + 1)))


@pytest.mark.parametrize("name", list(CASES))
def test_bound_pricing_equals_the_generic_path_bit_for_bit(name):
    """Each backend call of a step, through step_pricer and through latency/base.py (for every
    backend: the engine's step cost is memoised for the profile too)."""
    d, kind = CASES[name]
    dep = deployment(d)
    assert type(pricing.step_pricer(dep.target_latency)) is kind  # the path under test is taken
    rng = np.random.default_rng(7)
    for model in (dep.target_latency, dep.draft_latency):
        if model is None:
            continue
        p = pricing.step_pricer(model)  # one pricer sees every shape, as a strategy's does
        for b in batches(rng, (1, 2, 1 + dep.gamma), 400):
            q_dec, n = b.q_dec, b.n_dec
            logits = int(rng.choice([n, n * q_dec])) + b.n_pre_done  # one per sequence, or q
            shift = int(rng.integers(0, 2))
            args = (q_dec, b.dec_ctx, b.dec_ctx_sum, b.pre_q, b.pre_ctx, logits, shift)
            assert bits(p.forward_batch(*args)) == bits(forward_batch(model, *args))
            if n:
                steps, start = int(rng.integers(1, 7)), int(rng.integers(0, 2))
                args = (b.dec_ctx, steps, int(rng.choice([n, 2 * n])), b.dec_ctx_sum, start)
                assert bits(p.decode_steps(*args)) == bits(decode_steps(model, *args))
            n_verify, gamma = (n, q_dec - 1) if q_dec > 1 else (0, 0)
            shape = (n + len(b.pre_q), n * q_dec + sum(b.pre_q), logits, n_verify, gamma)
            cpu = step_overhead(model, *shape, 0.0)
            for gpu in (0.0, cpu / 2, cpu, float(rng.uniform(0, 0.05)), 1.0):
                assert bits(p.step_overhead(*shape, gpu)) == bits(step_overhead(model, *shape, gpu))


@pytest.mark.parametrize("name", list(CASES))
def test_strategy_steps_and_charges_equal_the_generic_path(name, monkeypatch):
    """Strategy.step_time through the bound pricing and through a strategy built on the generic
    path: the same seconds and the same target_busy / draft_busy, step after step (SD with the
    draft's first forward of 1 and of 2 query tokens)."""
    d, kind = CASES[name]
    for first_q in (1, 2) if "draft" in d else (1,):
        dep = deployment(d, first_q)
        fast = make_strategy(dep)
        with monkeypatch.context() as m:
            for module in (strategies_base, strategies_sd):
                m.setattr(module, "step_pricer", Reference)
            ref = make_strategy(dep)
        assert isinstance(ref._target_forward, partial)  # the reference is the generic path
        assert isinstance(fast._target_forward, partial) == (kind is pricing.GenericPricer)
        rng = np.random.default_rng(11)
        for b in batches(rng, (fast.query_tokens,), 300):
            assert bits(fast.step_time(b, None)) == bits(ref.step_time(b, None))
            assert bits(fast.target_busy) == bits(ref.target_busy)
            assert bits(fast.draft_busy) == bits(ref.draft_busy)


def test_ssd_steps_and_charges_equal_the_generic_path(monkeypatch):
    """SSD's step (verify, pre-speculation over its branch tree, backups) through the bound
    pricing, which prices the tree's branches from their count and context sum without building
    their contexts, and through the generic path over the built contexts: the same seconds and
    charges for the same sampled outcomes. Catches a branch sum that forgets the offsets, or
    counts the sequences instead of their branches."""
    from simulator.config.loading import load_scenario
    from simulator.engine.strategies import ssd as strategies_ssd
    sc, base = load_scenario(ROOT / "scenarios/ssd-vs-sd-llama70b.yaml")
    i = next(i for i, d in enumerate(sc.deployments) if d.strategy == "ssd")
    dep = resolve(sc.deployments[i], i, base)
    fast = make_strategy(dep)
    with monkeypatch.context() as m:
        for module in (strategies_base, strategies_sd):
            m.setattr(module, "step_pricer", Reference)
        ref = make_strategy(dep)
    assert fast._cheap_draft and not ref._cheap_draft
    assert strategies_ssd.SSDStrategy.prespeculation  # the path under test
    rng, r1, r2 = np.random.default_rng(5), np.random.default_rng(9), np.random.default_rng(9)
    for b in batches(rng, (fast.query_tokens,), 300):
        if not b.n_dec:
            continue
        alpha = np.full(b.n_dec, 0.7)
        out_fast, out_ref = fast.sample(r1, alpha), ref.sample(r2, alpha)
        assert bits(fast.step_time(b, out_fast)) == bits(ref.step_time(b, out_ref))
        assert bits(fast.target_busy) == bits(ref.target_busy)
        assert bits(fast.draft_busy) == bits(ref.draft_busy)
