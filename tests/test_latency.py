"""Latency backends: roofline shape (memory- vs compute-bound), ideal cost model, memory plan."""
import numpy as np
import pytest

from simulator.hardware.gpus import GPUS
from simulator.hardware.models import MODELS
from simulator.latency.ideal import IdealLatency
from simulator.latency.roofline import RooflineLatency, RooflineParams
from simulator.deploy.memory import plan_memory

H100 = GPUS["h100-sxm"]


def step(lat, b, q, ctx=1024):
    return float(lat.forward(np.full(b, q), np.full(b, ctx), b * q).sum())


def test_roofline_step_time_rises_with_batch():
    lat = RooflineLatency(MODELS["llama-3.1-70b"], H100, 4)
    times = [step(lat, b, 1) for b in (1, 8, 32, 128, 512)]
    assert all(a < b for a, b in zip(times, times[1:]))


def test_verify_is_nearly_free_at_small_batch_and_costly_at_large():
    lat = RooflineLatency(MODELS["llama-3.1-70b"], H100, 4)
    assert step(lat, 1, 6) / step(lat, 1, 1) < 1.1  # weights dominate: memory-bound
    assert step(lat, 256, 6) / step(lat, 256, 1) > 2.5  # GEMMs compute-bound past the ridge


def test_gemm_knee_near_ridge_point():
    """Linear-layer time is flat until T ~ ridge (peak/bandwidth scaled by efficiencies)."""
    p = RooflineParams()
    lat = RooflineLatency(MODELS["llama-3.1-8b"], H100, 1, params=p)
    ridge = H100.ridge_flop_per_byte * p.compute_efficiency / p.memory_efficiency
    lin = lambda t: lat._linear(t)
    assert lin(int(ridge / 4)) / lin(1) < 1.3
    assert lin(int(ridge * 8)) / lin(1) > 4


def test_tp_splits_weights_and_adds_communication():
    m = MODELS["llama-3.1-70b"]
    t1 = RooflineLatency(m, GPUS["h200-sxm"], 1).forward(np.ones(1, int), np.full(1, 512), 1)
    t4 = RooflineLatency(m, GPUS["h200-sxm"], 4).forward(np.ones(1, int), np.full(1, 512), 1)
    assert t1[2] == 0 and t4[2] > 0
    assert t4[0] == pytest.approx(t1[0] / 4, rel=0.05)


def test_attention_grows_with_context():
    lat = RooflineLatency(MODELS["llama-3.1-8b"], H100, 1)
    a = [lat.forward(np.ones(64, int), np.full(64, c), 64)[1] for c in (512, 4096, 32768)]
    assert a[0] < a[1] < a[2]
    assert a[2] / a[1] == pytest.approx(8, rel=0.05)  # KV bytes scale with context


def test_decode_steps_equals_repeated_forwards():
    from simulator.latency.base import decode_steps
    lat = RooflineLatency(MODELS["llama-3.2-1b"], H100, 1)
    ctx = np.array([10, 500, 2000])
    direct = sum(lat.forward(np.ones(3, int), ctx + j, 3) for j in range(5))
    assert np.allclose(decode_steps(lat, ctx, 5, 3), direct)
    # start: caches `start` tokens longer; ctx_sum given or not, same result
    later = sum(lat.forward(np.ones(3, int), ctx + 2 + j, 3) for j in range(4))
    assert np.allclose(decode_steps(lat, ctx, 4, 3, int(ctx.sum()), start=2), later)
    assert np.allclose(decode_steps(lat, ctx, 4, 3, start=2), later)


@pytest.mark.parametrize("shift", [0, 1])
def test_batch_priced_from_sums_equals_forward(shift):
    """The engine prices a step from its sums (roofline forward_sums) and must charge exactly
    what forward() does on the per-sequence arrays: decodes with q tokens each (caches shifted
    back by `shift`, as a lagging draft's first pass) plus prefill chunks."""
    from simulator.latency.base import forward_batch

    class ArraysOnly:  # the same backend without its sums fast path
        forward = RooflineLatency(MODELS["llama-3.1-70b"], H100, 4).forward

    lat = RooflineLatency(MODELS["llama-3.1-70b"], H100, 4)
    rng = np.random.default_rng(0)
    for n, q, pre_q, pre_ctx in [(1, 1, [], []), (7, 5, [300], [0]), (66, 6, [], []),
                                 (300, 1, [2000, 17], [4096, 0]), (0, 3, [512], [0])]:
        ctx = rng.integers(1, 8000, n)
        n_logits = n * q + len(pre_q)
        fast = forward_batch(lat, q, ctx, int(ctx.sum()), pre_q, pre_ctx, n_logits, shift)
        slow = forward_batch(ArraysOnly(), q, ctx, int(ctx.sum()), pre_q, pre_ctx, n_logits, shift)
        direct = lat.forward(np.array([q] * n + pre_q), np.array([*(ctx - shift), *pre_ctx]), n_logits)
        assert np.allclose(fast, direct, rtol=1e-12, atol=0)
        assert np.allclose(slow, direct, rtol=1e-12, atol=0)


def test_ideal_cost_model():
    m = MODELS["llama-3.1-8b"]
    lat = IdealLatency(m, H100)
    t = lat.forward(np.full(64, 6), np.full(64, 4000), 64 * 6).sum()
    assert t == pytest.approx(2 * m.params / H100.peak_flops())
    assert lat.source == "law"


def test_memory_plan():
    m70, d1 = MODELS["llama-3.1-70b"], MODELS["llama-3.2-1b"]
    plan = plan_memory(m70, H100, 4, "bf16", 0.9, 2e9)
    assert plan.kv_bytes_per_token == 2 * 80 * 2 * 128 * 2  # 2 KV heads per GPU at tp 4
    expected = (H100.memory_bytes * 0.9 - m70.weight_bytes() / 4 - 2e9) // plan.kv_bytes_per_token
    assert H100.memory_bytes == pytest.approx(79.11 * 2**30)  # what the device reports, not 80e9
    assert plan.kv_capacity_tokens == expected
    with_draft = plan_memory(m70, H100, 4, "bf16", 0.9, 2e9, d1, 4)
    assert with_draft.kv_capacity_tokens < plan.kv_capacity_tokens
    assert plan_memory(m70, H100, 1, "bf16", 0.9, 2e9).kv_budget_gb < 0


def test_catalogue_parameter_counts_match_published():
    for m in MODELS.values():
        if m.name == "opt-350m":  # projects 512-wide embeddings in and out; not modelled
            continue
        assert m.computed_params == pytest.approx(m.params, rel=0.03), m.name


def test_calibrated_backend_uses_own_or_nearest_calibration(tmp_path):
    """`backend: calibrated` is the roofline with fitted efficiencies: H100's own calibration on
    H100 (from the committed Vidur import), H100's scaled by datasheet on H200; source 'derived'."""
    from pathlib import Path

    from simulator.latency.calibration import calibration_path, load_calibration
    from simulator.deploy.deployments import resolve
    from simulator.errors import SpecsimError
    from simulator.config.loading import parse_scenario

    root = Path(__file__).resolve().parents[1]
    fitted = load_calibration(calibration_path("h100-sxm", root / "profiles")).params

    def dep(gpu, **latency):
        sc = parse_scenario({"name": "c", "workload": {"requests": 1, "arrival": {
            "process": "poisson", "rate_per_s": 1}, "prompt_tokens": {"dist": "fixed", "value": 8},
            "output_tokens": {"dist": "fixed", "value": 8}}, "deployments": [{
                "name": "d", "target": "llama-3.1-8b", "gpu": gpu, "strategy": "ar",
                "latency": {"backend": "calibrated", **latency}}]})
        return resolve(sc.deployments[0], 0, root)

    for gpu in ("h100-sxm", "h200-sxm"):
        d = dep(gpu)
        lat = d.target_latency
        assert d.latency_source == "derived" and "h100-sxm" in d.latency_notes["target"]
        assert lat.params.compute_efficiency == fitted.compute_efficiency
        plain = RooflineLatency(MODELS["llama-3.1-8b"], GPUS[gpu])
        q, c = np.full(4, 1), np.full(4, 512)
        assert not np.isclose(lat.forward(q, c, 4).sum(), plain.forward(q, c, 4).sum())
    assert dep("h100-sxm", params={"compute_efficiency": 0.3}).target_latency.params.compute_efficiency == 0.3
    with pytest.raises(SpecsimError, match="calibrated.*needs a saved calibration"):
        dep("h100-sxm", profiles_dir=str(tmp_path))


def test_default_backend_is_calibrated_found_from_anywhere_or_says_it_fell_back(tmp_path, monkeypatch):
    """A deployment without `latency` is timed by the calibrated roofline: found beside the
    scenario, in the working directory, or in the project's bundled profiles/ (a scenario run
    from another folder still finds them); where none exists the default falls back to the
    datasheet roofline and its note says so, while an explicit `calibrated` is an error.
    Catches the default left at roofline, the project fallback missing (a run from /tmp would
    silently lose the calibration) or a silent fallback."""
    from simulator.config.loading import parse_scenario
    from simulator.deploy import deployments
    from simulator.errors import SpecsimError

    def dep(base, **extra):
        sc = parse_scenario({"name": "c", "workload": {"requests": 1, "arrival": {
            "process": "poisson", "rate_per_s": 1}, "prompt_tokens": {"dist": "fixed", "value": 8},
            "output_tokens": {"dist": "fixed", "value": 8}}, "deployments": [{
                "name": "d", "target": "llama-3.1-8b", "gpu": "h100-sxm", "strategy": "ar", **extra}]})
        return deployments.resolve(sc.deployments[0], 0, base)

    monkeypatch.chdir(tmp_path)  # no profiles/ beside the scenario nor in the working directory
    d = dep(tmp_path)
    assert d.latency_source == "derived" and d.target_latency.params.layer_overhead_s > 0
    monkeypatch.setattr(deployments, "PROJECT_PROFILES", tmp_path / "nowhere")
    d = dep(tmp_path)
    assert d.latency_source == "roofline"
    assert "no calibration" in d.latency_notes["target"] and d.target_latency.params.layer_overhead_s == 0
    with pytest.raises(SpecsimError, match="calibrated.*needs a saved calibration"):
        dep(tmp_path, latency={"backend": "calibrated"})


def test_draft_latency_overrides_the_drafts_backend():
    from pathlib import Path

    from simulator.deploy.deployments import resolve
    from simulator.errors import SpecsimError
    from simulator.config.loading import parse_scenario

    root = Path(__file__).resolve().parents[1]
    base = {"name": "d", "target": "llama-3.1-8b", "gpu": "h100-sxm", "latency": {"backend": "roofline"}}

    def sc(**dep):
        return parse_scenario({"name": "c", "workload": {"requests": 1, "arrival": {
            "process": "poisson", "rate_per_s": 1}, "prompt_tokens": {"dist": "fixed", "value": 8},
            "output_tokens": {"dist": "fixed", "value": 8}}, "deployments": [dict(base, **dep)]})

    d = resolve(sc(strategy="sd", draft="llama-3.2-1b", gamma=3, acceptance={"alpha": 0.6},
                   draft_latency={"backend": "calibrated"}).deployments[0], 0, root)
    assert d.target_latency.source == "roofline" and d.draft_latency.source == "derived"
    assert d.latency_source == "derived+roofline"
    with pytest.raises(SpecsimError, match="draft_latency"):
        sc(strategy="ar", draft_latency={"backend": "calibrated"})


@pytest.mark.parametrize("model,tp,quant,overhead", [("llama-3.1-70b", 4, None, 0.0),
                                                     ("llama-3.1-8b", 1, "awq", 3.4e-5)])
def test_block_memo_equals_one_count_at_a_time(model, tp, quant, overhead):
    """_linear and _lm_head memoise a block of token counts per miss (vectorised); each value
    must equal the scalar formula for that count alone, bit for bit, or the engine's prices
    would depend on which counts it happened to see first. Catches a block offset by one
    (t's value stored under t + 1), a dropped term (the elementwise or embedding bytes), the
    LM head of 0 logits not being 0, or a quantised model's GEMMs priced at the dense rate."""
    from simulator.hardware.quant import weight_format
    kw = {} if quant is None else {"quant": weight_format(quant)}
    r = RooflineLatency(MODELS[model], GPUS["h100-sxm"], tp, "bf16",
                        RooflineParams(layer_overhead_s=overhead), **kw)
    for t in [0, 1, 2, 255, 256, 257, 1000, 8191, 8192, 40_000]:
        layer = float(r._layer_gemms(float(t)).sum()) + t * r._elementwise_bytes_per_token / r._bw
        layer += r.params.layer_overhead_s
        assert r._linear(t) == r.model.n_layers * layer + r.embedding_s(t)
        head = (float(r._gemm_time(float(t), r._lm_k, r._lm_n, r._lm_w, r._flops)) if t else 0.0)
        assert r._lm_head(t) == head


def test_layer_overhead_is_per_layer_per_forward_and_padding_free():
    """layer_overhead_s (the per-layer kernel floor `specsim calibrate` fits) adds n_layers x it to
    every forward, whatever its size, and nothing to CUDA-graph padding rows (a padded batch runs
    the same kernels). Catches it charged once per forward, per token, or to padding."""
    m = MODELS["qwen3-1.7b"]
    base = RooflineLatency(m, H100, 1, "bf16")
    floor = RooflineLatency(m, H100, 1, "bf16", RooflineParams(layer_overhead_s=3.4e-5))
    for b in (1, 64):
        extra = step(floor, b, 1) - step(base, b, 1)
        assert extra == pytest.approx(m.n_layers * 3.4e-5, rel=1e-9)
    assert (floor.token_kernels_s(16) - floor.token_kernels_s(9)
            == pytest.approx(base.token_kernels_s(16) - base.token_kernels_s(9), rel=1e-9))
