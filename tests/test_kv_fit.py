"""The fit check and the engine size a request's KV the same way (simulator/deploy/kv_blocks.py):
a request that passes the check runs within the cache, and the check's bound is exact (the
engine reaches it). Issue 15: with one request nearly filling the cache and a large gamma the
engine used 71 of 70 blocks, because the check sized a request as length + gamma while the
engine reserves context + query + lookahead (= context + 2 gamma + 1 for SD) per decoding row.

Toy model on a toy GPU (ideal backend), KV sized to a chosen number of tokens; alpha tiny so
that every round emits one token and the row reaches its last, largest reservation.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from simulator.config.loading import parse_scenario
from simulator.deploy.kv_blocks import request_peak_blocks
from simulator.errors import SpecsimError
from simulator.run.runner import run_scenario

from conftest import ROOT

TOY = {"name": "toy", "n_layers": 1, "hidden": 8, "n_heads": 1, "n_kv_heads": 1, "head_dim": 8,
       "ffn": 8, "vocab": 8, "params": 1e6}
WEIGHT_BYTES, KV_BYTES = 1184, 32
DRAFT_WEIGHT_BYTES = 992  # the draft's MLP is narrower (ffn 4): it must be the lighter model


def scenario(strategy: str, kv_tokens: int, block_size: int, gamma: int = 8) -> dict:
    n = 1 if strategy == "ar" else 2  # a colocated draft holds its own weights and KV
    weights = WEIGHT_BYTES + (DRAFT_WEIGHT_BYTES if strategy == "sd" else 0)
    hbm = (weights + n * KV_BYTES * kv_tokens + KV_BYTES / 2) / 1e9
    dep = {"name": "d", "strategy": strategy, "target": TOY,
           "gpu": {"name": "toy-gpu", "hbm_gb": hbm, "bandwidth_tbps": 1.0, "bf16_tflops": 2e-6},
           "latency": {"backend": "ideal"}, "activation_reserve_gb": 0,
           "gpu_memory_utilization": 1.0, "scheduler": {"block_size": block_size}}
    if strategy == "sd":
        dep.update(draft={**TOY, "name": "toy-draft", "ffn": 4, "params": 2e5}, gamma=gamma,
                   acceptance={"alpha": 1e-6})
    return {"name": "kv", "seed": 1,
            "workload": {"requests": 1, "arrival": {"process": "closed", "concurrency": 1},
                         "prompt_tokens": {"dist": "fixed", "value": 50},
                         "output_tokens": {"dist": "fixed", "value": 42}},
            "deployments": [dep]}


# Peak reservation of prompt 50 + output 42: at the last decode step the cache holds 90 tokens;
# AR adds 1 query slot (91), SD gamma 8 adds 9 query + 8 lookahead slots (107).
CASES = [("ar", 1, 91), ("sd", 1, 107), ("sd", 16, 112)]


def test_peak_blocks_closed_form():
    p, o = np.array([50, 50, 7]), np.array([42, 1, 2])
    assert request_peak_blocks(p, o, 0, 1).tolist() == [91, 50, 8]
    assert request_peak_blocks(p, o, 8, 1).tolist() == [107, 50, 24]
    assert request_peak_blocks(p, o, 8, 16).tolist() == [7, 4, 2]


@pytest.mark.parametrize("strategy,block_size,tokens", CASES)
def test_exact_fit_runs_and_fills_the_cache(strategy, block_size, tokens):
    """A cache of exactly the peak runs, and the engine reaches it (kv_peak_fraction 1)."""
    res = run_scenario(parse_scenario(copy.deepcopy(scenario(strategy, tokens, block_size))), ROOT)
    row = res.summary["deployments"][0]
    assert row["config"]["memory"]["kv_capacity_tokens"] == tokens
    assert row["requests_completed"] == 1
    assert row["kv_peak_fraction"] == 1.0


@pytest.mark.parametrize("strategy,block_size,tokens", CASES)
def test_one_block_short_is_refused_by_the_fit_check(strategy, block_size, tokens):
    d = scenario(strategy, tokens - 1, block_size)
    with pytest.raises(SpecsimError, match=r"deployments\[0\]: .*KV blocks"):
        run_scenario(parse_scenario(d), ROOT)


def test_prefill_over_the_token_budget_without_chunking_is_refused():
    """Issue 15 (mnbt-100): without chunked prefill an 8k prompt ran whole in one step despite
    max_num_batched_tokens 100; vLLM refuses that configuration."""
    d = scenario("ar", 1000, 1)
    d["deployments"][0]["scheduler"].update(chunked_prefill=False, max_num_batched_tokens=80)
    with pytest.raises(SpecsimError, match=r"deployments\[0\]\.scheduler\.max_num_batched_tokens: "
                                           r"80 is below the largest prefill, 91 tokens"):
        run_scenario(parse_scenario(d), ROOT)
    d["deployments"][0]["scheduler"]["max_num_batched_tokens"] = 91
    assert run_scenario(parse_scenario(d), ROOT).summary["deployments"][0]["requests_completed"] == 1


def test_check_and_run_agree_on_gamma_auto(tmp_path):
    """`gamma: auto` (ideal backend, alpha 0.7 -> gamma 3 for this pair): `run` sizes the fit
    with the chosen gamma (peak 90 + 7 = 97 tokens), and so must `check` (it used the provisional
    gamma 16, 90 + 33 = 123, and refused what `run` runs)."""
    import yaml
    from typer.testing import CliRunner
    from simulator.cli import app
    d = scenario("sd", 97, 1)
    d["deployments"][0].update(gamma="auto", acceptance={"alpha": 0.7})
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(d))
    res = CliRunner().invoke(app, ["check", str(p)])
    assert res.exit_code == 0, res.output
    row = run_scenario(parse_scenario(d), ROOT).summary["deployments"][0]
    assert row["config"]["gamma"] == 3 and row["requests_completed"] == 1
