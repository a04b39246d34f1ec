"""The per-GPU dimensions of one tensor-parallel shard of a catalogue model (heads / tp, kv heads
/ tp but at least 1, ffn / tp), as simulator/measure/torch_models.py builds it."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.hardware.models import ModelArch


@dataclass(frozen=True)
class ShardShape:
    """Per-GPU dimensions of one tensor-parallel shard."""

    family: str
    n_layers: int
    hidden: int
    n_heads: int  # query heads on this GPU
    n_kv_heads: int  # KV heads on this GPU (replicated when tp > kv heads)
    head_dim: int
    ffn: int  # MLP intermediate size on this GPU
    vocab: int  # full vocabulary (the LM head is not split here; see note in build_model)
    qkv_bias: bool
    gated_mlp: bool
    tied_embeddings: bool
    max_position: int


def shard_shape(arch: ModelArch, tp: int = 1, n_layers: int | None = None) -> ShardShape:
    why = arch.check_tp(tp)
    if why:
        raise ValueError(f"{arch.name}: {why}")
    return ShardShape(
        family=arch.family,
        n_layers=arch.n_layers if n_layers is None else int(n_layers),
        hidden=arch.hidden,
        n_heads=arch.n_heads // tp,
        n_kv_heads=max(1, arch.n_kv_heads // tp),
        head_dim=arch.head_dim,
        ffn=-(-arch.ffn // tp),
        vocab=arch.vocab,
        qkv_bias=arch.qkv_bias or arch.family == "opt",
        gated_mlp=arch.gated_mlp,
        tied_embeddings=arch.tied_embeddings,
        max_position=arch.max_position,
    )
