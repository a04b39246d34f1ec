"""The engine against closed forms (ideal backend, batch 1): Leviathan and SDSL's T(gamma)."""
import pytest

from conftest import run_dict, scenario_dict
from simulator.hardware.gpus import GPUS
from simulator.hardware.models import MODELS
from simulator.physics.sdsl import tokens_per_flop

ALPHA, GAMMA = 0.7, 4
TARGET, DRAFT = "llama-3.1-8b", "llama-3.2-1b"


@pytest.fixture(scope="module")
def batch1():
    ideal = {"backend": "ideal"}
    deps = [
        {"name": "ar", "target": TARGET, "gpu": "h100-sxm", "strategy": "ar", "latency": ideal},
        {"name": "sd", "target": TARGET, "draft": DRAFT, "gpu": "h100-sxm", "strategy": "sd",
         "gamma": GAMMA, "acceptance": {"alpha": ALPHA}, "latency": ideal},
    ]
    d = scenario_dict(deps, requests=12, arrival={"process": "closed", "concurrency": 1},
                      prompt={"dist": "fixed", "value": 32}, output={"dist": "fixed", "value": 3000})
    return {r["name"]: r for r in run_dict(d).summary["deployments"]}


def test_leviathan_tokens_per_round(batch1):
    expected = (1 - ALPHA ** (GAMMA + 1)) / (1 - ALPHA)
    assert batch1["sd"]["mean_tokens_per_round"] == pytest.approx(expected, rel=0.01)
    assert batch1["ar"]["mean_tokens_per_round"] == 1.0


def test_leviathan_speedup(batch1):
    c = MODELS[DRAFT].params / MODELS[TARGET].params
    expected = (1 - ALPHA ** (GAMMA + 1)) / ((1 - ALPHA) * (GAMMA * c + 1))
    ratio = batch1["sd"]["throughput_tokens_per_s"] / batch1["ar"]["throughput_tokens_per_s"]
    assert ratio == pytest.approx(expected, rel=0.02)


def test_sdsl_tokens_per_flop(batch1):
    sd = batch1["sd"]
    peak = GPUS["h100-sxm"].peak_flops("bf16")
    busy = sum(sd["busy_breakdown_s"].values())
    measured = sd["output_tokens"] / (busy * peak)
    expected = tokens_per_flop(ALPHA, GAMMA, MODELS[DRAFT].params, MODELS[TARGET].params)
    assert measured == pytest.approx(expected, rel=0.01)
    # batch 1, closed loop: the GPU is never idle
    assert sd["gpu_busy_fraction"] == pytest.approx(1.0, abs=1e-9)
