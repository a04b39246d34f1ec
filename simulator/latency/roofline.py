"""Roofline latency backend: per-operator max(FLOPs / compute, bytes / bandwidth) from datasheets.

Per layer (MODEL.md section 5): four GEMMs (QKV, O, MLP up/gate, MLP down) over T = sum(q)
tokens, each with its own roofline; memory-bound elementwise work (norms, RoPE, activation,
residual adds); attention over the (q_i, ctx_i) pairs of the batch as one batched kernel; two
ring all-reduces of T x hidden values when tp > 1. Plus embedding and LM head, and a fixed
per-forward launch overhead. A weight-only quantized model (simulator/hardware/quant.py) reads
its GEMM weights at the quantized size and, where a GEMM is compute-bound, reaches only
weight_only_efficiency of the dense GEMM's compute rate (the kernel dequantizes every weight tile
before its tensor-core MMAs); activations, KV, embeddings and the LM head stay in the dtype. Every constant is a field of RooflineParams, overridable from a
scenario (`latency: {backend: roofline, params: {...}}`) and fitted by `specsim calibrate`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from simulator.errors import SpecsimError
from simulator.hardware.models import BYTES_PER_DTYPE, ModelArch
from simulator.hardware.quant import NONE, WeightFormat
from simulator.hardware.gpus import GPU
from simulator.latency.base import Stateless


# The four GEMMs of a layer, in the order of RooflineLatency's GEMM list.
GEMM_TERMS = ("qkv", "o", "mlp_up", "mlp_down")


CACHE_BLOCK = 256  # token counts memoised together (RooflineLatency._fill)


@dataclass(frozen=True)
class RooflineParams:
    # Fraction of datasheet dense peak reached by large GEMMs (an H100 bf16 8192^3 matmul ran at
    # ~81% of peak; serving-sized GEMMs reach less).
    compute_efficiency: float = 0.70
    # Fraction of datasheet HBM bandwidth reached by weight/KV streaming (STREAM-like decode
    # reaches 75-85%).
    memory_efficiency: float = 0.80
    # Fraction of peak reached by the attention kernel's FLOPs (flash-attention class kernels).
    attention_compute_efficiency: float = 0.50
    # Fraction of the interconnect's one-way bandwidth a ring all-reduce reaches.
    interconnect_efficiency: float = 0.70
    # Fixed latency of one all-reduce (launch + synchronisation), seconds.
    allreduce_latency_s: float = 8e-6
    # Fixed cost of one forward pass (kernel launches; small with CUDA graphs), seconds.
    forward_overhead_s: float = 3e-4
    # Fixed CPU cost of one engine step (scheduling, sampling, output processing), seconds.
    step_overhead_s: float = 2e-3
    # Weight-only quantized GEMMs (int8/int4 weights, 16-bit activations): fraction of the dense
    # GEMM's compute rate they reach when compute-bound, the cost of dequantizing in the kernel.
    # Not from a primary source: secondary reports of Marlin (arXiv 2408.11743) put batch>=1024
    # GEMMs ~10% slower than FP16 (wentao.site/marlin_summary), and bitsandbytes' dequantize +
    # cuBLAS path at 80-90% of fp16 (bitsandbytes commit 96ba7a2); 0.9 is the optimistic end, so
    # quantized prefill and large-batch verify are if anything priced a little fast. Override it.
    weight_only_efficiency: float = 0.90
    # Fixed seconds per layer per forward, added to its non-attention time: the floor of the
    # layer's ~10 small kernels (norms, RoPE, activation, residual adds, the GEMMs' tails) that
    # take a few microseconds each however little data they touch. Datasheet rooflines have no
    # such term (0 here); `specsim calibrate` fits it to a GPU's measured profiles with the
    # efficiencies (simulator/measure/calibrate.py), so calibrated and derived backends carry it.
    layer_overhead_s: float = 0.0

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def checked(cls, raw, where: str) -> "RooflineParams":
        """Overrides from a scenario or a calibration file: known names, finite numbers,
        efficiencies in (0, 1] (a fraction of peak; 0 would divide by zero), times >= 0.
        SpecsimError naming `where` and the key otherwise."""
        names = cls.field_names()
        if not isinstance(raw, dict):
            raise SpecsimError(f"{where}: expected an object of {', '.join(names)}, got {raw!r}")
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise SpecsimError(f"{where}: unknown roofline parameter(s) {unknown}; "
                               f"known: {', '.join(names)}")
        for k, v in raw.items():
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if ok and k.endswith("efficiency"):
                ok = 0 < v <= 1
            elif ok:
                ok = v >= 0
            if not ok:
                want = "a fraction in (0, 1]" if k.endswith("efficiency") else "seconds >= 0, finite"
                raise SpecsimError(f"{where}.{k}: {v!r} is out of range (expected {want})")
        return cls(**raw)


class RooflineLatency(Stateless):
    """Forward-pass time of `model` split `tp` ways on `gpu`, from datasheet rooflines."""

    source = "roofline"
    source_note = "datasheet peak FLOP/s and bandwidth x efficiencies (default RooflineParams)"

    def __init__(self, model: ModelArch, gpu: GPU, tp: int = 1, dtype: str = "bf16",
                 params: RooflineParams | None = None, quant: WeightFormat = NONE):
        self.model, self.gpu, self.tp, self.dtype, self.quant = model, gpu, tp, dtype, quant
        self.params = p = params or RooflineParams()
        self.step_overhead_s = p.step_overhead_s
        m, by = model, BYTES_PER_DTYPE[dtype]
        self._flops = gpu.peak_flops(dtype) * p.compute_efficiency
        # The layers' GEMMs: dequantizing weight-only kernels reach a fraction of the dense rate.
        self._layer_flops = self._flops * (p.weight_only_efficiency if quant.quantized else 1.0)
        self._attn_flops = gpu.peak_flops(dtype) * p.attention_compute_efficiency
        self._bw = gpu.bandwidth_tbps * 1e12 * p.memory_efficiency
        heads = m.n_heads // tp
        kv_heads = max(1, -(-m.n_kv_heads // tp))
        gemms = m.gemm_shapes(tp)  # (in_features, out_features) of each GEMM on one GPU
        self._gemm_k = np.array([k for k, _ in gemms], dtype=float)
        self._gemm_n = np.array([n for _, n in gemms], dtype=float)
        # Weight bytes in units of dtype elements (k * n unquantized, so the arithmetic of an
        # unquantized model is unchanged).
        self._gemm_w = np.array([quant.gemm_bytes(k, n, by) / by for k, n in gemms], dtype=float)
        self._by = by
        # Elementwise bytes per token per layer: 2 norms, 2 residual adds, RoPE (read+write each),
        # activation over the MLP's intermediate.
        self._elementwise_bytes_per_token = (8 * m.hidden + 3 * m.ffn / tp) * by
        self._attn_flops_per_qk = 4.0 * heads * m.head_dim  # QK^T and PV, per (query, key) pair
        self._kv_bytes_per_pos = 2.0 * kv_heads * m.head_dim * by  # one layer
        self._q_bytes_per_tok = 2.0 * heads * m.head_dim * by  # read Q, write O
        link_bw = gpu.interconnect_gbps * 1e9 / 2 * p.interconnect_efficiency  # one-way
        self._ar_bytes_factor = 0.0 if tp == 1 else 2.0 * (tp - 1) / tp / link_bw
        self._lm_k, self._lm_n = m.hidden, m.vocab / tp
        self._lm_w = self._lm_k * self._lm_n  # the LM head stays in the dtype
        self._comm_per_token = 2.0 * m.n_layers * m.hidden * by * self._ar_bytes_factor
        self._comm_fixed = 2.0 * m.n_layers * p.allreduce_latency_s
        self._linear_cache: dict[int, float] = {}
        self._head_cache: dict[int, float] = {}
        self._fixed_cache: dict[tuple[int, int], tuple] = {}  # (n, n_logits) -> non-attention parts

    def _gemm_time(self, tokens: float, k, n, weight_elems, flops_rate: float):
        """max(FLOPs / compute, (weights + activations in and out) bytes / bandwidth); weights
        in dtype elements (their bytes / dtype bytes)."""
        flops = 2.0 * tokens * k * n
        byts = (weight_elems + tokens * (k + n)) * self._by
        return np.maximum(flops / flops_rate, byts / self._bw)

    def _layer_gemms(self, tokens):
        return self._gemm_time(tokens, self._gemm_k, self._gemm_n, self._gemm_w, self._layer_flops)

    def layer_terms(self, tokens) -> dict[str, np.ndarray]:
        """Seconds of each non-attention term of ONE layer at T = tokens (vectorised): the four
        GEMMs (GEMM_TERMS) and the elementwise work. Calibration fits these to measurements."""
        t = np.asarray(tokens, dtype=float)
        out = {name: self._gemm_time(t, k, n, w, self._layer_flops)
               for name, k, n, w in zip(GEMM_TERMS, self._gemm_k, self._gemm_n, self._gemm_w)}
        out["elementwise"] = t * self._elementwise_bytes_per_token / self._bw
        return out

    def layer_attention(self, t, pairs, kv_pos):
        """Seconds of ONE layer's attention from the batch's sums (scalars or arrays): query
        tokens t, query-key pairs, KV positions read."""
        return np.maximum(pairs * self._attn_flops_per_qk / self._attn_flops,
                          (kv_pos * self._kv_bytes_per_pos + t * self._q_bytes_per_tok) / self._bw)

    def uniform_attention(self, b, q, ctx):
        """Seconds of ONE layer's attention for b sequences of q query tokens over ctx cached each
        (scalars or arrays): each query attends to the cache and the causal part of its block."""
        t = b * q
        return self.layer_attention(t, b * (q * ctx + q * (q + 1) / 2.0), b * ctx + t)

    def allreduce_s(self, t: float) -> float:
        """One ring all-reduce of t tokens' hidden states across the tp GPUs (0 at tp 1)."""
        if self.tp == 1:
            return 0.0
        return self.params.allreduce_latency_s + t * self.model.hidden * self._by * self._ar_bytes_factor

    def embedding_s(self, t: int) -> float:
        """The embedding gather of t rows: memory-bound."""
        return t * self.model.hidden * self._by / self._bw

    def _linear(self, t: int) -> float:
        """Non-attention time of the whole model over t tokens (memoised: t repeats a lot)."""
        v = self._linear_cache.get(t)
        if v is None:
            v = self._fill(self._linear_cache, t, self._linear_block)
        return v

    def _lm_head(self, n_logits: int) -> float:
        v = self._head_cache.get(n_logits)
        if v is None:
            v = self._fill(self._head_cache, n_logits, self._head_block)
        return v

    @staticmethod
    def _fill(cache: dict, t: int, block) -> float:
        """Memoise a whole block of CACHE_BLOCK token counts around t at once: mixed prefill
        steps bring a new count nearly every step, and one vectorised block costs about what
        two single counts do. Elementwise float64 arithmetic is the scalar arithmetic, so every
        value is the one a single count gives (tests/test_latency.py checks)."""
        lo = t - t % CACHE_BLOCK
        ts = np.arange(lo, lo + CACHE_BLOCK)
        cache.update(zip(ts.tolist(), block(ts).tolist()))
        return cache[t]

    def _linear_block(self, ts: np.ndarray) -> np.ndarray:
        tf = ts.astype(float)
        layer = self._gemm_time(tf[:, None], self._gemm_k, self._gemm_n, self._gemm_w,
                                self._layer_flops).sum(axis=1)
        layer += tf * self._elementwise_bytes_per_token / self._bw
        layer += self.params.layer_overhead_s
        return self.model.n_layers * layer + tf * self.model.hidden * self._by / self._bw

    def _head_block(self, ns: np.ndarray) -> np.ndarray:
        v = self._gemm_time(ns.astype(float), self._lm_k, self._lm_n, self._lm_w, self._flops)
        return np.where(ns == 0, 0.0, v)

    def _parts(self, t: int, pairs: float, kv_pos: float, n_logits: int) -> tuple:
        """(linear, attention, communication, overhead) from the batch's sufficient statistics."""
        # layer_attention on Python floats (np.maximum costs more than the rest of a step's pricing)
        attn = self.model.n_layers * max(pairs * self._attn_flops_per_qk / self._attn_flops,
                                         (kv_pos * self._kv_bytes_per_pos
                                          + t * self._q_bytes_per_tok) / self._bw)
        comm = self._comm_per_token * t + self._comm_fixed if self.tp > 1 else 0.0
        return (self._linear(t) + self._lm_head(n_logits), attn, comm, self.params.forward_overhead_s)

    def token_kernels_s(self, t: int) -> float:
        """Linear and all-reduce seconds of a forward over t tokens (what CUDA-graph padding
        rows cost; simulator/latency/engine_costs.py)."""
        return self._linear(t) + (self._comm_per_token * t + self._comm_fixed if self.tp > 1 else 0.0)

    def forward(self, q: np.ndarray, ctx: np.ndarray, n_logits: int) -> np.ndarray:
        t = int(q.sum())
        # Each query attends to the cache plus the causal part of its own block.
        pairs = float(np.dot(q, ctx)) + float(np.dot(q, q + 1)) / 2.0
        return np.array(self._parts(t, pairs, float(ctx.sum()) + t, n_logits))

    def forward_sums(self, t: int, pairs: float, kv_pos: float, n_logits: int) -> tuple:
        """forward() from the batch's sums: t = sum(q), pairs = sum(q*ctx + q(q+1)/2) (query-key
        pairs), kv_pos = sum(ctx + q). The roofline needs nothing else, so the engine prices its
        steps without building per-sequence arrays (simulator/latency/base.py forward_batch)."""
        return self._parts(t, pairs, kv_pos, n_logits)

    def forward_sums_many(self, t: int, pairs: np.ndarray, kv_pos: np.ndarray, n_logits: int):
        """forward_sums for the k steps of a run (pairs, kv_pos: arrays over the steps; t and
        n_logits fixed), operation for operation as _parts so each step's seconds are equal."""
        lin, _, comm, ovh = self._parts(t, 0.0, 0.0, n_logits)
        attn = self.model.n_layers * np.maximum(pairs * self._attn_flops_per_qk / self._attn_flops,
                                                (kv_pos * self._kv_bytes_per_pos
                                                 + t * self._q_bytes_per_tok) / self._bw)
        return (lin, attn, comm, ovh)

    def decode_steps_many(self, n: int, ctx_sums: np.ndarray, steps: int, n_logits: int,
                          start: int = 0, ctx_max=None) -> tuple:
        """decode_steps for each step of a run (ctx_sums: the batch's context sum per step)."""
        base = (ctx_sums + n * start).astype(float)
        lin, com, ovh = self._fixed(n, n_logits)
        flops_per_pair = self._attn_flops_per_qk / self._attn_flops
        bytes_per_pos, q_bytes = self._kv_bytes_per_pos / self._bw, n * self._q_bytes_per_tok / self._bw
        att = np.zeros(base.shape[0])
        for j in range(1, steps + 1):
            c = base + n * j
            att = att + np.maximum(c * flops_per_pair, c * bytes_per_pos + q_bytes)
        return (steps * lin, self.model.n_layers * att, steps * com, steps * ovh)

    def _fixed(self, n: int, n_logits: int) -> tuple:
        """(linear, communication, overhead) of one single-token forward of n sequences."""
        key = (n, n_logits)
        fixed = self._fixed_cache.get(key)
        if fixed is None:
            lin, _, com, ovh = self._parts(n, 0.0, 0.0, n_logits)
            fixed = self._fixed_cache[key] = (lin, com, ovh)
        return fixed

    def decode_steps(self, ctx: np.ndarray, steps: int, n_logits: int,
                     ctx_sum: int | None = None, start: int = 0) -> tuple:
        """Sum of `steps` single-token forwards of the batch over caches of ctx + start tokens,
        growing by one each time. Only attention changes from step to step, so the other
        components are priced once."""
        n = ctx.shape[0]
        base = float((int(ctx.sum()) if ctx_sum is None else ctx_sum) + n * start)
        lin, com, ovh = self._fixed(n, n_logits)
        flops_per_pair = self._attn_flops_per_qk / self._attn_flops
        bytes_per_pos, q_bytes = self._kv_bytes_per_pos / self._bw, n * self._q_bytes_per_tok / self._bw
        att = 0.0
        for j in range(1, steps + 1):
            c = base + n * j
            att += max(c * flops_per_pair, c * bytes_per_pos + q_bytes)
        return (steps * lin, self.model.n_layers * att, steps * com, steps * ovh)
