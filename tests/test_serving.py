"""Engine implementation costs (simulator/latency/serving.py): each mechanism moves step time the
way its formula says, presets are sourced, bad input is a clear error, "ideal" adds nothing."""
import math
from dataclasses import fields

import pytest

from simulator.errors import SpecsimError
from simulator.latency import engine_presets as ep
from simulator.latency import serving as sv
from simulator.latency.serving import EngineCosts

V0_GRAPH = ep.preset("vllm-0.6-batch-expansion-cudagraph")
V0_EAGER = ep.preset("vllm-0.6-batch-expansion-eager")
VLLM = ep.preset("vllm")
SGLANG = ep.preset("sglang")
IDEAL = ep.preset("ideal")


def test_batch_one_past_a_captured_size_runs_as_the_next_captured_size():
    c = EngineCosts(name="t", cuda_graphs=True, capture_sizes=(1, 2, 4, 8, 16, 24))
    assert sv.graph_batch(8, c) == 8  # exact size: no padding
    assert sv.graph_batch(9, c) == 16  # one past 8 pays for 16
    assert sv.graph_batch(3, c) == 4
    assert sv.graph_batch(24, c) == 24
    assert sv.graph_batch(0, c) is None and sv.forward_launch_s(0, 32, c) == 0.0  # no forward
    # vLLM v0.6 grid is 1, 2, 4, 8, 16, 24, ...: 9 decoding sequences run as 16 tokens' worth.
    assert sv.padded_tokens(9, 1, V0_GRAPH) == 16
    assert sv.padded_tokens(17, 1, V0_GRAPH) == 24


def test_above_the_largest_captured_size_runs_eager_and_pays_every_launch():
    c, layers = V0_GRAPH, 80
    assert sv.graph_batch(256, c) == 256
    assert sv.graph_batch(257, c) is None
    assert sv.padded_tokens(257, 1, c) == 257  # eager: no padding
    assert sv.forward_launch_s(256, layers, c) == c.graph_replay_s
    eager = c.launch_s * (c.kernels_per_layer * layers + c.kernels_fixed)
    assert sv.forward_launch_s(257, layers, c) == pytest.approx(eager)
    with_tp = c.launch_s * ((c.kernels_per_layer + c.kernels_per_layer_tp) * layers + c.kernels_fixed)
    assert sv.forward_launch_s(257, layers, c, tp=4) == pytest.approx(with_tp)
    assert eager > 100 * c.graph_replay_s  # eager launches dwarf one replay


def test_eager_preset_pays_launches_at_every_batch_size_and_for_every_draft_forward():
    c = V0_EAGER
    per_forward = c.launch_s * (c.kernels_per_layer * 32 + c.kernels_fixed)
    assert sv.forward_launch_s(1, 32, c) == pytest.approx(per_forward)
    assert sv.forward_launch_s(64, 32, c) == pytest.approx(per_forward)
    assert sv.graph_batch(1, c) is None


def test_vllm_v1_captures_tokens_and_exact_verify_widths():
    q = 5  # gamma 4
    assert sv.graph_key(33, q, VLLM) == 165
    assert sv.padded_tokens(33, q, VLLM) == 168  # next size of the token grid
    assert sv.padded_tokens(2, q, VLLM) == 10  # n*(gamma+1) is captured exactly
    assert sv.padded_tokens(24, q, VLLM) == 120
    assert sv.padded_tokens(103, q, VLLM) == 515  # above 512 tokens: eager, unpadded
    assert sv.forward_launch_s(103, 32, VLLM, q_per_seq=q) > sv.forward_launch_s(102, 32, VLLM, q_per_seq=q)


def test_sglang_speculative_deployments_use_their_own_capture_grid():
    assert sv.graph_batch(9, SGLANG) == 12  # non-speculative grid 1,2,4,8,12,16,...
    assert sv.graph_batch(9, SGLANG, speculative=True) == 10  # speculative grid 1..8,10,12,...
    assert sv.padded_tokens(9, 5, SGLANG, speculative=True) == 50  # sequences padded, x(gamma+1)


def test_batch_expansion_scores_every_position_as_a_one_token_sequence():
    assert sv.verify_shape(8, 4, V0_GRAPH) == (40, 1)
    assert sv.verify_shape(8, 4, VLLM) == (8, 5)
    # the expanded batch is what the graph sees: 8 x 5 = 40 sequences, captured as 40
    n, q = sv.verify_shape(7, 4, V0_GRAPH)
    assert sv.padded_tokens(n, q, V0_GRAPH) == 40
    n, q = sv.verify_shape(52, 4, V0_GRAPH)  # 260 expanded sequences: above 256, eager
    assert sv.graph_batch(n, V0_GRAPH) is None


@pytest.mark.parametrize("name", sorted(ep.PRESETS))
def test_cpu_time_grows_with_sequences_and_sampled_positions_at_the_preset_slopes(name):
    c = ep.with_overrides(ep.preset(name), {"cpu_per_sampled_s": 2e-6, "cpu_per_token_s": 1e-7})
    b, gamma = 16, 4
    t = sv.cpu_step_s(c, b, b * (gamma + 1), b * (gamma + 1))
    assert t == pytest.approx(c.cpu_step_fixed_s + 16 * c.cpu_per_seq_s + 80 * 1e-7 + 80 * 2e-6)
    assert sv.cpu_step_s(c, b + 1, 80, 80) - sv.cpu_step_s(c, b, 80, 80) == pytest.approx(c.cpu_per_seq_s)
    assert sv.cpu_step_s(c, b, 80, 81) - sv.cpu_step_s(c, b, 80, 80) == pytest.approx(2e-6)


def test_overlapped_cpu_hides_behind_the_gpu_and_serial_cpu_adds():
    assert sv.exposed_cpu_s(VLLM, 1e-3, 5e-3, speculative=True) == 0.0
    assert sv.exposed_cpu_s(VLLM, 6e-3, 5e-3, speculative=True) == pytest.approx(1e-3)
    assert sv.exposed_cpu_s(SGLANG, 1e-3, 5e-3, speculative=False) == 0.0
    assert sv.exposed_cpu_s(SGLANG, 1e-3, 5e-3, speculative=True) == 1e-3  # overlap off for SD
    assert sv.exposed_cpu_s(V0_GRAPH, 1e-3, 5e-3, speculative=True) == 1e-3


def test_rejection_sampling_reads_b_gamma_plus_one_rows_and_b_gamma_draft_rows():
    b, gamma, vocab, bw = 8, 4, 128256, 3.35e12
    want = vocab * b * ((gamma + 1) * VLLM.sampler_bytes_per_element
                        + gamma * VLLM.rejection_bytes_per_element) / bw
    assert sv.rejection_sampling_s(b, gamma, vocab, bw, VLLM) == pytest.approx(want)
    assert sv.rejection_sampling_s(2 * b, gamma, vocab, bw, VLLM) == pytest.approx(2 * want)
    only_sampler = EngineCosts(name="s", sampler_bytes_per_element=1.0)
    only_rejection = EngineCosts(name="r", rejection_bytes_per_element=1.0)
    assert sv.rejection_sampling_s(b, gamma, vocab, 1.0, only_sampler) == vocab * b * (gamma + 1)
    assert sv.rejection_sampling_s(b, gamma, vocab, 1.0, only_rejection) == vocab * b * gamma


@pytest.mark.parametrize("name", sorted(ep.PRESETS))
def test_every_constant_a_preset_sets_has_a_source(name):
    c = ep.preset(name)
    blank = EngineCosts(name="blank")
    for f in fields(EngineCosts):
        if f.name in ("name", "version", "sources"):
            continue
        if getattr(c, f.name) != getattr(blank, f.name):
            src = c.sources.get(f.name, "")
            assert len(src) > 20, f"{name}.{f.name} has no source"
    if c.cuda_graphs:
        assert len(c.sources.get("capture_unit", "")) > 20
    assert c.version


def test_overrides_reject_unknown_fields_by_name_and_validate_values():
    with pytest.raises(SpecsimError, match="launch_us"):
        ep.with_overrides(VLLM, {"launch_us": 1.0, "launch_s": 1e-6})
    c = ep.with_overrides(VLLM, {"launch_s": 9e-6, "capture_sizes": [1, 2, 3]})
    assert c.launch_s == 9e-6 and c.capture_sizes == (1, 2, 3)
    assert c.sources["launch_s"] == "user override"
    assert VLLM.launch_s == 4.5e-6  # the preset itself is untouched
    with pytest.raises(SpecsimError, match="cpu_per_seq_s"):
        ep.with_overrides(VLLM, {"cpu_per_seq_s": -1.0})


@pytest.mark.parametrize("kwargs, field", [
    ({"launch_s": -1e-6}, "launch_s"),
    ({"cpu_step_fixed_s": math.nan}, "cpu_step_fixed_s"),
    ({"graph_replay_s": math.inf}, "graph_replay_s"),
    ({"kernels_per_layer": 2.5}, "kernels_per_layer"),
    ({"capture_sizes": (1, 4, 2)}, "capture_sizes"),
    ({"capture_sizes": (0, 1)}, "capture_sizes"),
    ({"capture_sizes_sd": (2, 2)}, "capture_sizes_sd"),
    ({"verify_scoring": "tree"}, "verify_scoring"),
    ({"capture_unit": "pages"}, "capture_unit"),
    ({"cuda_graphs": "yes"}, "cuda_graphs"),
])
def test_bad_values_are_one_clear_error_naming_the_field(kwargs, field):
    with pytest.raises(SpecsimError, match=field):
        EngineCosts(name="bad", **kwargs)


def test_unknown_preset_suggests_the_closest_names():
    with pytest.raises(SpecsimError, match="did you mean vllm"):
        ep.preset("vlm")


def test_ideal_adds_exactly_zero_and_keeps_the_backend_overheads():
    c = IDEAL
    assert not sv.replaces_backend_overheads(c)
    for n in (1, 9, 300):
        assert sv.forward_launch_s(n, 80, c, q_per_seq=5, tp=4) == 0.0
        assert sv.padded_tokens(n, 5, c) == 5 * n
        assert sv.cpu_step_s(c, n, 5 * n, 5 * n) == 0.0
        assert sv.proposer_s(c, n) == 0.0
        assert sv.rejection_sampling_s(n, 4, 128256, 3.35e12, c) == 0.0
    assert sv.verify_shape(8, 4, c) == (8, 5)
    assert sv.replaces_backend_overheads(ep.with_overrides(c, {"proposer_step_s": 1e-5}))
    assert sv.replaces_backend_overheads(ep.with_overrides(c, {"verify_scoring": "batch_expansion"}))
    for name in ep.PRESETS.keys() - {"ideal"}:
        assert sv.replaces_backend_overheads(ep.preset(name))
