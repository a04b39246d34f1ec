"""The timed callables of a capture: the model's parts at the tp shard shape, on rotating copies
of the weights and KV caches so that each timed call finds them as cold as in a real forward.

Rotation: a single layer re-run back to back would sit in the last-level cache, while in a
forward the same layer comes back only after all the others. So the bench holds as many distinct
layers as the model has (up to what overflows the cache twice), and cold copies of the LM head /
embedding / KV unless the whole model fits in the cache (machine.rotation).
"""
from __future__ import annotations

import itertools

from simulator.hardware.models import BYTES_PER_DTYPE, ModelArch
from simulator.measure.profiler.machine import _cache_bytes, _copies, n_copies, rotation
from simulator.measure.profiler.timing import _InContextAttention


class Bench:
    """Builders of the timed callables for one (model, tp, dtype, device)."""

    def __init__(self, torch, tm, arch: ModelArch, tp: int, dtype: str, tdt, device, seed: int):
        self.torch, self.tm, self.device, self.tdt = torch, tm, device, tdt
        self.by = BYTES_PER_DTYPE[dtype]
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.flush, n_rot = rotation(arch, tp, dtype, _cache_bytes(torch, device))
        self.model = tm.build_model(arch, tp=tp, n_layers=n_rot, dtype=tdt, device=device, seed=seed)
        self.s = self.model.shape
        self.blocks = list(self.model.layers)
        self.lm_w = self.model.lm_head.weight[: -(-self.s.vocab // tp)]  # the vocab/tp shard
        self.lm_ws = _copies(self.lm_w, self.flush)
        self.embeds = [self.model.embed] + [torch.nn.Embedding.from_pretrained(w) for w in
                                            _copies(self.model.embed.weight, self.flush)[1:]]

    def randn(self, *shape):
        return self.torch.randn(*shape, generator=self.gen, device=self.device, dtype=self.tdt)

    def _embed(self, table, ids, pos):  # Transformer.embed_tokens with a rotating copy of the table
        x = table(ids)
        return x if self.model.pos_embed is None else x + self.model.pos_embed(pos)

    def per_token_fns(self, T: int) -> dict:
        """non_attention, embedding and lm_head over [1, T] tokens."""
        torch, s = self.torch, self.s
        x = self.randn(1, T, s.hidden)
        pos = torch.arange(T, device=self.device)[None, :]
        ids = torch.randint(0, s.vocab, (1, T), generator=self.gen, device=self.device)
        blk, lmw, emb = itertools.cycle(self.blocks), itertools.cycle(self.lm_ws), itertools.cycle(self.embeds)
        return {
            "non_attention": lambda: next(blk).non_attention_parts(x, pos),
            "embedding": lambda: self._embed(next(emb), ids, pos),
            "lm_head": lambda: torch.nn.functional.linear(self.model.norm(x), next(lmw)),
        }

    def kv_caches(self, b: int, n: int):
        """A KV cache with enough layers that cycling through them overflows the cache (`flush`)."""
        s = self.s
        n_caches = n_copies(2 * b * n * s.n_kv_heads * s.head_dim * self.by, self.flush, 32)
        return self.tm.KVCache(n_caches, b, n, s.n_kv_heads, s.head_dim, self.tdt, self.device)

    def attention_point(self, b: int, q: int, ctx: int) -> _InContextAttention:
        """The attention point as timed for the profile: in context (_InContextAttention)."""
        torch, n = self.torch, ctx + q
        pos = (ctx + torch.arange(q, device=self.device))[None, :].expand(b, q)
        kv_lens = torch.full((b,), n, dtype=torch.long, device=self.device)
        return _InContextAttention(self.tm, self.blocks, self.kv_caches(b, n),
                                   self.randn(b, q, self.s.hidden), pos,
                                   torch.arange(b, device=self.device), kv_lens, n)

    def attention_fn(self, b: int, q: int, ctx: int):
        """The attention op alone (for the per-operator breakdown), with the forward's mask."""
        torch, s, n = self.torch, self.s, ctx + q
        cache = self.kv_caches(b, n)
        layers = itertools.cycle(range(cache.n_layers))
        slots = torch.arange(b, device=self.device)
        pos = (ctx + torch.arange(q, device=self.device))[None, :].expand(b, q)
        qt, k, v = (self.randn(b, s.n_heads, q, s.head_dim), self.randn(b, q, s.n_kv_heads, s.head_dim),
                    self.randn(b, q, s.n_kv_heads, s.head_dim))
        kv_lens = torch.full((b,), n, dtype=torch.long, device=self.device)
        mask = self.tm.causal_mask(q, kv_lens, n)
        blk = self.blocks[0]
        return lambda: blk.attend(qt, k, v, pos, cache, next(layers), slots, kv_lens, n, mask)

    def attention_bytes(self, b: int, q: int, ctx: int) -> float:
        s, n = self.s, ctx + q
        kv = 2 * b * n * s.n_kv_heads * s.head_dim * self.by
        # cache + gathered copy + GQA-expanded copy + scores/mask (fp32 on the math path) + the
        # layer's activations (attention is timed inside a layer)
        return (2 * kv + kv * s.n_heads / s.n_kv_heads + 3 * b * s.n_heads * q * n * 4
                + 4 * b * q * (s.hidden + 2 * s.ffn) * self.by)
