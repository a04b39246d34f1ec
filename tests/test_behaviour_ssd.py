"""SSD round time and draft-busy accounting against hand-computed cases (MODEL.md section 4;
simulator/ssd.py's docstring gives the reading of the reference implementation):

- every sequence hits:           max(T_verify, T_pre) + T_h;   draft busy T_pre
- per_sequence, some hits:       max(T_verify, T_pre) + T_backup(misses) + T_h
- whole batch re-drafted (miss): T_verify + T_backup(all) + T_h; draft busy min(T_pre, T_verify)
                                 + T_backup (the draft drops its tree when the verify result lands)

with T_pre = glue forward + gamma tree-decode steps. Latencies are constant per forward (a
stub backend, and the `ideal` backend end to end), so each case is a few additions.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

# Internals (strategy objects; remap here when the layout changes) and the public runner.
from simulator.run.runner import run_scenario
from simulator.config.loading import parse_scenario
from simulator.engine.strategies.ssd import SSDOutcome, SSDStrategy
from simulator.physics.handshake import Handshake
from simulator.engine.strategies.base import StepBatch

from conftest import ROOT

GAMMA = 2


class ConstLatency:
    """Every forward costs `t` seconds (all of it 'linear'), whatever the batch."""

    source = "law"
    step_overhead_s = 0.0

    def __init__(self, t: float):
        self.t = t

    def forward(self, q, ctx, n_logits):
        return np.array([self.t, 0.0, 0.0, 0.0])

    def decode_steps(self, ctx, steps, n_logits, ctx_sum=None, start=0):
        return np.array([self.t * steps, 0.0, 0.0, 0.0])


def strategy(t_verify: float, t_draft: float, policy: str, backup: str = "jit") -> SSDStrategy:
    return SSDStrategy(ConstLatency(t_verify), ConstLatency(t_draft), GAMMA,
                       np.full(GAMMA + 1, 3), 2.0, Handshake(0.1), batch_policy=policy,
                       backup=backup, alpha=0.8)


def outcome(hit, redraft, fast=False):
    k = np.full(len(hit), GAMMA)
    tokens = np.where(redraft, 1, k + 1) if fast else k + 1
    return SSDOutcome(tokens, k, np.asarray(hit), np.asarray(redraft), fast)


BATCH = StepBatch.decoding(GAMMA + 1, np.array([10, 20]))


def draft_busy(s: SSDStrategy) -> float:
    return float(sum(s.draft_busy))


# (T_verify, T_draft): T_pre = T_draft (glue) + GAMMA * T_draft (tree) = 3 T_draft.
SLOW_DRAFT = (1.0, 0.5)  # T_pre 1.5 > T_verify
FAST_DRAFT = (1.0, 0.2)  # T_pre 0.6 < T_verify


@pytest.mark.parametrize("tv,td,expected", [(*SLOW_DRAFT, 1.5 + 0.1), (*FAST_DRAFT, 1.0 + 0.1)])
def test_all_hit_round_is_max_of_verify_and_prespeculation(tv, td, expected):
    s = strategy(tv, td, "per_sequence")
    assert s.step_time(BATCH, outcome([True, True], [False, False])) == pytest.approx(expected)
    assert draft_busy(s) == pytest.approx(3 * td)


@pytest.mark.parametrize("tv,td,expected", [
    (*SLOW_DRAFT, 1.5 + 2 * 0.5 + 0.1),  # max(1, 1.5) + backup of the one miss (gamma steps) + T_h
    (*FAST_DRAFT, 1.0 + 2 * 0.2 + 0.1),
])
def test_partial_hit_round_keeps_max_of_verify_and_prespeculation(tv, td, expected):
    """per_sequence, one hit and one miss: the hit's draft comes from the tree, so the round
    waits for max(T_verify, T_pre) before the miss's backup; the tree is not truncated."""
    s = strategy(tv, td, "per_sequence")
    assert s.step_time(BATCH, outcome([True, False], [False, True])) == pytest.approx(expected)
    assert draft_busy(s) == pytest.approx(3 * td + 2 * td)


@pytest.mark.parametrize("tv,td,busy", [
    (*SLOW_DRAFT, 1.0 + 2 * 0.5),  # the tree is cut at T_verify = 1.0 (of 1.5), then the backup
    (*FAST_DRAFT, 0.6 + 2 * 0.2),  # the tree finished before the verify: all of it counts
])
def test_batch_miss_round_truncates_draft_busy_at_verify(tv, td, busy):
    """all_or_nothing with a miss: every sequence is re-drafted after the verify (T_v + T_b + T_h)
    and the draft was busy only until the verify result arrived."""
    s = strategy(tv, td, "all_or_nothing")
    t = s.step_time(BATCH, outcome([True, False], [True, True]))
    assert t == pytest.approx(tv + GAMMA * td + 0.1)
    assert draft_busy(s) == pytest.approx(busy)


def test_fast_backup_miss_costs_no_draft_time():
    s = strategy(*SLOW_DRAFT, "all_or_nothing", backup="fast")
    t = s.step_time(BATCH, outcome([False, False], [True, True], fast=True))
    assert t == pytest.approx(1.0 + 0.1)
    assert draft_busy(s) == pytest.approx(1.0)  # the truncated tree only


# ---- end to end: one request, every round a batch miss ------------------------------------------
TOY = {"n_layers": 1, "hidden": 8, "n_heads": 1, "n_kv_heads": 1, "head_dim": 8, "ffn": 8,
       "vocab": 8}
GPU = {"name": "toy-gpu", "hbm_gb": 10, "bandwidth_tbps": 1.0, "bf16_tflops": 2e-6}


def ssd_scenario(handshake_s=0.1):
    """Target forward 1 s, draft forward 0.5 s (ideal backend: 2 params / 2e6 FLOP/s). Fan-out 1
    at every stopping point gives P(hit) = 1 - 1^-r = 0 and alpha = 1 accepts all gamma = 2
    tokens, so every round is a jit-backup miss yielding 3 tokens."""
    dep = {"name": "ssd", "strategy": "ssd", "gpu": GPU, "gamma": GAMMA,
           # the target's MLP is wider so that the draft is the lighter model in weight bytes
           "target": {"name": "toy-t", **TOY, "ffn": 16, "params": 1e6},
           "draft": {"name": "toy-d", **TOY, "params": 5e5},
           "acceptance": {"alpha": 1.0}, "handshake_s": handshake_s,
           "ssd": {"fanout": {"policy": "uniform", "f": 1}, "batch_policy": "all_or_nothing",
                   "backup": "jit"},
           "latency": {"backend": "ideal"}, "activation_reserve_gb": 0}
    return {"name": "ssd", "seed": 1,
            "workload": {"requests": 1, "arrival": {"process": "closed", "concurrency": 1},
                         "prompt_tokens": {"dist": "fixed", "value": 4},
                         "output_tokens": {"dist": "fixed", "value": 7}},
            "deployments": [dep]}


def test_ssd_batch_miss_end_to_end():
    """Prefill: both GPUs at once, max(1, 0.5) = 1 s (draft busy 0.5). Each of the two rounds:
    T_v 1 + backup 2 x 0.5 + handshake 0.1 = 2.1 s; draft busy min(T_pre 1.5, T_v 1) + 1 = 2.
    Finish 1 + 2 x 2.1 = 5.2 s; draft busy 0.5 + 2 x 2 = 4.5 s, a fraction 4.5 / 5.2."""
    res = run_scenario(parse_scenario(copy.deepcopy(ssd_scenario())), ROOT)
    row = res.summary["deployments"][0]
    t = res.requests
    assert t.first_token_s.tolist() == [1.0]
    assert t.finish_s.tolist() == pytest.approx([5.2])
    assert t.rounds.tolist() == [2]
    assert row["cache_hit_rate"] == 0.0
    assert row["busy_breakdown_s"]["draft_linear"] == pytest.approx(4.5)
    assert row["draft_gpu_busy_fraction"] == pytest.approx(4.5 / 5.2)
    assert row["draft_gpu_busy_fraction"] <= 1.0
