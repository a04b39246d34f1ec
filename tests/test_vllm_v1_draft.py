"""The default `vllm` engine preset against published vLLM V1 draft-model measurements
(tests/data/vllm_v1_draft_measured.json: Qwen3-32B with a Qwen3-1.7B draft, `vllm bench serve`
output of github.com/tomasruizt/vllm-scripts; README, Accuracy). Nothing was fitted to them.

Pinned, where the model agrees (tolerances are the measured error plus seed noise, ~2%):
- batch 1, K = 1..8 (scenarios/vllm-v1-draft-qwen3-32b-batch1.yaml): the target alone within 5%
  (+1%); SD at K = 1 within 10% (-6%);
- concurrency sweep (scenarios/vllm-v1-draft-qwen3-32b.yaml): SD stops paying between
  concurrency 64 and 128, as measured, with SD/AR within 16% of the measured ratio at 64, 128
  and 256 (+13%, -8%, +2%); the acceptance length the run realises is the measured one.
Not pinned, because the model does not agree: SD at batch 1 with K >= 2 is predicted 10-23% too
fast, the error growing with K (the draft's forward is priced at 1.32 ms where the draft alone
measured 2.27 ms); SD/AR at concurrency 1..32 is over-predicted by 18-24%; absolute times of the
sweep (its GPU decoded the target 1.4x slower than the 80 GB H100 of the batch-1 runs).
"""
from __future__ import annotations

import copy
import json

import pytest
import yaml
from scipy.optimize import brentq

from conftest import ROOT, run_dict

MEASURED = json.loads((ROOT / "tests" / "data" / "vllm_v1_draft_measured.json").read_text())
SWEEP = yaml.safe_load((ROOT / "scenarios" / "vllm-v1-draft-qwen3-32b.yaml").read_text())
BATCH1 = yaml.safe_load((ROOT / "scenarios" / "vllm-v1-draft-qwen3-32b-batch1.yaml").read_text())


def expected_length(alpha: float, gamma: int) -> float:
    """Tokens per round of the truncated geometric law (Leviathan et al. 2023)."""
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def alpha_of(al: float, gamma: int) -> float:
    return brentq(lambda a: expected_length(a, gamma) - al, 1e-9, 1 - 1e-9)


def with_backend(d: dict, backend: str) -> dict:
    d = copy.deepcopy(d)
    for dep in d["deployments"]:
        dep["latency"] = {"backend": backend}
    return d


def sweep_point(concurrency: int, backend: str = "roofline") -> tuple[dict, dict, dict]:
    """(measured AR, measured SD, predicted rows) at one concurrency, measured request count."""
    m = MEASURED["concurrency_sweep"]
    ar = next(r for r in m["ar"] if r["concurrency"] == concurrency)
    sd = next(r for r in m["sd"] if r["concurrency"] == concurrency)
    d = with_backend(SWEEP, backend)
    d.pop("sweep")
    d["workload"]["requests"] = ar["requests"]
    d["workload"]["arrival"] = {"process": "closed", "concurrency": concurrency}
    rows = {r["name"]: r for r in run_dict(d).summary["deployments"]}
    return ar, sd, rows


def test_the_scenarios_acceptance_is_the_measured_acceptance_length():
    """Catches an alpha mistyped or solved with the wrong gamma (gamma vs gamma + 1 terms)."""
    for r in MEASURED["batch1_k_sweep"]["sd"]:
        dep = next(x for x in BATCH1["deployments"] if x["name"] == f"sd-k{r['k']}")
        assert dep["gamma"] == r["k"]
        assert expected_length(dep["acceptance"]["alpha"], r["k"]) == pytest.approx(
            r["acceptance_length"], abs=0.002)
    sd = next(x for x in SWEEP["deployments"] if x["strategy"] == "sd")
    at_1 = MEASURED["concurrency_sweep"]["sd"][0]
    assert sd["acceptance"]["alpha"] == pytest.approx(alpha_of(at_1["acceptance_length"], 4), abs=1e-4)
    for r in MEASURED["concurrency_sweep"]["sd"]:  # one alpha fits every point's AL
        assert expected_length(sd["acceptance"]["alpha"], 4) == pytest.approx(r["acceptance_length"],
                                                                              abs=0.035)


def test_batch1_target_alone_and_sd_at_k1_match():
    """The target's decode step at batch 1 (weights streamed at the roofline plus the engine's
    per-step costs) and one draft step + one 2-token verify. Catches a regression in the weight
    bytes, the roofline's efficiencies or the engine's per-step cost at batch 1."""
    m = MEASURED["batch1_k_sweep"]
    d = with_backend(BATCH1, "roofline")
    d["workload"]["requests"] = 6
    d["deployments"] = [x for x in d["deployments"] if x["name"] in ("ar", "sd-k1")]
    rows = {r["name"]: 1e3 * r["tpot_s"]["mean"] for r in run_dict(d).summary["deployments"]}
    assert rows["ar"] == pytest.approx(m["ar"]["mean_tpot_ms"], rel=0.05)
    assert rows["sd-k1"] == pytest.approx(m["sd"][0]["mean_tpot_ms"], rel=0.10)


def test_sd_stops_paying_between_concurrency_64_and_128_as_measured():
    """Where speculation stops paying is the headline prediction: measured SD/AR throughput 1.36
    at 64, 0.95 at 128, 0.71 at 256. Catches a change in verify or draft cost at large batch, in
    KV sizing with a draft (the SD deployment is KV-bound at 128 and 256, measured and here) or
    in acceptance sampling (the realised tokens per round must be the measured AL)."""
    for backend, tol in (("roofline", 0.16), ("calibrated", 0.20)):  # measured errors: README
        ratios = {}
        for c in (64, 128, 256):
            ar, sd, rows = sweep_point(c, backend)
            measured = sd["output_tok_s"] / ar["output_tok_s"]
            predicted = rows["sd"]["throughput_tokens_per_s"] / rows["ar"]["throughput_tokens_per_s"]
            assert predicted == pytest.approx(measured, rel=tol), (backend, c)
            assert rows["sd"]["mean_tokens_per_round"] == pytest.approx(sd["acceptance_length"],
                                                                        rel=0.03)
            ratios[c] = predicted
        assert ratios[64] > 1.0 > ratios[128] > ratios[256], backend


def test_batch1_calibrated_roofline_prices_the_small_draft():
    """The calibrated roofline (profiles/h100-sxm/calibration.json: efficiencies and a per-layer
    fixed cost of 34 us fitted to Vidur's H100 profiles in November, nothing from these runs)
    against every batch-1 measurement: the 1.7B draft alone at 2.27 ms (the datasheet roofline
    says 1.32 ms: a small model's ~10 kernels a layer do not get faster than a few microseconds
    each) and SD at K = 1..8 within 6%, the best K among the measured best (4-5). Catches the
    per-layer cost dropped from the roofline or from the saved calibration, counted per forward
    instead of per layer, or the calibrated backend losing it when carried to the draft."""
    m = MEASURED["batch1_k_sweep"]
    d = copy.deepcopy(BATCH1)
    d["workload"]["requests"] = 6
    for dep in d["deployments"]:
        dep["latency"] = {"backend": "calibrated"}
    tpot = {r["name"]: 1e3 * r["tpot_s"]["mean"] for r in run_dict(d).summary["deployments"]}
    assert tpot["draft-alone"] == pytest.approx(m["draft_alone"]["mean_tpot_ms"], rel=0.06)
    assert tpot["ar"] == pytest.approx(m["ar"]["mean_tpot_ms"], rel=0.06)
    for r in m["sd"]:
        assert tpot[f"sd-k{r['k']}"] == pytest.approx(r["mean_tpot_ms"], rel=0.06), r["k"]
    best = min(range(1, 9), key=lambda k: tpot[f"sd-k{k}"])
    assert best in (4, 5)
