"""vLLM-faithful KV sizing (simulator/deploy/kv_sizing.py): closed forms term by term, the HBM
table, and published vLLM start-up logs reproduced from their stated configurations."""
from __future__ import annotations

import math

import pytest

from simulator.deploy.kv_sizing import (
    GiB, MiB, NON_TORCH_READINGS, PER_GRAPH_BYTES, REPORTED_HBM_BYTES, SAMPLER_BYTES_V0,
    SAMPLER_BYTES_V1, KVPlan, activation_peak_bytes, blocks_for, cuda_graph_bytes, kv_blocks,
    kv_bytes_per_token, non_torch_bytes, plan_kv, v0_can_admit, v1_blocks_to_allocate)

# Model shapes from the public HF config.json files (hidden, ffn, vocab, heads, kv heads, head_dim,
# layers) and published parameter counts.
LLAMA3_8B = dict(hidden=4096, ffn=14336, vocab=128256, n_heads=32, head_dim=128)  # Meta-Llama-3-8B
LLAMA3_8B_PARAMS = 8.03e9
LLAMA2_70B = dict(hidden=8192, ffn=28672, vocab=32000, n_heads=64, head_dim=128)  # Llama-2-70b-hf
LLAMA2_70B_PARAMS = 68.98e9

# simulator/catalog.py GPUS names at 02f0661 (the catalogue is being moved; listed here).
CATALOGUE_GPUS = ["h100-sxm", "h100-pcie", "h200-sxm", "b200", "a100-80gb-sxm", "l40s", "l4",
                  "mi300x", "mi325x"]


def _act(model, tp, tokens, seqs=256, per_seq=1, engine="v0", nkv=8):
    return activation_peak_bytes(**model, tp=tp, max_num_batched_tokens=tokens, max_num_seqs=seqs,
                                 sampled_per_seq=per_seq, dtype_bytes=2, n_kv_heads=nkv, engine=engine)


# ---- the HBM table -----------------------------------------------------------------------------
def test_every_catalogue_gpu_has_a_reported_size_with_a_source():
    for name in CATALOGUE_GPUS:
        size, source = REPORTED_HBM_BYTES[name]
        assert isinstance(size, int) and size > 10 * GiB
        assert "http" in source or source.startswith("UNVERIFIED"), name


def test_80gb_parts_hold_about_80_gib_not_80e9_bytes():
    # "80 GB" H100/A100: the device reports just under 80 GiB (85.9e9 bytes), never 80e9.
    for name in ("h100-sxm", "a100-80gb-sxm"):
        size, _ = REPORTED_HBM_BYTES[name]
        assert 79 * GiB < size < 80 * GiB
        assert size > 84e9


def test_reported_values_are_the_cited_readings():
    assert REPORTED_HBM_BYTES["h100-sxm"][0] == int(79.11 * GiB)  # vllm#27508 OOM text
    assert REPORTED_HBM_BYTES["a100-80gb-sxm"][0] == int(79.25 * GiB)  # OOTDiffusion#235
    assert REPORTED_HBM_BYTES["a100-40gb"][0] == 42298834944  # deviceQuery, bottlerocket#3873
    assert REPORTED_HBM_BYTES["l40s"][0] == 46068 * MiB  # nvidia-smi, modal-client#2797
    assert REPORTED_HBM_BYTES["l4"][0] == 23034 * MiB
    assert REPORTED_HBM_BYTES["mi300x"][0] == 206141652992  # rocm-smi, legacy-rocm-build#4750
    assert REPORTED_HBM_BYTES["b200"][0] == int(178.35 * GiB)  # pytorch/ao#4002


# ---- activation peak, term by term ---------------------------------------------------------------
def test_forward_regime_is_tokens_times_3h_plus_3f_over_tp():
    t, tp = 20000, 1
    expect = t * (3 * 4096 + 3 * 14336 / tp) * 2
    assert _act(LLAMA3_8B, tp, t) == pytest.approx(expect)
    assert _act(LLAMA3_8B, tp, 2 * t) == pytest.approx(2 * expect)  # linear in tokens


def test_tp_splits_only_the_mlp_intermediate():
    t = 40000
    one, two = _act(LLAMA3_8B, 1, t), _act(LLAMA3_8B, 2, t)
    assert one - two == pytest.approx(t * 3 * 14336 / 2 * 2)  # 3f/tp halves, 3h does not


def test_sampler_regime_is_rows_times_vocab_times_bytes_plus_hidden_states():
    t, seqs = 2048, 256
    expect = seqs * 128256 * SAMPLER_BYTES_V0 + t * 4096 * 2
    assert _act(LLAMA3_8B, 1, t, seqs) == pytest.approx(expect)
    assert _act(LLAMA3_8B, 4, t, seqs) == pytest.approx(expect)  # gathered logits: tp-invariant
    v1 = _act(LLAMA3_8B, 1, t, seqs, engine="v1")
    assert v1 == pytest.approx(seqs * 128256 * SAMPLER_BYTES_V1 + t * 4096 * 2)
    assert (SAMPLER_BYTES_V0, SAMPLER_BYTES_V1) == (32, 14)


def test_sampled_rows_scale_with_positions_per_sequence_and_cap_at_tokens():
    base = _act(LLAMA3_8B, 1, 512, seqs=64)
    five = _act(LLAMA3_8B, 1, 512, seqs=64, per_seq=5)  # a verify step scores gamma+1 positions
    assert five - base == pytest.approx(4 * 64 * 128256 * SAMPLER_BYTES_V0)
    # rows = min(max_num_seqs, tokens): 256 sequences cannot sample more rows than 100 tokens
    assert _act(LLAMA3_8B, 1, 100, seqs=256) == _act(LLAMA3_8B, 1, 100, seqs=100)


def test_attention_branch_counts_when_it_is_the_larger():
    # a narrow-MLP, many-head shape: attention's 2h + (2nh+2nkv)hd dominates 3h + 3f
    shape = dict(hidden=1024, ffn=512, vocab=8, n_heads=64, head_dim=128)
    got = activation_peak_bytes(**shape, tp=1, max_num_batched_tokens=4096, max_num_seqs=1,
                                sampled_per_seq=1, dtype_bytes=2, n_kv_heads=64)
    assert got == pytest.approx(4096 * (2 * 1024 + (2 * 64 + 2 * 64) * 128) * 2)


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="engine"):
        _act(LLAMA3_8B, 1, 512, engine="v2")


# ---- graphs, non-torch, KV per token -----------------------------------------------------------
def test_cuda_graph_bytes():
    assert cuda_graph_bytes(35, eager=True) == 0.0
    assert cuda_graph_bytes(35, profiled=False) == 0.0
    assert cuda_graph_bytes(16) == pytest.approx(0.36 * GiB)  # the gpustack/runner#251 log
    assert PER_GRAPH_BYTES == pytest.approx(23.04 * MiB)
    assert cuda_graph_bytes(10, per_graph_bytes=MiB) == 10 * MiB


def test_non_torch_bytes_are_the_cited_readings():
    assert non_torch_bytes(1) == pytest.approx(1.79 * GiB)
    assert non_torch_bytes(2) == pytest.approx(3.58 * GiB)
    assert non_torch_bytes(8) == non_torch_bytes(2)
    assert all("http" in src for _, src in NON_TORCH_READINGS.values())
    with pytest.raises(ValueError):
        non_torch_bytes(0)


def test_kv_bytes_per_token_splits_then_replicates_heads():
    assert kv_bytes_per_token(80, 8, 128, 2, 2) == 2 * 80 * 4 * 128 * 2
    assert kv_bytes_per_token(80, 8, 128, 16, 2) == 2 * 80 * 1 * 128 * 2  # one head kept per GPU


# ---- blocks and the plan -------------------------------------------------------------------------
BLOCK = 16 * 131072  # 16 tokens of Llama-3-8B at tp=1


def _blocks(**kw):
    args = dict(total_bytes=100 * BLOCK, utilisation=1.0, weight_bytes_per_gpu=10 * BLOCK,
                activation_bytes=5 * BLOCK, graph_bytes=3 * BLOCK, non_torch_bytes=2 * BLOCK,
                kv_bytes_per_token_per_gpu=131072, block_size=16)
    args.update(kw)
    return kv_blocks(**args)


def test_each_subtracted_term_costs_its_blocks():
    assert _blocks() == 80
    assert _blocks(weight_bytes_per_gpu=11 * BLOCK) == 79
    assert _blocks(activation_bytes=7 * BLOCK) == 78
    assert _blocks(graph_bytes=0) == 83
    assert _blocks(non_torch_bytes=2 * BLOCK + 1) == 79  # a partial block is no block
    assert _blocks(utilisation=0.5) == 30  # 50 - 20
    assert _blocks(block_size=32) == 40
    assert _blocks(weight_bytes_per_gpu=200 * BLOCK) == 0  # never negative


def test_plan_carries_every_term_and_concurrency():
    p = plan_kv(100 * BLOCK, 0.9, 10 * BLOCK, 5 * BLOCK, 0.0, 2 * BLOCK, 131072, 16)
    assert isinstance(p, KVPlan)
    assert p.kv_budget_bytes == pytest.approx(90 * BLOCK - 17 * BLOCK)
    assert p.num_blocks == 73 and p.kv_tokens == 73 * 16
    assert p.concurrent_requests(73 * 4) == pytest.approx(4.0)
    d = p.as_dict()
    for key in ("total_bytes", "weight_bytes", "activation_bytes", "graph_bytes", "non_torch_bytes",
                "kv_budget_bytes", "kv_tokens"):
        assert key in d
    with pytest.raises(ValueError):
        p.concurrent_requests(0)
    with pytest.raises(ValueError):
        plan_kv(100 * BLOCK, 1.5, 0, 0, 0, 0, 131072, 16)


# ---- admission and growth as vLLM counts blocks --------------------------------------------------
def test_v0_admission_keeps_the_watermark_free():
    # 1000 blocks, watermark 0.01 -> 10 blocks must stay free after the whole prompt is placed
    assert v0_can_admit(free_blocks=20, total_blocks=1000, prompt_tokens=160, block_size=16)
    assert not v0_can_admit(free_blocks=20, total_blocks=1000, prompt_tokens=161, block_size=16)
    assert not v0_can_admit(free_blocks=20, total_blocks=1000, prompt_tokens=150, block_size=16,
                            lookahead=11)  # lookahead slots count too
    assert v0_can_admit(free_blocks=20, total_blocks=1000, prompt_tokens=320, block_size=16,
                        watermark=0.0)


def test_v1_allocation_covers_computed_new_and_lookahead_slots():
    assert blocks_for(0, 16) == 0 and blocks_for(16, 16) == 1 and blocks_for(17, 16) == 2
    # a decode of 1 token with gamma=4 lookahead at 30 computed tokens: 35 slots -> 3 blocks
    assert v1_blocks_to_allocate(held_blocks=2, computed_tokens=30, new_tokens=1, lookahead=4,
                                 block_size=16) == 1
    assert v1_blocks_to_allocate(held_blocks=2, computed_tokens=20, new_tokens=1, lookahead=4,
                                 block_size=16) == 0


# ---- published vLLM start-up logs, from their stated configurations ------------------------------
# v0 engine without chunked prefill: max_num_batched_tokens = max_model_len; max_num_seqs 256.
# The non-torch term is the one each log prints (not derivable from the model); weights,
# activation and KV bytes per token are this module's.
def _llama3_8b_plan(total_gib, tp, tokens, non_torch_gib):
    act = _act(LLAMA3_8B, tp, tokens)
    return plan_kv(total_gib * GiB, 0.9, LLAMA3_8B_PARAMS * 2 / tp, act, 0.0, non_torch_gib * GiB,
                   kv_bytes_per_token(32, 8, 128, tp, 2), 16)


def test_pr10511_llama3_8b_tp1_available_kv():
    # https://github.com/vllm-project/vllm/pull/10511 (v0.6.5 dev): total_gpu_memory 79.22GiB,
    # util 0.90, weights 14.96GiB, non_torch 1.79GiB, activation 1.26GiB, available_kv 53.29GiB.
    p = _llama3_8b_plan(79.22, 1, 8192, 1.79)
    assert p.weight_bytes / GiB == pytest.approx(14.96, abs=0.01)
    assert p.kv_budget_bytes / GiB == pytest.approx(53.29, rel=0.05)  # ours 53.51 (+0.4%)
    # our activation 1.04 GiB vs the logged 1.26: torch.sort's workspace is not counted
    assert p.activation_bytes / GiB == pytest.approx(1.26, rel=0.2)


def test_pr10511_llama3_8b_tp2_available_kv():
    # same PR, `-tp 2`: weights 7.48GiB, non_torch 3.58GiB, activation 1.26GiB; the excerpt ends
    # before the available line, so the logged total is 71.29 - 7.48 - 3.58 - 1.26 = 58.97GiB.
    p = _llama3_8b_plan(79.22, 2, 8192, 3.58)
    assert p.weight_bytes / GiB == pytest.approx(7.48, abs=0.01)
    assert p.kv_budget_bytes / GiB == pytest.approx(58.97, rel=0.05)  # ours 59.20 (+0.4%)


@pytest.mark.parametrize("max_model_len, logged_blocks, logged_activation_gib", [
    (20000, 1952, 17.06 - 14.99),
    (29000, 1478, 17.98 - 14.99),
])
def test_issue10517_llama31_8b_rtx3090_gpu_blocks(max_model_len, logged_blocks,
                                                   logged_activation_gib):
    # https://github.com/vllm-project/vllm/issues/10517 (v0.6.4.post1, RTX 3090): total 23.58GiB,
    # util 0.90, non_torch 0.35GiB, peak_torch 17.06 / 17.98 GiB (weights 14.99 GB),
    # '# GPU blocks: 1952' / '# GPU blocks: 1478'. Ours: 1973 (+1.1%) and 1499 (+1.4%).
    p = _llama3_8b_plan(23.58, 1, max_model_len, 0.35)
    assert p.num_blocks == pytest.approx(logged_blocks, rel=0.05)
    assert p.activation_bytes / GiB == pytest.approx(logged_activation_gib, rel=0.05)
    assert p.concurrent_requests(max_model_len) == pytest.approx(
        logged_blocks * 16 / max_model_len, rel=0.05)  # 'Maximum concurrency ... 1.56x' at 20000


def test_llama2_70b_on_two_a100_holds_several_times_what_specsim_gave():
    # specsim at 02f0661 (simulator/memory.py) gives 8,711 KV tokens for Llama-2-70B on 2x A100-80GB
    # tp=2, util 0.9, max_num_batched_tokens 512 (decimal 80e9 bytes, a 1.5 GB fixed reserve).
    tp, tokens = 2, 512
    act = _act(LLAMA2_70B, tp, tokens)
    p = plan_kv(REPORTED_HBM_BYTES["a100-80gb-sxm"][0], 0.9, LLAMA2_70B_PARAMS * 2 / tp, act,
                cuda_graph_bytes(35, profiled=False), non_torch_bytes(tp),
                kv_bytes_per_token(80, 8, 128, tp, 2), 16)
    assert p.kv_tokens == pytest.approx(21296, rel=0.01)
    assert p.kv_tokens > 2 * 8711
    assert math.isclose(p.kv_tokens / 8711, 2.44, rel_tol=0.02)
