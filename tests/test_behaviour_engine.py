"""Engine behaviour against hand-computed timelines: preemption (recompute length, resume order,
KV freed) and routing (round robin, least outstanding).

Every scenario uses a toy model on a toy GPU with the `ideal` latency backend, so that every
forward pass costs exactly 1 s (2 * params / peak FLOPs = 2 * 1e6 / 2e6) whatever its batch,
and a KV cache sized to a chosen number of tokens (block_size 1, no activation reserve,
gpu_memory_utilization 1). With AR a decoding row holding c tokens needs c + 1 slots for its
step. The expected timelines in the docstrings were worked out by hand from the scheduling
rules in the engine's docstring (vLLM v1: decodes first, then partial prefills, then FCFS
admissions; preempt the most recently admitted; no admissions in a step that preempted).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

# Public entry points only (the lead remaps these two imports when the layout changes).
from simulator.run.runner import run_scenario
from simulator.config.loading import parse_scenario

from conftest import ROOT

# Toy model: 592 parameters of weights (1184 bytes in bf16), 32 KV bytes per token; `params`
# (1e6) only sets the ideal backend's FLOPs.
TOY = {"name": "toy", "n_layers": 1, "hidden": 8, "n_heads": 1, "n_kv_heads": 1, "head_dim": 8,
       "ffn": 8, "vocab": 8, "params": 1e6}
WEIGHT_BYTES, KV_BYTES = 1184, 32
STEP_S = 1.0  # 2 * 1e6 FLOPs / (2e-6 TFLOP/s * 1e12)


def toy_gpu(kv_tokens: int) -> dict:
    """An inline GPU whose whole HBM is the toy's weights plus kv_tokens of KV (+ half a token
    against float rounding)."""
    hbm = (WEIGHT_BYTES + KV_BYTES * kv_tokens + KV_BYTES / 2) / 1e9
    return {"name": "toy-gpu", "hbm_gb": hbm, "bandwidth_tbps": 1.0, "bf16_tflops": 2e-6}


def toy_scenario(*, kv_tokens=1000, requests=2, arrival=None, prompt=4, output=8,
                 budget=16, max_seqs=256, replicas=1, router="round_robin", output_dist=None):
    dep = {"name": "toy", "target": TOY, "gpu": toy_gpu(kv_tokens), "strategy": "ar",
           "replicas": replicas, "router": router, "latency": {"backend": "ideal"},
           "activation_reserve_gb": 0, "gpu_memory_utilization": 1.0,
           "scheduler": {"block_size": 1, "max_num_batched_tokens": budget,
                         "max_num_seqs": max_seqs, "chunked_prefill": True}}
    return {"name": "toy", "seed": 1,
            "workload": {"requests": requests,
                         "arrival": arrival or {"process": "closed", "concurrency": requests},
                         "prompt_tokens": {"dist": "fixed", "value": prompt},
                         "output_tokens": output_dist or {"dist": "fixed", "value": output}},
            "deployments": [dep]}


def run(d: dict):
    res = run_scenario(parse_scenario(copy.deepcopy(d)), ROOT)
    row = res.summary["deployments"][0]
    return row, res.requests.sort_values("request_id").reset_index(drop=True)


def test_toy_setup_is_what_the_hand_timelines_assume():
    """One request alone: 1 s prefill (first token) + 7 one-second decode steps."""
    row, t = run(toy_scenario(requests=1))
    assert row["config"]["memory"]["kv_capacity_tokens"] == 1000
    assert t.first_token_s.tolist() == [1.0] and t.finish_s.tolist() == [8.0]
    row, _ = run(toy_scenario(kv_tokens=12, requests=1))
    assert row["config"]["memory"]["kv_capacity_tokens"] == 12


def test_recompute_covers_prompt_and_generated_tokens():
    """Prompt 4, output 8, KV 12 tokens, token budget 5; A and B issued at t=0.

    t0: A prefills 4, B its first 1. t1: A decodes (5 slots), B prefills 3 more. t2: A(ctx5)+B(ctx4)
    decode: 6+5 = 11 slots. t3: 7+6 = 13 > 12 -> B (generated 2) is preempted; its recompute is
    4 + 2 = 6 tokens. t4: A (8 slots) + B's first chunk of 4 = 12: admitted. t5: A 9 + B 6 = 15 ->
    B (mid-recompute) preempted again. A finishes at t8. t8: B recomputes 5 (budget), t9: the last
    1 -> token 3 at t10; tokens 4..8 at t11..t15. Re-prefilling only the prompt (4 tokens, one
    chunk) would finish B at t14.
    """
    row, t = run(toy_scenario(kv_tokens=12, budget=5))
    assert t.first_token_s.tolist() == [1.0, 2.0]
    assert t.finish_s.tolist() == [8.0, 15.0]
    assert t.preemptions.tolist() == [0, 2]
    assert row["kv_peak_fraction"] == 1.0  # 12 of 12 at t2->t3 and t4->t5, never more
    assert row["output_tokens"] == 16


def test_preempted_request_resumes_before_newer_waiting_ones():
    """Prompt 4, output 8, KV 12, max_num_seqs 2: A, B and C issued at t=0; C waits for a seat.

    t0: A, B prefill (8 slots). t1, t2: both decode (10, 12 slots). t3: 14 > 12 -> B (generated 3,
    recompute 7) preempted, back at the FRONT of the queue: [B, C]. t4..t7: A alone (8..11 slots);
    B (7 slots) does not fit beside it and C may not jump ahead of B (FCFS). A finishes at t8;
    t8: B (7) and C (4) admitted together; t9: B ctx 7 (8 slots) + C ctx 4 (5) = 13 -> C, the
    newest, preempted (recompute 5). B finishes at t13; C recomputes at t13 (token 2 at t14) and
    finishes at t20. With B at the back of the queue, C would be admitted at t4 (first token t5).
    """
    row, t = run(toy_scenario(kv_tokens=12, requests=3, max_seqs=2))
    assert t.first_token_s.tolist() == [1.0, 1.0, 9.0]
    assert t.finish_s.tolist() == [8.0, 13.0, 20.0]
    assert t.preemptions.tolist() == [0, 1, 1]
    assert row["preemptions"] == 2


def test_kv_freed_on_preemption_and_completion():
    """The same timeline seen through KV: A keeps decoding alone right after B's preemption
    (possible only if B's 6 slots were freed), never over the 12 slots, and a run whose peak
    demand is three times the cache still completes every request with its full length."""
    row, t = run(toy_scenario(kv_tokens=12, requests=3, max_seqs=2))
    assert row["kv_peak_fraction"] == 1.0
    # A's tokens 4..8 at t4..t8, one per step with no gap: B's KV was released at t3.
    assert t.loc[0, "finish_s"] - t.loc[0, "first_token_s"] == 7 * STEP_S
    row, t = run(toy_scenario(kv_tokens=12, requests=9, max_seqs=9))
    assert row["requests_completed"] == 9 and row["output_tokens"] == 9 * 8
    assert row["kv_peak_fraction"] <= 1.0 and row["preemptions"] > 0


def test_round_robin_alternates_replicas():
    arrival = {"process": "constant", "rate_per_s": 0.1}
    _, t = run(toy_scenario(requests=6, replicas=2, arrival=arrival))
    assert t.replica.tolist() == [0, 1, 0, 1, 0, 1]
    _, t = run(toy_scenario(requests=7, replicas=3, arrival=arrival))
    assert t.replica.tolist() == [0, 1, 2, 0, 1, 2, 0]


@pytest.fixture
def long_then_short(tmp_path):
    """Output lengths 100, 2, 2, 2, 2, 2 (a trace column): request 0 occupies its replica for
    100 s while one short request arrives every 10 s."""
    p = tmp_path / "lengths.csv"
    p.write_text("out\n100\n2\n2\n2\n2\n2\n")
    return {"dist": "trace", "path": str(p), "column": "out"}


def test_least_outstanding_balances_unequal_loads(long_then_short):
    """Constant arrivals every 10 s on two replicas. Request 0 (100 tokens) goes to replica 0
    (a tie: the first); every later request finds replica 0 busy (1 outstanding) and replica 1
    empty (its previous request finished 2 s after arriving), so goes to replica 1 and takes
    exactly 2 s (prefill + one decode). Round robin would queue requests 2 and 4 behind it."""
    arrival = {"process": "constant", "rate_per_s": 0.1}
    d = toy_scenario(requests=6, replicas=2, arrival=arrival, router="least_outstanding",
                     output_dist=long_then_short)
    _, t = run(d)
    assert t.replica.tolist() == [0, 1, 1, 1, 1, 1]
    assert t.e2e_s.tolist() == [100.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    d["deployments"][0]["router"] = "round_robin"
    _, rr = run(d)
    assert rr.replica.tolist() == [0, 1, 0, 1, 0, 1]
    assert rr.e2e_s.max() == 100.0


def test_least_outstanding_spreads_a_burst_evenly():
    """Six requests issued at once to three idle replicas: two each (ties go to the lowest
    index, so the assignment is 0, 1, 2, 0, 1, 2)."""
    _, t = run(toy_scenario(requests=6, replicas=3, router="least_outstanding"))
    assert t.replica.tolist() == [0, 1, 2, 0, 1, 2]
    assert np.bincount(t.replica).tolist() == [2, 2, 2]
