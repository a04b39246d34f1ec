"""The real models' KV cache: preallocated per-slot K/V with host-side lengths (see
simulator/measure/torch_models.py's docstring, "KV cache and mixed lengths")."""
from __future__ import annotations

import torch


class KVCache:
    """Preallocated K/V for `max_seqs` slots of up to `max_len` tokens, all layers.

    k, v: [n_layers, max_seqs, max_len, n_kv_heads, head_dim]; `lens` [max_seqs] (CPU LongTensor)
    is the number of valid positions per slot. Positions >= lens[slot] hold stale data that is
    never read (masked) and is overwritten by the next write: rolling back is O(1).
    """

    def __init__(self, n_layers, max_seqs, max_len, n_kv_heads, head_dim, dtype=torch.float32, device="cpu"):
        self.n_layers, self.max_seqs, self.max_len = n_layers, max_seqs, max_len
        shape = (n_layers, max_seqs, max_len, n_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lens = torch.zeros(max_seqs, dtype=torch.long)

    @classmethod
    def for_model(cls, model, max_seqs: int, max_len: int) -> "KVCache":
        """A cache for every layer of `model` (a torch_models.Transformer), in its dtype and device."""
        s = model.shape
        p = model.embed.weight
        return cls(len(model.layers), max_seqs, max_len, s.n_kv_heads, s.head_dim, p.dtype, p.device)

    def write(self, layer: int, slots: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """k, v token-major [b, s, hkv, d] written at (slots[j], positions[j, i])."""
        idx_s = slots[:, None]
        self.k[layer][idx_s, positions] = k
        self.v[layer][idx_s, positions] = v

    def gather(self, layer: int, slots: torch.Tensor, length: int):
        """K, V of `slots` up to `length` positions as [b, hkv, length, d] (a gather copy)."""
        k = self.k[layer][slots, :length].transpose(1, 2)
        v = self.v[layer][slots, :length].transpose(1, 2)
        return k, v

    def rollback(self, slot: int, n: int) -> None:
        """Drop the last n positions of `slot` (rejected draft tokens)."""
        if n < 0:
            raise ValueError("rollback by a negative count")
        if n > int(self.lens[slot]):
            raise ValueError(f"rollback of {n} positions but slot {slot} holds {int(self.lens[slot])}")
        self.lens[slot] -= n

    def rollback_many(self, slots, ns) -> None:
        for s_, n in zip(list(map(int, slots)), list(map(int, ns))):
            self.rollback(s_, n)

    def reset(self, slot: int) -> None:
        self.lens[slot] = 0
