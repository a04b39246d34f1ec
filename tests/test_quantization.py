"""Per-model precision (issue 16 item 2): a dtype per model and weight-only int8/int4 weights.
Bytes come from the formats (simulator/hardware/quant.py), the roofline reads quantized weights
and pays a dequantization cost when compute-bound, memory sizing uses the quantized bytes, and a
quantized copy of the target is a valid draft."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import AR_8B, ROOT, SD_8B, run_dict, scenario_dict
from simulator.config.loading import parse_scenario
from simulator.deploy.deployments import resolve
from simulator.deploy.memory import plan_memory
from simulator.errors import SpecsimError
from simulator.hardware.gpus import GPUS
from simulator.hardware.models import MODELS
from simulator.hardware.quant import WEIGHT_FORMATS
from simulator.latency.roofline import RooflineLatency, RooflineParams

H100 = GPUS["h100-sxm"]
M70 = MODELS["llama-3.1-70b"]
INT4, GPTQ, INT8 = WEIGHT_FORMATS["int4"], WEIGHT_FORMATS["gptq"], WEIGHT_FORMATS["int8"]


def dep(d):
    return resolve(parse_scenario(scenario_dict([d])).deployments[0], 0, ROOT)


def test_bytes_per_weight_count_the_scales_and_zero_points():
    # AWQ g128: 4 bits + an fp16 scale + a 4-bit zero per 128 weights; GPTQ (symmetric): the
    # Marlin README's 4.125 bits; W8A16: 1 byte + one fp16 scale per output channel of k weights.
    assert INT4.bytes_per_weight(8192, 8192) == pytest.approx((4 + 16 / 128 + 4 / 128) / 8)
    assert GPTQ.bytes_per_weight(8192, 8192) == pytest.approx(4.125 / 8)
    assert INT8.bytes_per_weight(8192, 1024) == pytest.approx(1 + 2 / 8192)
    assert 0.51 / 2 < INT4.bytes_per_weight() / 2 < 0.53 / 2  # ~0.53/2 of bf16, never 0.5/2


def test_only_the_layer_gemms_are_quantized_embeddings_and_head_stay_bf16():
    q = M70.weight_bytes("bf16", INT4)
    rest = (M70.computed_params - M70.linear_params) * 2
    assert q == pytest.approx(M70.linear_params * INT4.bytes_per_weight() + rest, rel=1e-4)
    # 70B: 141 GB in bf16 -> ~40 GB in int4 (the 2.1 GB embeddings and head are still bf16)
    assert M70.weight_bytes() / 1e9 == pytest.approx(141.1, abs=0.1)
    assert 39 < q / 1e9 < 41


def test_memory_plan_gives_the_weights_saved_to_kv():
    kw = dict(block_size=16)
    bf = plan_memory(M70, H100, 2, "bf16", 0.9, 2e9, **kw)
    i4 = plan_memory(M70, H100, 2, "bf16", 0.9, 2e9, quant=INT4, **kw)
    saved = (M70.weight_bytes() - M70.weight_bytes("bf16", INT4)) / 2
    assert i4.kv_bytes_per_token == bf.kv_bytes_per_token  # KV stays in bf16
    assert (i4.kv_budget_gb - bf.kv_budget_gb) * 1e9 == pytest.approx(saved)
    extra = saved / bf.kv_bytes_per_token
    assert i4.kv_capacity_tokens - bf.kv_capacity_tokens == pytest.approx(extra, abs=16)
    assert i4.kv_capacity_tokens > 3 * bf.kv_capacity_tokens


def test_int4_70b_fits_one_h100_where_bf16_does_not():
    one = {**AR_8B, "target": "llama-3.1-70b"}
    with pytest.raises(SpecsimError, match="does not fit"):
        dep(one)
    d = dep({**one, "quantization": {"target": "int4"}})
    assert 30e3 < d.memory.kv_capacity_tokens < 200e3


def _fwd(lat, b, ctx=128):
    return float(lat.forward(np.ones(b, int), np.full(b, ctx), b).sum())


def test_batch1_decode_of_int4_70b_is_about_3_5x_faster_memory_bound():
    bf, i4 = RooflineLatency(M70, H100, 1), RooflineLatency(M70, H100, 1, quant=INT4)
    speedup = _fwd(bf, 1) / _fwd(i4, 1)
    # Oracle: the forward is weight-streaming; GEMM bytes shrink 2/0.5195 = 3.85x, the bf16
    # embedding/LM head and the fixed overhead do not.
    assert 3.4 < speedup < 3.85
    layer_bf, layer_i4 = bf.layer_terms(1.0), i4.layer_terms(1.0)
    k, n = M70.hidden, 2 * M70.ffn
    bw = H100.bandwidth_tbps * 1e12 * RooflineParams().memory_efficiency
    assert float(layer_i4["mlp_up"]) == pytest.approx((INT4.gemm_bytes(k, n, 2) + (k + n) * 2) / bw)
    assert float(layer_bf["mlp_up"]) == pytest.approx((k * n + k + n) * 2 / bw)


def test_at_a_large_compute_bound_batch_int4_is_not_faster_it_pays_dequantization():
    bf, i4 = RooflineLatency(M70, H100, 1), RooflineLatency(M70, H100, 1, quant=INT4)
    assert _fwd(i4, 2048) >= _fwd(bf, 2048)
    eff = RooflineParams().weight_only_efficiency
    t = 4096.0
    for term in ("qkv", "o", "mlp_up", "mlp_down"):
        assert float(i4.layer_terms(t)[term]) == pytest.approx(float(bf.layer_terms(t)[term]) / eff)
    # the knob is real: at efficiency 1 the compute-bound GEMMs cost the same as bf16
    same = RooflineLatency(M70, H100, 1, params=RooflineParams(weight_only_efficiency=1.0), quant=INT4)
    assert float(same.layer_terms(t)["mlp_up"]) == pytest.approx(float(bf.layer_terms(t)["mlp_up"]))


def test_draft_dtype_changes_only_the_draft():
    base, fp8 = dep(SD_8B), dep({**SD_8B, "draft_dtype": "fp8"})
    q, c = np.ones(8, int), np.full(8, 512)
    assert np.array_equal(base.target_latency.forward(q, c, 8), fp8.target_latency.forward(q, c, 8))
    assert fp8.draft_latency.inner.dtype == "fp8" and fp8.target_latency.inner.dtype == "bf16"
    assert fp8.draft_latency.forward(q, c, 8)[0] < base.draft_latency.forward(q, c, 8)[0]
    d1b = MODELS["llama-3.2-1b"]
    saved = d1b.kv_bytes_per_token(1, "bf16") - d1b.kv_bytes_per_token(1, "fp8")
    assert base.memory.kv_bytes_per_token - fp8.memory.kv_bytes_per_token == saved
    assert fp8.memory.target_weights_gb == base.memory.target_weights_gb
    assert fp8.memory.draft_weights_gb == pytest.approx(base.memory.draft_weights_gb / 2)


SELF = {**SD_8B, "name": "self", "draft": "llama-3.1-8b", "gamma": 3, "acceptance": {"alpha": 0.8},
        "quantization": {"draft": "int4"}}


def test_a_bf16_target_drafts_with_its_own_int4_copy():
    d = dep({**SELF, "latency": {"backend": "roofline"}})  # bytes alone (no per-layer floor)
    q, c = np.ones(1, int), np.full(1, 256)
    ratio = d.target_latency.inner.forward(q, c, 1).sum() / d.draft_latency.inner.forward(q, c, 1).sum()
    # same architecture, GEMM weights at a quarter of the bytes; the bf16 LM head (1 GB of 8B's
    # 16 GB) is read by both
    assert 2.6 < ratio < 3.85
    closed = {"process": "closed", "concurrency": 1}
    rows = {r["name"]: r for r in run_dict(scenario_dict([AR_8B, SELF], requests=30,
                                                         arrival=closed)).summary["deployments"]}
    assert rows["self"]["requests_completed"] == 30
    assert rows["self"]["mean_tokens_per_round"] > 1.5
    assert rows["self"]["throughput_tokens_per_s"] > rows["ar"]["throughput_tokens_per_s"]
    assert rows["self"]["config"]["weights"]["quantization"] == {"target": "none", "draft": "int4"}
    assert "weights" not in rows["ar"]["config"]  # unchanged output for plain deployments


@pytest.mark.parametrize("change", [{"quantization": {"draft": "none"}},
                                    {"quantization": {"target": "int4", "draft": "int8"}}])
def test_a_draft_not_smaller_in_bytes_is_refused_naming_the_field(change):
    with pytest.raises(SpecsimError, match=r"^deployments\[0\]\.draft: .*must be smaller than "
                                           r"target .*in weight bytes") as e:
        dep({**SELF, **change})
    assert "\n" not in str(e.value)


def test_unknown_quantization_and_incompatible_dtypes_are_one_line_errors():
    for where, field in (({"target": "int3"}, "target"), ({"draft": "nf4"}, "draft")):
        with pytest.raises(SpecsimError, match=rf"^deployments\[0\]\.quantization\.{field}: unknown "
                                               r"quantization '\w+'; known: none, int8, int4, awq, gptq$"):
            dep({**SD_8B, "quantization": where})
    with pytest.raises(SpecsimError, match=r"^deployments\[0\]\.quantization\.target: int4 is "
                                           r"weight-only .*dtype must be bf16 or fp16, got fp8$"):
        dep({**SD_8B, "dtype": "fp8", "quantization": {"target": "int4"}})
    with pytest.raises(SpecsimError, match=r"quantization\.draft: .*draft_dtype must be bf16"):
        dep({**SD_8B, "draft_dtype": "fp32", "quantization": {"draft": "int8"}})
    with pytest.raises(SpecsimError, match=r"^deployments\[0\]\.latency\.backend: a measured profile "
                                           r"is of unquantized weights"):
        dep({**SD_8B, "latency": {"backend": "profile"}, "quantization": {"target": "int4"}})
    with pytest.raises(SpecsimError, match="strategy 'ar' takes no draft_dtype, quantization.draft"):
        dep({**AR_8B, "draft_dtype": "fp8", "quantization": {"draft": "int4"}})
