"""One engine step's pricing, bound to a backend once: `step_pricer(model)` gives the three calls a
strategy makes per step (forward_batch, decode_steps, step_overhead of simulator/latency/base.py)
with the same arguments and results, bit for bit.

For any backend they are the generic definitions of latency/base.py bound to the model. Two
backends, bare or wrapped in an engine's EngineLatency, get a fast path that prices a step from
the batch's size and context sum alone (`from_sums`: per-row contexts are never read, so the
engine may keep none, simulator/engine/lazy_table.py):
- the roofline (RooflineLatency): what does not depend on the batch's context sum (linear
  layers, LM head, all-reduces, launches, CUDA-graph padding, the step's CPU and sampling costs)
  is memoised per batch shape, taken from the generic path itself, and attention is computed
  from the sums with the same float operations in the same order as RooflineLatency._parts /
  decode_steps;
- a measured profile whose attention is looked up at the batch's mean context (ProfileLatency
  with ctx_stat "mean": every profile of a paged-attention engine; Vidur's predictor keys decode
  attention the same way, by decode batch size and mean KV length): its own lookups, called
  with the decoding rows' count and context sum instead of their contexts.
tests/test_pricing.py checks every component bit for bit against the generic path. A step's
pricing is a few microseconds of Python, most of it dispatch, and the engine prices every step
it does not advance in a run.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from simulator.latency.base import decode_steps, forward_batch, step_overhead
from simulator.latency.engine_costs import EngineLatency
from simulator.latency.profile import ProfileLatency
from simulator.latency.roofline import RooflineLatency

MEMO_CAP = 65536  # step-cost memo entries kept before it starts afresh (pure values: no effect)


class GenericPricer:
    """latency/base.py's definitions, bound to `model` (any backend); an engine's step cost with
    its batch-shape terms memoised (EngineStepCost)."""

    from_sums = False

    def __init__(self, model):
        self.model = model
        self.forward_batch = partial(forward_batch, model)
        self.decode_steps = partial(decode_steps, model)
        self.step_overhead = _step_overhead(model)


class RooflinePricer:
    """The roofline's step pricing with its context-free parts memoised. `model` is a
    RooflineLatency or an EngineLatency wrapping one (see step_pricer); step_overhead as
    GenericPricer's."""

    from_sums = True

    def __init__(self, model):
        self.model = model
        self.wrapped = wrapped = isinstance(model, EngineLatency)
        r = self.roofline = model.inner if wrapped else model
        self._expand = wrapped and model._expand
        self._layers = r.model.n_layers
        self._apq, self._af = r._attn_flops_per_qk, r._attn_flops
        self._kvb, self._qbt, self._bw = r._kv_bytes_per_pos, r._q_bytes_per_tok, r._bw
        self._fpp, self._bpp = r._attn_flops_per_qk / r._attn_flops, r._kv_bytes_per_pos / r._bw
        self._linear, self._lm_head = r._linear, r._lm_head
        self._tp_comm = r.tp > 1
        self._comm_per_token, self._comm_fixed = r._comm_per_token, r._comm_fixed
        self._linear_get, self._head_get = r._linear_cache.get, r._head_cache.get
        self._fwd_memo: dict[tuple, tuple] = {}
        self._dec_memo: dict[tuple, tuple] = {}
        self._mixed_memo: dict[int, tuple] = {}
        self.step_overhead = _step_overhead(model)

    # ---- forward passes ---------------------------------------------------------------------
    def forward_batch(self, q_dec: int, dec_ctx: np.ndarray, dec_ctx_sum: int, pre_q, pre_ctx,
                      n_logits: int, shift: int = 0) -> tuple:
        """latency.base.forward_batch(model, ...) (see the module docstring)."""
        n = n0 = dec_ctx.shape[0]
        q0 = q_dec
        if self._expand and q_dec > 1 and n:  # as EngineLatency.forward_batch expands the rows
            dec_ctx_sum = q_dec * dec_ctx_sum + n * q_dec * (q_dec - 1) // 2
            n, q_dec = n * q_dec, 1
        if pre_q:
            return self._mixed(n, q_dec, dec_ctx_sum, pre_q, pre_ctx, n_logits, shift)
        key = (n0, q0, n_logits)  # what the memoised parts depend on (not the shift)
        got = self._fwd_memo.get(key)
        if got is None:
            got = self._fwd_memo[key] = self._forward_fixed(n0, q0, n, q_dec, n_logits)
        lin, comm, launch, t, qq, tq = got
        ctx_sum = dec_ctx_sum - n * shift
        flops = (float(q_dec * ctx_sum) + qq) * self._apq / self._af
        byts = ((float(ctx_sum) + t) * self._kvb + tq) / self._bw
        # max(flops, byts), without the builtin's call (same result: the first unless the second
        # is larger)
        return (lin, self._layers * (byts if byts > flops else flops), comm, launch)

    def _forward_fixed(self, n0: int, q0: int, n: int, q_dec: int, n_logits: int) -> tuple:
        """The context-free parts of a decode-only forward of n0 sequences x q0 tokens (n x q_dec
        rows once expanded): (linear, comm, launch) from the generic path itself, and the
        attention terms the shape fixes (t, float(qq) / 2, t * Q bytes)."""
        ref = forward_batch(self.model, q0, np.zeros(n0, np.int64), 0, [], [], n_logits)
        t = n * q_dec
        return ref[0], ref[2], ref[3], t, float(n * q_dec * (q_dec + 1)) / 2.0, t * self._qbt

    def _mixed(self, n: int, q_dec: int, dec_ctx_sum: int, pre_q, pre_ctx, n_logits: int,
               shift: int) -> tuple:
        """A forward with prefill chunks: RooflineLatency.forward_sums of the batch's sums
        (latency.base.forward_batch) and EngineLatency's launch for a batch not captured whole."""
        ctx_sum = dec_ctx_sum - n * shift
        t, dot, qq = n * q_dec, q_dec * ctx_sum, n * q_dec * (q_dec + 1)
        for q, c in zip(pre_q, pre_ctx):
            t, dot, qq, ctx_sum = t + q, dot + q * c, qq + q * (q + 1), ctx_sum + c
        flops = (float(dot) + float(qq) / 2.0) * self._apq / self._af
        byts = ((float(ctx_sum) + t) * self._kvb + t * self._qbt) / self._bw
        attn = self._layers * (byts if byts > flops else flops)
        comm = self._comm_per_token * t + self._comm_fixed if self._tp_comm else 0.0
        lin = self._linear_get(t)
        if lin is None:
            lin = self._linear(t)
        head = self._head_get(n_logits)
        lin += self._lm_head(n_logits) if head is None else head
        got = self._mixed_memo.get(n + len(pre_q))
        if got is None:
            got = self._mixed_memo[n + len(pre_q)] = self._mixed_extra(n + len(pre_q))
        pad, launch = got
        return (lin if pad is None else lin + pad, attn, comm, launch)

    def _mixed_extra(self, rows: int) -> tuple:
        """(padding, launch) of a forward of `rows` rows with prefill chunks: EngineLatency's for
        a batch not captured whole, or the bare roofline's (no padding, its forward overhead)."""
        if not self.wrapped:
            return None, self.roofline.params.forward_overhead_s
        return self.model._extra(rows, 1, False)

    def decode_steps(self, ctx: np.ndarray, steps: int, n_logits: int,
                     ctx_sum: int | None = None, start: int = 0) -> tuple:
        """latency.base.decode_steps(model, ...): RooflineLatency.decode_steps' attention loop,
        the rest memoised per (n, steps, n_logits)."""
        n = ctx.shape[0]
        key = (n, steps, n_logits)
        got = self._dec_memo.get(key)
        if got is None:
            ref = decode_steps(self.model, np.zeros(n, np.int64), steps, n_logits, 0)
            got = self._dec_memo[key] = (ref[0], ref[2], ref[3], n * self._qbt / self._bw)
        lin, comm, launch, q_bytes = got
        base = float((int(ctx.sum()) if ctx_sum is None else ctx_sum) + n * start)
        fpp, bpp = self._fpp, self._bpp
        att = 0.0
        for j in range(1, steps + 1):
            c = base + n * j
            flops, byts = c * fpp, c * bpp + q_bytes
            att += byts if byts > flops else flops  # max(flops, byts), as in _forward
        return (lin, self._layers * att, comm, launch)


class ProfilePricer:
    """A mean-context ProfileLatency's step pricing (bare, or wrapped in an EngineLatency: see
    step_pricer) from the batch's size and context sum: the profile's own lookups (memoised
    per point) without the generic path's dispatch and row arrays; step_overhead as
    GenericPricer's."""

    from_sums = True

    def __init__(self, model):
        self.model = model
        wrapped = type(model) is EngineLatency
        profile = model.inner if wrapped else model
        self._expand = wrapped and model._expand
        self._extra = model._extra if wrapped else None
        self._uniform, self._grouped = profile.forward_uniform, profile.forward_grouped
        self.decode_steps = partial(decode_steps, model)  # ProfileLatency.decode_steps: sums only
        self.step_overhead = _step_overhead(model)

    def forward_batch(self, q_dec: int, dec_ctx: np.ndarray, dec_ctx_sum: int, pre_q, pre_ctx,
                      n_logits: int, shift: int = 0) -> tuple:
        """latency.base.forward_batch(model, ...): EngineLatency.forward_batch's expansion and
        extras around the profile's forward_uniform / forward_mixed, as the generic path
        chooses them."""
        n = dec_ctx.shape[0]
        if self._expand and q_dec > 1 and n:  # as EngineLatency.forward_batch expands the rows
            dec_ctx_sum = q_dec * dec_ctx_sum + n * q_dec * (q_dec - 1) // 2
            n, q_dec = n * q_dec, 1
        if pre_q or shift or not n:
            t = self._grouped(n, q_dec, dec_ctx_sum - n * shift, pre_q, pre_ctx, n_logits)
        else:
            t = self._uniform(n, q_dec, None, dec_ctx_sum, n_logits)
        if self._extra is None:
            return t
        uniform = not pre_q
        pad, launch = self._extra(n + len(pre_q), q_dec if uniform else 1, uniform)
        return (t[0] + pad, t[1], t[2], launch)


class EngineStepCost:
    """latency.base.step_overhead(model, ...) for an EngineLatency `model` (any wrapped backend):
    its step_cost, with the terms that do not depend on gpu_s memoised per batch shape."""

    def __init__(self, model: EngineLatency):
        self.terms = model.step_cost_terms
        self._memo: dict[tuple, tuple] = {}

    def __call__(self, n_seqs: int, n_tokens: int, n_sampled: int, n_verify: int, gamma: int,
                 gpu_s: float) -> float:
        key = (n_seqs, n_tokens, n_sampled, n_verify, gamma)
        got = self._memo.get(key)
        if got is None:
            if len(self._memo) >= MEMO_CAP:  # mixed steps bring new token counts
                self._memo.clear()
            got = self._memo[key] = self.terms(*key)
        cpu, overlap, rejection, proposer = got
        if overlap:  # the rest as EngineLatency.step_cost adds it
            cpu = cpu - gpu_s
            if not cpu > 0.0:  # max(0.0, cpu - gpu_s)
                cpu = 0.0
        if rejection is None:
            return cpu
        cpu += rejection
        cpu += proposer
        return cpu


def _step_overhead(model):
    if type(model) is EngineLatency:
        return EngineStepCost(model).__call__
    return partial(step_overhead, model)


def step_pricer(model) -> GenericPricer | RooflinePricer | ProfilePricer:
    """The pricer of `model`: a fast path for a RooflineLatency or a mean-context ProfileLatency,
    bare or wrapped in an EngineLatency, exactly those classes (a subclass or another wrapper
    may price otherwise); the generic definitions for any other backend."""
    inner = model.inner if type(model) is EngineLatency else model
    if type(inner) is RooflineLatency:
        return RooflinePricer(model)
    if type(inner) is ProfileLatency and inner.ctx_stat == "mean":
        return ProfilePricer(model)
    return GenericPricer(model)
