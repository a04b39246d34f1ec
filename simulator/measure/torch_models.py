"""A minimal decoder-only transformer in plain torch, built from a catalogue `ModelArch`.

Used by the profiler (`specsim profile`) and by the real serving loop (`simulator.measure.real_engine`).
Random weights only: the point is the *shapes* and the *work*, which are those of the real model
on ONE GPU under tensor parallelism `tp` (heads / tp, kv_heads / tp but at least 1, ffn / tp).
No communication is performed (a single shard is built, as one GPU would hold it).

Families
  llama: RMSNorm, rotary embeddings (RoPE), grouped-query attention, SwiGLU MLP, optional QKV bias
         (Qwen), no other biases.
  opt:   LayerNorm (pre-LN), learned absolute positions, multi-head attention, ReLU MLP, biases
         on every linear layer.

KV cache and mixed lengths
  `KVCache` preallocates, per layer, K and V of shape [max_seqs, max_len, n_kv_heads, head_dim]
  (token-major slots, like a contiguous per-request allocation) and keeps per-slot lengths in a
  host-side LongTensor `lens` (host bookkeeping, as serving engines do: no device sync to know a
  length). A forward over a batch of slots with different lengths *pads to the batch maximum*:
  it gathers K/V of every sequence up to max_i(lens_i + q) and masks the padding. The attention
  cost is therefore that of b x max_ctx (a dense padded batch, the HF-transformers/"static cache"
  cost), not sum(ctx_i) (the paged-attention cost). `attn_impl="per_seq"` instead runs one
  attention call per sequence on exactly its own context (sum(ctx_i) work plus a per-sequence
  launch overhead); both give the same numbers up to float rounding.

Profiling hooks
  `attention(q, k, v, kv_lens)`           the core attention op alone (q [b, hq, s, d]).
  `Block.pre_attention(x, positions)`     norm, QKV projection, RoPE  -> q, k, v
  `Block.post_attention(x, attn_out)`     O projection, residual, norm, MLP, residual
  `Block.attend(q, k, v, ...)`            KV write + gather + attention(): the padded path's op
  `Block.non_attention_parts(x, positions)` both of the above with the attention op replaced by
                                          the identity on q (same shapes): the non-attention work
                                          of one layer over T = b * s tokens.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from simulator.hardware.models import ModelArch
from simulator.measure.kv_cache import KVCache
from simulator.measure.shard import ShardShape, shard_shape

__all__ = ["ShardShape", "shard_shape", "RMSNorm", "Attention", "MLP", "Block", "Transformer", "KVCache",
           "attention", "causal_mask", "apply_rope", "build_model", "truncated_copy"]


# ---------------------------------------------------------------------------------- components
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, **factory):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [*positions.shape, head_dim // 2] for rotary embeddings."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    ang = positions.to(torch.float32)[..., None] * inv_freq
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the head dimension (the "rotate_half" layout).

    x: [b, s, heads, d]; cos/sin: [b, s, d/2].
    """
    d2 = x.shape[-1] // 2
    x1, x2 = x[..., :d2], x[..., d2:]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def causal_mask(q_len: int, kv_lens: torch.Tensor, max_kv: int) -> torch.Tensor:
    """Boolean mask [b, 1, q_len, max_kv]: True where query i of sequence j may attend.

    The q_len new tokens of sequence j sit at positions kv_lens[j]-q_len .. kv_lens[j]-1 (they are
    already in the cache); query i sees positions < kv_lens[j] - q_len + i + 1 (lower-right causal),
    which also hides the padding beyond kv_lens[j].
    """
    kv_lens = kv_lens.to(torch.long)
    last = kv_lens[:, None] - q_len + torch.arange(q_len, device=kv_lens.device)[None, :]  # [b, q]
    keys = torch.arange(max_kv, device=kv_lens.device)
    return (keys[None, None, :] <= last[:, :, None])[:, None, :, :]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_lens: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Core scaled-dot-product attention with grouped-query heads and a lower-right causal mask.

    q: [b, n_heads, s_q, d]; k, v: [b, n_kv_heads, s_kv, d] (s_kv >= s_q; n_heads % n_kv_heads == 0).
    kv_lens: valid length per sequence (default s_kv for all); entries beyond are padding.
    mask: a precomputed `causal_mask(s_q, kv_lens, s_kv)` (a forward builds it once for all layers).
    Returns [b, n_heads, s_q, d]. With s_q == 1 and no padding no mask is built (plain decode).
    """
    b, hq, sq, d = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    if hq != hkv:
        rep = hq // hkv
        k = k[:, :, None].expand(b, hkv, rep, skv, d).reshape(b, hq, skv, d)
        v = v[:, :, None].expand(b, hkv, rep, skv, d).reshape(b, hq, skv, d)
    if mask is None:
        if kv_lens is None:
            if sq == 1:
                return F.scaled_dot_product_attention(q, k, v)
            kv_lens = torch.full((b,), skv, dtype=torch.long, device=q.device)
        mask = causal_mask(sq, kv_lens.to(q.device), skv)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Attention(nn.Module):
    """QKV projection (fused `qkv`), RoPE (llama), and output projection `o_proj`."""

    def __init__(self, s: ShardShape, rope_theta: float, **factory):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = s.n_heads, s.n_kv_heads, s.head_dim
        self.use_rope = s.family == "llama"
        self.rope_theta = rope_theta
        out = (s.n_heads + 2 * s.n_kv_heads) * s.head_dim
        self.qkv = nn.Linear(s.hidden, out, bias=s.qkv_bias, **factory)
        self.o_proj = nn.Linear(s.n_heads * s.head_dim, s.hidden, bias=s.family == "opt", **factory)

    def project(self, x: torch.Tensor, positions: torch.Tensor):
        """x [b, s, hidden] -> q [b, hq, s, d], k, v [b, hkv, s, d] (token-major k, v also returned)."""
        b, sl, _ = x.shape
        hq, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv(x)
        q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
        q = q.view(b, sl, hq, d)
        k = k.view(b, sl, hkv, d)
        v = v.view(b, sl, hkv, d)
        if self.use_rope:
            cos, sin = rope_cos_sin(positions, d, self.rope_theta, q.dtype)
            q = apply_rope(q, cos, sin)
            k = apply_rope(k, cos, sin)
        return q, k, v  # token-major [b, s, heads, d]

    def out(self, attn_out: torch.Tensor) -> torch.Tensor:
        """attn_out [b, hq, s, d] -> [b, s, hidden]."""
        b, hq, sl, d = attn_out.shape
        return self.o_proj(attn_out.transpose(1, 2).reshape(b, sl, hq * d))


class MLP(nn.Module):
    """SwiGLU (`gate_up` fused, `down`) or ReLU (`fc1`, `fc2`, OPT) MLP."""

    def __init__(self, s: ShardShape, **factory):
        super().__init__()
        self.gated = s.gated_mlp
        bias = s.family == "opt"
        if self.gated:
            self.gate_up = nn.Linear(s.hidden, 2 * s.ffn, bias=bias, **factory)
            self.down = nn.Linear(s.ffn, s.hidden, bias=bias, **factory)
        else:
            self.fc1 = nn.Linear(s.hidden, s.ffn, bias=bias, **factory)
            self.fc2 = nn.Linear(s.ffn, s.hidden, bias=bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            g, u = self.gate_up(x).chunk(2, dim=-1)
            return self.down(F.silu(g) * u)
        return self.fc2(F.relu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm decoder layer: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, s: ShardShape, rope_theta: float, **factory):
        super().__init__()
        Norm = RMSNorm if s.family == "llama" else nn.LayerNorm
        self.attn_norm = Norm(s.hidden, eps=1e-5, **factory)
        self.attn = Attention(s, rope_theta, **factory)
        self.mlp_norm = Norm(s.hidden, eps=1e-5, **factory)
        self.mlp = MLP(s, **factory)

    def pre_attention(self, x: torch.Tensor, positions: torch.Tensor):
        """Norm + QKV + RoPE. Returns q [b, hq, s, d] and token-major k, v [b, s, hkv, d]."""
        q, k, v = self.attn.project(self.attn_norm(x), positions)
        return q.transpose(1, 2), k, v

    def post_attention(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """O projection + residual, norm + MLP + residual."""
        x = x + self.attn.out(attn_out)
        return x + self.mlp(self.mlp_norm(x))

    def non_attention_parts(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """All of a layer's work except the attention op (which is replaced by the identity on q)."""
        q, _, _ = self.pre_attention(x, positions)
        return self.post_attention(x, q)

    def attend(self, q, k, v, positions, cache: "KVCache", layer: int, slots, kv_lens, max_kv, mask=None):
        """The attention op of the padded path: KV-cache write of the new tokens, gather of every
        sequence up to max_kv positions, attention() with the forward's mask. Returns [b, hq, s, d]."""
        cache.write(layer, slots, positions, k, v)
        kk, vv = cache.gather(layer, slots, max_kv)
        return attention(q, kk, vv, kv_lens, mask)

    def forward(self, x, positions, cache: "KVCache", layer: int, slots, kv_lens, max_kv, attn_impl="padded",
                mask=None):
        q, k, v = self.pre_attention(x, positions)
        if attn_impl == "per_seq":
            cache.write(layer, slots, positions, k, v)
            outs = []
            for j in range(x.shape[0]):
                n = int(kv_lens[j])
                kj, vj = cache.gather(layer, slots[j : j + 1], n)
                outs.append(attention(q[j : j + 1], kj, vj))
            o = torch.cat(outs, dim=0)
        else:
            o = self.attend(q, k, v, positions, cache, layer, slots, kv_lens, max_kv, mask)
        return self.post_attention(x, o)


# ---------------------------------------------------------------------------------- transformer
class Transformer(nn.Module):
    def __init__(self, s: ShardShape, rope_theta: float = 10000.0, attn_impl: str = "padded", **factory):
        super().__init__()
        if attn_impl not in ("padded", "per_seq"):
            raise ValueError("attn_impl must be 'padded' or 'per_seq'")
        self.shape = s
        self.attn_impl = attn_impl
        self.embed = nn.Embedding(s.vocab, s.hidden, **factory)
        self.pos_embed = nn.Embedding(s.max_position, s.hidden, **factory) if s.family == "opt" else None
        self.layers = nn.ModuleList(Block(s, rope_theta, **factory) for _ in range(s.n_layers))
        self.norm = RMSNorm(s.hidden, eps=1e-5, **factory) if s.family == "llama" else nn.LayerNorm(s.hidden, **factory)
        self.lm_head = nn.Linear(s.hidden, s.vocab, bias=False, **factory)
        if s.tied_embeddings:
            self.lm_head.weight = self.embed.weight

    # The pieces a profiler times separately -------------------------------------------------
    def embed_tokens(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(x))

    # -----------------------------------------------------------------------------------------
    def new_cache(self, max_seqs: int, max_len: int) -> KVCache:
        return KVCache.for_model(self, max_seqs, max_len)

    def batch_positions(self, q: int, cache: KVCache, slots) -> tuple:
        """Where q new tokens per sequence in `slots` go: (slots on CPU, slots on the device,
        positions [b, q], KV lengths after the step on CPU and on the device, their max)."""
        dev = self.embed.weight.device
        slots_cpu = torch.as_tensor(slots, dtype=torch.long).cpu()
        start = cache.lens[slots_cpu]
        kv_lens_cpu = start + q
        max_kv = int(kv_lens_cpu.max())
        if max_kv > cache.max_len:
            raise ValueError(f"KV cache overflow: {max_kv} > max_len {cache.max_len}")
        start_d = start.to(dev, non_blocking=True)
        positions = start_d[:, None] + torch.arange(q, device=dev)[None, :]
        return (slots_cpu, slots_cpu.to(dev, non_blocking=True), positions, kv_lens_cpu,
                kv_lens_cpu.to(dev, non_blocking=True), max_kv)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, cache: KVCache, slots: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """tokens [b, q] appended to the cached sequences in `slots` [b]; returns logits [b, q, vocab]
        (or [b, 1, vocab] for the last position with `last_only`, as a prefill needs).

        Writes K/V at positions lens[slot] .. lens[slot]+q-1 and advances lens.
        """
        dev = self.embed.weight.device
        q = tokens.shape[1]
        slots_cpu, slots_d, positions, kv_lens_cpu, kv_lens, max_kv = self.batch_positions(q, cache, slots)
        x = self.embed_tokens(tokens.to(dev), positions)
        padded = self.attn_impl == "padded"
        # padded: the mask is built once for all layers, and always (also for q = 1 at equal
        # lengths), so that the op is the one `attention(q, k, v, kv_lens)` times in a profile
        mask = causal_mask(q, kv_lens, max_kv) if padded else None
        for i, layer in enumerate(self.layers):
            lens_arg = kv_lens if padded else kv_lens_cpu
            x = layer(x, positions, cache, i, slots_d, lens_arg, max_kv, self.attn_impl, mask)
        cache.lens[slots_cpu] = kv_lens_cpu
        if last_only:
            x = x[:, -1:]
        return self.head(x)


# ------------------------------------------------------------------------------------- building
def _mix(seed: int, *keys: int) -> int:
    h = seed & 0xFFFFFFFF
    for k in keys:
        h = (h * 1000003 + k + 0x9E3779B9) & 0x7FFFFFFF
    return h


def _init_(model: Transformer, arch: ModelArch, seed: int, residual_scale: float | None, logit_std: float):
    """Random init chosen so that activations keep unit scale and logits have std ~ logit_std.

    Linear weights ~ N(0, 1/fan_in); the residual-branch outputs (o_proj, down/fc2) are further
    scaled by `residual_scale` (default 1/sqrt(2 * arch.n_layers), GPT-2 style) so that no layer
    dominates; embeddings ~ N(0, 1); LM head ~ N(0, logit_std^2 / hidden). Every module draws
    from its own seed (mixed from `seed` and its index), so the first k layers of a model are the
    same whatever n_layers is: a truncated model with the same seed is a truncated copy.
    """
    s = model.shape
    if residual_scale is None:
        residual_scale = 1.0 / math.sqrt(2 * arch.n_layers)
    dev = model.embed.weight.device

    def gen(*keys):
        g = torch.Generator(device=dev)
        g.manual_seed(_mix(seed, *keys))
        return g

    with torch.no_grad():
        model.embed.weight.normal_(0.0, 1.0, generator=gen(0))
        if model.pos_embed is not None:
            model.pos_embed.weight.normal_(0.0, 0.5, generator=gen(1))
        if not s.tied_embeddings:
            model.lm_head.weight.normal_(0.0, logit_std / math.sqrt(s.hidden), generator=gen(2))
        else:  # tied: logits = normed x . embedding; rescale via the final norm weight
            model.norm.weight.fill_(logit_std / math.sqrt(s.hidden))
        for i, blk in enumerate(model.layers):
            g = gen(100 + i)
            for name, p in blk.named_parameters():
                if "norm" in name:
                    continue  # norm weights stay 1 (and LayerNorm biases 0)
                if name.endswith("bias"):
                    p.normal_(0.0, 0.02, generator=g)
                    continue
                std = 1.0 / math.sqrt(p.shape[1])
                if name.startswith(("attn.o_proj", "mlp.down", "mlp.fc2")):
                    std *= residual_scale
                p.normal_(0.0, std, generator=g)


def build_model(
    arch: ModelArch,
    *,
    tp: int = 1,
    n_layers: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    residual_scale: float | None = None,
    logit_std: float = 4.0,
    rope_theta: float = 10000.0,
    attn_impl: str = "padded",
    untie_embeddings: bool = False,
) -> Transformer:
    """The transformer one GPU holds for `arch` at tensor parallelism `tp`, with random weights.

    `n_layers` overrides the layer count (e.g. 1 for a per-layer profile). The LM head and the
    embedding are kept whole (vocab not split): under TP real engines split them too, which a
    profiler can account for by timing a [T, hidden] x [hidden, vocab/tp] GEMM separately.
    The model is in eval mode with gradients disabled.

    `untie_embeddings` gives a tied-embedding model its own LM head (same shape, same cost): with
    random weights a tied model's logit for its current input token is ~|e|^2 and dominates, so
    it only ever repeats its input; untied, random models make non-degenerate predictions.
    """
    s = shard_shape(arch, tp, n_layers)
    if untie_embeddings:
        s = dataclasses.replace(s, tied_embeddings=False)
    factory = {"dtype": dtype, "device": torch.device(device)}
    model = Transformer(s, rope_theta=rope_theta, attn_impl=attn_impl, **factory)
    if factory["device"].type != "meta":  # "meta": shapes only, no storage (nothing to initialise)
        _init_(model, arch, seed, residual_scale, logit_std)
    model.eval()
    model.requires_grad_(False)
    return model


def truncated_copy(model: Transformer, n_layers: int) -> Transformer:
    """A model made of the first `n_layers` layers of `model`, sharing its embedding, final norm
    and LM head tensors (no copy); the layers are deep copies so they can be modified (noised,
    rescaled) independently."""
    if not 1 <= n_layers <= len(model.layers):
        raise ValueError("n_layers out of range")
    new = Transformer(dataclasses.replace(model.shape, n_layers=0), attn_impl=model.attn_impl,
                      device="meta")  # no allocation
    new.shape = dataclasses.replace(model.shape, n_layers=n_layers)
    new.embed, new.pos_embed, new.norm, new.lm_head = model.embed, model.pos_embed, model.norm, model.lm_head
    new.layers = nn.ModuleList(copy.deepcopy(model.layers[i]) for i in range(n_layers))
    new.eval()
    new.requires_grad_(False)
    return new
