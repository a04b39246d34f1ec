"""The latency interface every backend implements, and the breakdown it returns.

A forward pass is described by its batch: for each sequence i, q[i] new (query) tokens and
ctx[i] tokens already in its KV cache; the pass attends over ctx[i] + q[i] positions.
`n_logits` is how many positions go through the LM head (one per decoding sequence, q per
verifying sequence, one for a prefill chunk that completes its prompt, none otherwise).

Backends are bound to (model, gpu, tp, dtype) at construction and must be cheap to call: the
engine calls them once per forward pass with numpy arrays.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

# Order of the components in the array returned by LatencyModel.forward.
COMPONENTS = ("linear", "attention", "communication", "overhead")
LINEAR, ATTENTION, COMMUNICATION, OVERHEAD = range(4)

# Where a backend's numbers come from (reported in every summary as "latency_source").
SOURCES = ("measured", "derived", "roofline", "law")


class LatencyModel(Protocol):
    source: str  # one of SOURCES
    step_overhead_s: float  # the engine's per-step cost, charged once per engine step

    def forward(self, q: np.ndarray, ctx: np.ndarray, n_logits: int) -> np.ndarray:
        """Seconds for one forward pass, as an array over COMPONENTS (sum = wall time)."""
        ...

    @property
    def stats(self) -> dict | None:
        """Statistics of the current run (the summary's `latency_stats`), or None if the backend
        keeps none."""
        ...

    def reset_stats(self) -> None:
        """Start a run afresh: clear `stats` and any per-run memo. The runner calls it before
        every simulation, so a backend shared by sweep points and gamma-auto lookups reports each
        run's own figures."""
        ...


class Stateless:
    """Mixin for backends that keep no per-run state: no stats, nothing to reset."""

    stats = None

    def reset_stats(self) -> None:
        pass


def decode_steps(model: LatencyModel, ctx: np.ndarray, steps: int, n_logits: int,
                 ctx_sum: int | None = None, start: int = 0) -> np.ndarray:
    """Sum of `steps` successive single-token forwards (a draft proposing `steps` tokens) over
    caches of ctx + start tokens (ctx_sum: ctx.sum(), when the caller already has it).

    Backends may provide a faster `decode_steps` method; this is the generic definition.
    """
    fast = getattr(model, "decode_steps", None)
    if fast is not None:
        return fast(ctx, steps, n_logits, ctx_sum, start)
    ones = np.ones(ctx.shape[0], np.int64)
    return sum((model.forward(ones, ctx + (start + j), n_logits) for j in range(steps)), np.zeros(4))


def forward_batch(model: LatencyModel, q_dec: int, dec_ctx: np.ndarray, dec_ctx_sum: int,
                  pre_q: list[int], pre_ctx: list[int], n_logits: int, shift: int = 0):
    """One forward over the decoding sequences (q_dec query tokens each, over caches of
    dec_ctx - shift tokens; dec_ctx sums to dec_ctx_sum) plus prefill chunks (pre_q[i] tokens
    over pre_ctx[i] cached). Returns the breakdown over COMPONENTS (an array or a 4-tuple).

    Backends with `forward_sums(tokens, pairs, kv_positions, n_logits)` (the roofline) are
    priced from the batch's sums, without building arrays. `shift` must not exceed any cache
    (decoding sequences hold at least their prompt, so shift <= 1 is always safe)."""
    own = getattr(model, "forward_batch", None)  # an engine-cost wrapper prices the batch itself
    if own is not None:
        return own(q_dec, dec_ctx, dec_ctx_sum, pre_q, pre_ctx, n_logits, shift)
    sums = getattr(model, "forward_sums", None)
    n = dec_ctx.shape[0]
    if sums is not None:
        ctx_sum = dec_ctx_sum - n * shift
        t, dot, qq = n * q_dec, q_dec * ctx_sum, n * q_dec * (q_dec + 1)
        for q, c in zip(pre_q, pre_ctx):
            t, dot, qq, ctx_sum = t + q, dot + q * c, qq + q * (q + 1), ctx_sum + c
        # Each query attends to the cache plus the causal part of its own block.
        return sums(t, float(dot) + float(qq) / 2.0, float(ctx_sum) + t, n_logits)
    if not pre_q and not shift and n:
        uniform = getattr(model, "forward_uniform", None)  # the profile backend's decode steps
        if uniform is not None:
            return uniform(n, q_dec, dec_ctx, dec_ctx_sum, n_logits)
    mixed = getattr(model, "forward_mixed", None)  # the profile backend, without row arrays
    if mixed is not None:
        return mixed(q_dec, dec_ctx, dec_ctx_sum, pre_q, pre_ctx, n_logits, shift)
    ctx = np.maximum(dec_ctx - shift, 0) if shift else dec_ctx
    q = np.full(n, q_dec, np.int64)
    if pre_q:
        q = np.concatenate([q, np.asarray(pre_q, np.int64)])
        ctx = np.concatenate([ctx, np.asarray(pre_ctx, np.int64)])
    return model.forward(q, ctx, n_logits)


def step_overhead(model: LatencyModel, n_seqs: int, n_tokens: int, n_sampled: int,
                  n_verify: int, gamma: int, gpu_s: float) -> float:
    """What one engine step pays beyond its forward passes: the backend's constant
    `step_overhead_s`, or, for a backend wrapped in an engine's implementation costs
    (simulator/latency/engine_costs.py), its `step_cost` of this step's batch: n_seqs running,
    n_tokens scheduled, n_sampled positions sampled, n_verify sequences verifying gamma drafted
    tokens each, after gpu_s seconds of forward passes."""
    cost = getattr(model, "step_cost", None)
    if cost is None:
        return model.step_overhead_s
    return cost(n_seqs, n_tokens, n_sampled, n_verify, gamma, gpu_s)


def plus(a, b) -> tuple:
    """Component-wise sum of two breakdowns (arrays or 4-tuples)."""
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3])


def charge(acc: list[float], t) -> float:
    """Add breakdown `t` to the running totals `acc`; return its sum (the pass's seconds)."""
    a, b, c, d = t
    acc[0] += a
    acc[1] += b
    acc[2] += c
    acc[3] += d
    return a + b + c + d


# ---- runs of decode steps (simulator/engine/macro.py) -------------------------------------
# The same n sequences decode for k successive steps; only their context sums change. These
# mirror forward_batch / decode_steps / step_overhead operation by operation over numpy arrays
# of the k steps (elementwise float64 arithmetic is IEEE-exact, so each step's seconds equal
# the scalar path's bit for bit). They return None when the backend cannot price a run at once;
# the engine then prices the run step by step through the scalar path.

def forward_decode_many(model, q_dec: int, n: int, ctx_sums: np.ndarray, n_logits: int,
                        shift: int = 0, ctx_max: np.ndarray | None = None,
                        pending: list | None = None):
    """forward_batch(model, q_dec, ctx_j, ctx_sums[j], [], [], n_logits, shift) for each step j
    of a run: a 4-tuple of arrays over the steps (or scalars constant over them), or None.
    ctx_max: each step's longest context (backends that price from the maximum need it).
    pending: where a backend that keeps run statistics leaves (object, attribute, per-step
    values) for the engine to add for the steps it applies (None: add them now)."""
    own = getattr(model, "forward_decode_many", None)
    if own is not None:
        return own(q_dec, n, ctx_sums, n_logits, shift, ctx_max, pending)
    sums = getattr(model, "forward_sums_many", None)
    if sums is None:
        return None
    ctx_sum = ctx_sums - n * shift
    t, qq = n * q_dec, n * q_dec * (q_dec + 1)
    dot = q_dec * ctx_sum
    return sums(t, dot.astype(float) + float(qq) / 2.0, ctx_sum.astype(float) + t, n_logits)


def decode_steps_many(model, n: int, ctx_sums: np.ndarray, steps: int, n_logits: int,
                      start: int = 0, ctx_max: np.ndarray | None = None):
    """decode_steps(model, ctx_j, steps, n_logits, ctx_sums[j], start) for each step j of a run
    (see forward_decode_many), or None."""
    own = getattr(model, "decode_steps_many", None)
    if own is None:
        return None
    return own(n, ctx_sums, steps, n_logits, start, ctx_max)


def step_overhead_many(model, n_seqs: int, n_tokens: int, n_sampled: int, n_verify: int,
                       gamma: int, gpu_s: np.ndarray):
    """step_overhead for each step of a run (gpu_s: each step's forward seconds)."""
    cost = getattr(model, "step_cost_many", None)
    if cost is None:
        if getattr(model, "step_cost", None) is not None:
            return np.array([model.step_cost(n_seqs, n_tokens, n_sampled, n_verify, gamma, g)
                             for g in np.broadcast_to(gpu_s, np.shape(gpu_s)).tolist()])
        return model.step_overhead_s
    return cost(n_seqs, n_tokens, n_sampled, n_verify, gamma, gpu_s)


def total(t):
    """The seconds of breakdown(s) t, summed in charge()'s order."""
    return t[0] + t[1] + t[2] + t[3]


def add_steps(acc, v, k: int):
    """acc plus the first k per-step values v (or k times a constant v), added one at a time as
    single steps add them (float sums depend on their order); integer values are summed."""
    if np.ndim(v) == 0:
        if isinstance(v, (int, np.integer)) and not isinstance(acc, float):
            return acc + int(v) * k
        v = float(v)
        for _ in range(k):
            acc += v
        return acc
    if v.dtype.kind in "iub":
        return acc + int(v[:k].sum())
    for x in v[:k].tolist():
        acc += x
    return acc
