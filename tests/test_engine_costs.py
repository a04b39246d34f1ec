"""The serving engine's implementation costs inside the simulator (simulator/latency/engine_costs.py):
each mechanism moves a step's time the way its formula says, and gamma auto prices the rounds the
engine runs."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import ROOT, SD_8B, AR_8B, scenario_dict
from simulator.config.loading import parse_scenario
from simulator.deploy.deployments import resolve
from simulator.deploy.gamma import ar_step_time, sd_round_time
from simulator.engine.strategies import StepBatch, make_strategy
from simulator.hardware.models import MODELS
from simulator.latency import engine_presets
from simulator.latency.base import ATTENTION, LINEAR, OVERHEAD, forward_batch

V0_GRAPH, V0_EAGER = "vllm-0.6-batch-expansion-cudagraph", "vllm-0.6-batch-expansion-eager"


def dep_of(d, preset, **kw):
    sc = parse_scenario(scenario_dict([{**d, "engine": {"preset": preset, **kw}}]))
    return resolve(sc.deployments[0], 0, ROOT)


def decode(n, ctx=1000):
    return StepBatch.decoding(1, np.full(n, ctx, np.int64))


def test_a_batch_one_past_a_captured_size_costs_the_next_captured_size():
    dep = dep_of(AR_8B, V0_GRAPH)  # captured decode batches 1, 2, 4, 8, 16, 24, ...
    lat, inner = dep.target_latency, dep.target_latency.inner
    ctx = np.full(9, 1000, np.int64)
    t9 = forward_batch(lat, 1, ctx, int(ctx.sum()), [], [], 9)
    assert t9[LINEAR] == pytest.approx(forward_batch(inner, 1, ctx, int(ctx.sum()), [], [], 9)[LINEAR]
                                       - inner.token_kernels_s(9) + inner.token_kernels_s(16))
    ctx16 = np.full(16, 1000, np.int64)
    assert t9[LINEAR] == pytest.approx(forward_batch(lat, 1, ctx16, int(ctx16.sum()), [], [], 9)[LINEAR])
    # padding does not attend: attention is the real batch's
    assert t9[ATTENTION] == forward_batch(inner, 1, ctx, int(ctx.sum()), [], [], 9)[ATTENTION]
    assert t9[OVERHEAD] == engine_presets.PRESETS[V0_GRAPH].graph_replay_s


def test_above_the_largest_captured_size_the_forward_runs_eager_and_pays_every_launch():
    dep = dep_of(AR_8B, V0_GRAPH)
    c, m = engine_presets.PRESETS[V0_GRAPH], MODELS["llama-3.1-8b"]
    ctx = np.full(300, 500, np.int64)  # v0 captures up to 256 sequences
    t = forward_batch(dep.target_latency, 1, ctx, int(ctx.sum()), [], [], 300)
    assert t[OVERHEAD] == pytest.approx(c.launch_s * (c.kernels_per_layer * m.n_layers + c.kernels_fixed))
    eager = dep_of(AR_8B, V0_EAGER)
    small = forward_batch(eager.target_latency, 1, ctx[:4], int(ctx[:4].sum()), [], [], 4)
    assert small[OVERHEAD] == pytest.approx(t[OVERHEAD])  # eager at every size


def test_batch_expansion_reads_each_cache_gamma_plus_one_times():
    g, b, ctx = 4, 32, 4000
    mq, be = dep_of(SD_8B, "vllm"), dep_of(SD_8B, V0_GRAPH)
    c = np.full(b, ctx, np.int64)
    a_mq = forward_batch(mq.target_latency, g + 1, c, b * ctx, [], [], b * (g + 1))[ATTENTION]
    a_be = forward_batch(be.target_latency, g + 1, c, b * ctx, [], [], b * (g + 1))[ATTENTION]
    assert a_be / a_mq == pytest.approx(g + 1, rel=0.05)  # decode attention is KV-read bound
    # the draft is never batch-expanded
    d_be = forward_batch(be.draft_latency, 1, c, b * ctx, [], [], b)[ATTENTION]
    d_mq = forward_batch(mq.draft_latency, 1, c, b * ctx, [], [], b)[ATTENTION]
    assert d_be == pytest.approx(d_mq)


def test_cpu_time_is_exposed_in_full_without_overlap_and_hidden_with_it():
    fixed = {"cpu_step_fixed_s": 1e-3, "cpu_per_seq_s": 1e-5}
    serial = dep_of(AR_8B, "ideal", params={**fixed, "cpu_overlap_ar": False, "cuda_graphs": False})
    over = dep_of(AR_8B, "ideal", params={**fixed, "cpu_overlap_ar": True})
    for n in (1, 64):
        kernels = float(sum(forward_batch(serial.target_latency, 1, np.full(n, 1000), 1000 * n,
                                          [], [], n)))
        cpu = 1e-3 + 1e-5 * n
        assert make_strategy(serial).step_time(decode(n), None) == pytest.approx(kernels + cpu)
        assert make_strategy(over).step_time(decode(n), None) == pytest.approx(max(kernels, cpu))


def test_the_ideal_engine_adds_nothing_to_the_backend():
    dep = dep_of(AR_8B, "ideal")
    assert dep.target_latency.step_overhead_s == 2e-3  # the roofline's own constant
    assert not hasattr(dep.target_latency, "step_cost")


@pytest.mark.parametrize("preset", ["vllm", V0_GRAPH, V0_EAGER, "sglang"])
@pytest.mark.parametrize("b", [1, 9, 64])
def test_gamma_auto_prices_the_rounds_the_engine_runs(preset, b):
    """The lookahead choice and the engine must agree on what a step costs."""
    sd, ar = dep_of(SD_8B, preset), dep_of(AR_8B, preset)
    batch = decode(b, 1152)
    assert ar_step_time(ar.target_latency, b, 1152) == pytest.approx(
        make_strategy(ar).step_time(batch, None), rel=1e-12)
    sd_batch = StepBatch.decoding(5, np.full(b, 1152, np.int64))
    assert sd_round_time(sd.target_latency, sd.draft_latency, 4, b, 1152) == pytest.approx(
        make_strategy(sd).step_time(sd_batch, None), rel=1e-12)


def test_sglang_caps_the_running_batch_when_speculating():
    """SGLang's server_args default max_running_requests 48 with a speculative algorithm."""
    from simulator.config.workload import generate
    from simulator.engine.simulation import Simulation
    d = scenario_dict([{**SD_8B, "engine": {"preset": "sglang"}}], requests=120,
                      arrival={"process": "closed", "concurrency": 100})
    sc = parse_scenario(d)
    req = generate(sc.workload, 1, ROOT)
    sd = Simulation(resolve(sc.deployments[0], 0, ROOT), req, seed=1)
    ar = Simulation(dep_of(AR_8B, "sglang"), req, seed=1)
    assert sd.replicas[0].max_seqs == 48 and ar.replicas[0].max_seqs == 256


def test_unknown_preset_and_field_are_one_line_errors():
    from simulator.errors import SpecsimError
    with pytest.raises(SpecsimError, match=r"deployments\[0\]\.engine.*did you mean vllm"):
        dep_of(AR_8B, "vlm")
    with pytest.raises(SpecsimError, match=r"deployments\[0\]\.engine: unknown field\(s\) cpu_step"):
        dep_of(AR_8B, "vllm", params={"cpu_step": 1})


def test_mixed_batches_pay_eager_launches_or_only_the_piecewise_ones():
    c, m = engine_presets.PRESETS["vllm"], MODELS["llama-3.1-8b"]
    ctx = np.full(4, 800, np.int64)
    v1 = dep_of(AR_8B, "vllm").target_latency
    t = forward_batch(v1, 1, ctx, int(ctx.sum()), [256], [0], 5)
    assert t[OVERHEAD] == pytest.approx(c.launch_s * c.piecewise_kernels_per_layer * m.n_layers)
    v0 = dep_of(AR_8B, V0_GRAPH)
    c0 = engine_presets.PRESETS[V0_GRAPH]
    t0 = forward_batch(v0.target_latency, 1, ctx, int(ctx.sum()), [256], [0], 5)
    assert t0[OVERHEAD] == pytest.approx(c0.launch_s * (c0.kernels_per_layer * m.n_layers + c0.kernels_fixed))
