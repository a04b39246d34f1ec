"""KV-cache sizing as vLLM does it (MODEL.md section 6, issue 16 part 4). Pure functions.

vLLM sizes the cache once, at start-up, per GPU (the smallest over the tp workers wins):

    available = total_bytes * gpu_memory_utilization
                - weights - activation peak of one profiling step - non-torch memory
                - CUDA-graph memory (only where vLLM profiles it, see cuda_graph_bytes)
    num_gpu_blocks = available // (block_size * KV bytes per token per GPU)

Sources (vllm-project/vllm):
- v0 `vllm/worker/worker.py::determine_num_available_blocks` and V1
  `vllm/v1/worker/gpu_worker.py::determine_available_memory`: `total_gpu_memory` is
  `torch.cuda.mem_get_info()[1]` (what the device reports, in bytes), multiplied by
  `gpu_memory_utilization`, minus the profiled peak.
- `memory_profiling` (`vllm/utils.py` v0.6.5-v0.9, later `vllm/utils/mem_utils.py`):
  non_kv_cache_memory = weights_memory + torch_peak_increase + non_torch_increase (PR #10511).
- The profiling step (`profile_run`): one forward over max_num_batched_tokens tokens split across
  max_num_seqs dummy sequences, then the sampler over one row per sequence (v0
  `vllm/worker/model_runner.py::profile_run` samples with top_p=0.99, top_k=vocab-1; V1
  `gpu_model_runner.py::_dummy_sampler_run` uses min(max_num_seqs, max_num_batched_tokens) rows
  and, per its own NOTE, may skip top-k/top-p).

Every size here is in bytes. Models come in as plain numbers; simulator/deploy/memory.py feeds
them from the catalogues.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from simulator.hardware.gpus import REPORTED_HBM_BYTES  # noqa: F401  (re-exported)

GiB = 2**30
MiB = 2**20

# What each catalogue GPU reports as its total memory, with sources: simulator/hardware/gpus.py.

# Bytes alive per sampled row per vocabulary entry at the sampler's peak, by engine generation.
# v0 (vllm/model_executor/layers/sampler.py, v0.6-0.8), profiled with top_p=0.99, top_k=vocab-1:
# at the re-sort in _apply_top_k_top_p the runner still holds the bf16 logits (2), and alive are
# the fp32 logits (4), logits_sort (4), logits_idx int64 (8), top_k_mask bool (1), probs_sort (4),
# probs_sum (4), top_p_mask bool (1) and the scattered result (4): 32.
SAMPLER_BYTES_V0 = 2 + 4 + 4 + 8 + 1 + 4 + 4 + 1 + 4
# V1 (vllm/v1/sample/sampler.py): the dummy run skips top-k/top-p; alive are the bf16 logits (2),
# the fp32 copy from apply_temperature (4), softmax probs (4) and random_sample's q (4): 14.
SAMPLER_BYTES_V1 = 2 + 4 + 4 + 4
SAMPLER_BYTES = {"v0": SAMPLER_BYTES_V0, "v1": SAMPLER_BYTES_V1}

# Memory outside PyTorch's allocator that vLLM's profiler charges (CUDA libraries' workspaces, NCCL
# and custom all-reduce buffers): readings, (GiB, source). Not derivable from the model.
NON_TORCH_READINGS: dict[str, tuple[float, str]] = {
    "80GB-tp1": (1.79, "vLLM v0.6.5 dev log, Meta-Llama-3-8B tp=1, total 79.22 GiB: 'non_torch_memory "
                       "1.79GiB', https://github.com/vllm-project/vllm/pull/10511"),
    "80GB-tp2": (3.58, "same log, -tp 2: 'non_torch_memory 3.58GiB', "
                       "https://github.com/vllm-project/vllm/pull/10511"),
    "3090-tp1": (0.35, "vLLM v0.6.4.post1, Llama-3.1-8B on RTX 3090: 'non_torch_memory=0.35GiB', "
                       "https://github.com/vllm-project/vllm/issues/10517"),
    "3090-tpN": (0.20, "vLLM ~v0.8, RTX 3090 multi-GPU: 'non_torch_memory takes 0.20GiB', "
                       "https://github.com/vllm-project/vllm/pull/14447"),
}

# CUDA-graph pool per captured graph: 0.36 GiB for 16 PIECEWISE graphs in vLLM 0.27.1's
# "Estimated CUDA graph memory" log (https://github.com/gpustack/runner/pull/251), i.e. 23 MiB;
# https://github.com/vllm-project/vllm/issues/50780 reports real FULL graphs at ~24 MiB each.
PER_GRAPH_BYTES = 0.36 * GiB / 16

# vLLM v0 BlockSpaceManager(watermark=0.01): admission keeps 1% of all GPU blocks free
# (vllm/core/block_manager.py::can_allocate). V1's KVCacheManager has no watermark.
V0_WATERMARK = 0.01


def activation_peak_bytes(hidden: int, ffn: int, vocab: int, n_heads: int, head_dim: int, tp: int,
                          max_num_batched_tokens: int, max_num_seqs: int, sampled_per_seq: int,
                          dtype_bytes: float, *, n_kv_heads: int | None = None,
                          engine: str = "v1") -> float:
    """Peak PyTorch allocation of vLLM's profiling step on one GPU, above the weights.

    The forward (LlamaDecoderLayer as vLLM runs it, per token): in the MLP, while down_proj
    writes its output, alive are the residual (h), the normed input still held by the caller (h),
    gate_up (2f/tp, still bound in LlamaMLP.forward), the SiluAndMul output (f/tp) and the down_proj
    output (h): 3h + 3f/tp. In attention: residual, normed input, qkv ((nh + 2 nkv) hd / tp) and
    the attention output (nh hd / tp). The larger of the two, times the tokens.
    The sampler (rank 0 only, logits gathered to the full vocabulary, so tp does not split it):
    rows = min(max_num_seqs, tokens) * sampled_per_seq, times vocab, times SAMPLER_BYTES[engine];
    the forward's output hidden states [tokens, h] are still held by the runner then.
    The step's peak is the larger of forward and sampler; they do not overlap.
    """
    if engine not in SAMPLER_BYTES:
        raise ValueError(f"engine must be one of {sorted(SAMPLER_BYTES)}, got {engine!r}")
    t = max_num_batched_tokens
    nkv = n_heads if n_kv_heads is None else n_kv_heads
    mlp = 3 * hidden + 3 * ffn / tp
    attn = 2 * hidden + (2 * n_heads + 2 * nkv) * head_dim / tp
    forward = t * max(mlp, attn) * dtype_bytes
    rows = min(max_num_seqs, t) * sampled_per_seq
    sampler = rows * vocab * SAMPLER_BYTES[engine] + t * hidden * dtype_bytes
    return float(max(forward, sampler))


def cuda_graph_bytes(n_graphs: int, *, eager: bool = False, profiled: bool = True,
                     per_graph_bytes: float = PER_GRAPH_BYTES) -> float:
    """CUDA-graph memory vLLM subtracts before sizing the KV cache.

    0 in eager mode (no graphs). 0 as well where vLLM does not profile graphs: before PR #30515
    graphs were captured after the KV cache was allocated and lived in the (1 - utilisation)
    margin; since v0.21.0 VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1 is the default ("default since
    v0.21.0" in vLLM 0.27.1's log, gpustack/runner PR #251) and each captured graph is charged.
    """
    if eager or not profiled:
        return 0.0
    return float(n_graphs * per_graph_bytes)


def non_torch_bytes(tp: int) -> float:
    """Non-torch memory charged per GPU at tensor parallel `tp`, from the only readings on an 80 GB
    part (PR #10511: tp=1 1.79 GiB, tp=2 3.58 GiB). No reading above tp=2 was found; the tp=2 figure
    is kept for larger tp (NCCL buffers grow with channels, not linearly with peers)."""
    if tp < 1:
        raise ValueError(f"tp must be >= 1, got {tp}")
    key = "80GB-tp1" if tp == 1 else "80GB-tp2"
    return NON_TORCH_READINGS[key][0] * GiB


def kv_bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, tp: int,
                       dtype_bytes: float) -> float:
    """K and V of one token on one GPU; heads are replicated when tp exceeds them (vLLM does)."""
    heads = max(1, -(-n_kv_heads // tp))
    return float(2 * n_layers * heads * head_dim * dtype_bytes)


def kv_blocks(total_bytes: float, utilisation: float, weight_bytes_per_gpu: float,
              activation_bytes: float, graph_bytes: float, non_torch_bytes: float,
              kv_bytes_per_token_per_gpu: float, block_size: int) -> int:
    """vLLM's num_gpu_blocks: what is left under utilisation, in whole blocks (never negative)."""
    budget = available_kv_bytes(total_bytes, utilisation, weight_bytes_per_gpu, activation_bytes,
                                graph_bytes, non_torch_bytes)
    return max(0, int(budget // (block_size * kv_bytes_per_token_per_gpu)))


def available_kv_bytes(total_bytes: float, utilisation: float, weight_bytes_per_gpu: float,
                       activation_bytes: float, graph_bytes: float, non_torch_bytes: float) -> float:
    return (total_bytes * utilisation - weight_bytes_per_gpu - activation_bytes - graph_bytes
            - non_torch_bytes)


@dataclass(frozen=True)
class KVPlan:
    """Every term of the sizing, per GPU, in bytes; the cache in blocks and tokens (per replica:
    each tp worker holds the same number of blocks, each block a 1/tp slice of the heads)."""

    total_bytes: float
    utilisation: float
    weight_bytes: float
    activation_bytes: float
    graph_bytes: float
    non_torch_bytes: float
    kv_budget_bytes: float
    kv_bytes_per_token: float
    block_size: int
    num_blocks: int

    @property
    def kv_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def concurrent_requests(self, mean_tokens: float) -> float:
        """Requests of mean_tokens (prompt + output) the cache holds at once; with max_model_len this
        is vLLM's 'Maximum concurrency for N tokens per request' line."""
        if mean_tokens <= 0:
            raise ValueError(f"mean_tokens must be > 0, got {mean_tokens}")
        return self.kv_tokens / mean_tokens

    def as_dict(self) -> dict:
        return {**asdict(self), "kv_tokens": self.kv_tokens}


def plan_kv(total_bytes: float, utilisation: float, weight_bytes_per_gpu: float,
            activation_bytes: float, graph_bytes: float, non_torch: float,
            kv_bytes_per_token_per_gpu: float, block_size: int) -> KVPlan:
    """The KVPlan for these terms (same arithmetic as kv_blocks)."""
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation must be in (0, 1], got {utilisation}")
    if kv_bytes_per_token_per_gpu <= 0 or block_size < 1:
        raise ValueError("kv_bytes_per_token_per_gpu must be > 0 and block_size >= 1")
    budget = available_kv_bytes(total_bytes, utilisation, weight_bytes_per_gpu, activation_bytes,
                                graph_bytes, non_torch)
    blocks = kv_blocks(total_bytes, utilisation, weight_bytes_per_gpu, activation_bytes, graph_bytes,
                       non_torch, kv_bytes_per_token_per_gpu, block_size)
    return KVPlan(float(total_bytes), utilisation, float(weight_bytes_per_gpu),
                  float(activation_bytes), float(graph_bytes), float(non_torch), float(budget),
                  float(kv_bytes_per_token_per_gpu), block_size, blocks)


# ---- admission and growth, as vLLM's schedulers count blocks -----------------------------------
def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks holding `tokens` slots (a partly filled block is a whole block)."""
    return -(-max(0, tokens) // block_size)


def v0_can_admit(free_blocks: int, total_blocks: int, prompt_tokens: int, block_size: int,
                 watermark: float = V0_WATERMARK, lookahead: int = 0) -> bool:
    """vLLM v0 BlockSpaceManager.can_allocate: the WHOLE prompt (plus lookahead slots) must fit
    with int(watermark * total_blocks) blocks left free. (AllocStatus.NEVER, a prompt larger than
    total - watermark, is also False here.)"""
    need = blocks_for(prompt_tokens + lookahead, block_size)
    return free_blocks - need >= int(watermark * total_blocks)


def v1_blocks_to_allocate(held_blocks: int, computed_tokens: int, new_tokens: int,
                          lookahead: int, block_size: int) -> int:
    """vLLM V1 KVCacheManager.allocate_slots: blocks to add so that computed + new + lookahead
    slots are covered; the step is refused (None in vLLM) when this exceeds the free blocks."""
    return max(0, blocks_for(computed_tokens + new_tokens + lookahead, block_size) - held_blocks)
