"""GPU memory: how many KV-cache tokens a deployment holds (MODEL.md section 6), sized as vLLM
sizes it (simulator/deploy/kv_sizing.py has the terms and their sources). Pure functions.

Per GPU: the memory the device reports x gpu_memory_utilization - target weights / tp - a
colocated draft's weights / draft_tp - the activation peak of the profiling step - CUDA-graph
memory (where the engine profiles it) - non-torch memory (CUDA/NCCL workspaces) = KV budget,
in whole blocks; each token costs the target's and a colocated draft's KV bytes per GPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from simulator.deploy import kv_sizing
from simulator.hardware.gpus import GPU
from simulator.hardware.models import BYTES_PER_DTYPE, ModelArch
from simulator.latency.engine_presets import PRESETS
from simulator.latency.serving import EngineCosts, graph_batch

GB = 1e9


@dataclass(frozen=True)
class MemoryPlan:
    usable_gb: float  # per GPU: reported memory x gpu_memory_utilization
    target_weights_gb: float  # per GPU
    draft_weights_gb: float  # per GPU
    activation_reserve_gb: float  # per GPU: the profiling step's activation peak (+ SSD tree KV)
    kv_budget_gb: float  # per GPU
    kv_bytes_per_token: float  # per GPU, target + draft
    kv_capacity_tokens: int  # per replica, whole blocks
    cuda_graph_gb: float = 0.0  # per GPU
    non_torch_gb: float = 0.0  # per GPU
    device_gb: float = 0.0  # per GPU: what the device reports

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def overhead_gb(self) -> float:
        """Everything but weights and KV: activations, graphs, non-torch memory."""
        return self.activation_reserve_gb + self.cuda_graph_gb + self.non_torch_gb


def activation_reserve_bytes(target: ModelArch, tp: int, max_batched_tokens: int, max_seqs: int,
                             logits_per_seq: int, dtype: str,
                             engine: EngineCosts = PRESETS["vllm"]) -> float:
    """Peak activations of the profiling step vLLM runs before sizing its KV cache."""
    return kv_sizing.activation_peak_bytes(
        target.hidden, target.ffn, target.vocab, target.n_heads, target.head_dim, tp,
        max_batched_tokens, max_seqs, logits_per_seq, BYTES_PER_DTYPE[dtype],
        n_kv_heads=target.n_kv_heads, engine=engine.sampler_generation)


def engine_overhead_bytes(engine: EngineCosts, tp: int, q_per_seq: int, speculative: bool) -> tuple:
    """(CUDA-graph bytes, non-torch bytes) per GPU that the engine keeps from the KV cache.
    The "ideal" engine (no implementation modelled) keeps nothing."""
    if engine.name == "ideal":
        return 0.0, 0.0
    n_graphs = 0
    if engine.cuda_graphs:
        sizes = engine.capture_sizes_sd if speculative and engine.capture_sizes_sd else engine.capture_sizes
        n_graphs = len({graph_batch(s, engine, q_per_seq, speculative) for s in sizes})
    graphs = kv_sizing.cuda_graph_bytes(n_graphs, eager=not engine.cuda_graphs,
                                        profiled=engine.graph_memory_profiled)
    return graphs, kv_sizing.non_torch_bytes(tp)


def plan_memory(target: ModelArch, gpu: GPU, tp: int, dtype: str, utilisation: float,
                reserve_bytes: float, draft: ModelArch | None = None,
                draft_tp: int | None = None, *, block_size: int = 1,
                graph_bytes: float = 0.0, non_torch_bytes: float = 0.0) -> MemoryPlan:
    total = gpu.memory_bytes
    usable = total * utilisation
    tw = target.weight_bytes(dtype) / tp
    kv = target.kv_bytes_per_token(tp, dtype)
    dw = 0.0
    if draft is not None:
        dtp = draft_tp or tp
        dw = draft.weight_bytes(dtype) / dtp
        kv += draft.kv_bytes_per_token(dtp, dtype)
    budget = usable - tw - dw - reserve_bytes - graph_bytes - non_torch_bytes
    cap = int(max(budget, 0.0) // (kv * block_size)) * block_size
    return MemoryPlan(usable / GB, tw / GB, dw / GB, reserve_bytes / GB, budget / GB, kv, cap,
                      graph_bytes / GB, non_torch_bytes / GB, total / GB)
