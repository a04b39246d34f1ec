"""GPU memory: how many KV-cache tokens a deployment holds (MODEL.md section 6). Pure functions.

Per GPU: HBM * utilisation - target weights / tp - colocated draft weights / draft_tp -
activation reserve = KV budget; each token costs the target's and the draft's KV bytes per GPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from simulator.hardware.models import BYTES_PER_DTYPE, ModelArch
from simulator.hardware.gpus import GPU

GB = 1e9
# CUDA context, NCCL buffers, CUDA graphs: a fixed slice vLLM cannot give to the KV cache.
FIXED_RESERVE_BYTES = 1.5 * GB


@dataclass(frozen=True)
class MemoryPlan:
    usable_gb: float  # per GPU
    target_weights_gb: float  # per GPU
    draft_weights_gb: float  # per GPU
    activation_reserve_gb: float  # per GPU
    kv_budget_gb: float  # per GPU
    kv_bytes_per_token: float  # per GPU, target + draft
    kv_capacity_tokens: int  # per replica

    def as_dict(self) -> dict:
        return asdict(self)


def activation_reserve_bytes(target: ModelArch, tp: int, max_batched_tokens: int, max_seqs: int,
                             logits_per_seq: int, dtype: str) -> float:
    """Peak activations of the largest step vLLM profiles before sizing its KV cache."""
    by = BYTES_PER_DTYPE[dtype]
    hidden_states = max_batched_tokens * (6 * target.hidden + 2 * target.ffn / tp) * by
    logits = max_seqs * logits_per_seq * target.vocab / tp * 4  # fp32 logits for sampling
    return FIXED_RESERVE_BYTES + hidden_states + logits


def plan_memory(target: ModelArch, gpu: GPU, tp: int, dtype: str, utilisation: float,
                reserve_bytes: float, draft: ModelArch | None = None,
                draft_tp: int | None = None) -> MemoryPlan:
    usable = gpu.hbm_gb * GB * utilisation
    tw = target.weight_bytes(dtype) / tp
    kv = target.kv_bytes_per_token(tp, dtype)
    dw = 0.0
    if draft is not None:
        dtp = draft_tp or tp
        dw = draft.weight_bytes(dtype) / dtp
        kv += draft.kv_bytes_per_token(dtp, dtype)
    budget = usable - tw - dw - reserve_bytes
    cap = int(max(budget, 0.0) // kv)
    return MemoryPlan(usable / GB, tw / GB, dw / GB, reserve_bytes / GB, budget / GB, kv, cap)
