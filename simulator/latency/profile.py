"""Measured latency backend: forward-pass time composed from a profile (simulator/latency/profiles.py).

Per forward pass with T = sum(q) tokens (MODEL.md section 5):
  linear        = n_layers * non_attention(T) + embedding(T) + lm_head(n_logits)
  attention     = n_layers * sum over groups of attention(batch, q, ctx)
  communication = 2 * n_layers * allreduce(T)            (tp > 1)
  overhead      = the profile's forward_overhead_s (the fallback's when null)

Interpolation is piecewise-linear in log space: log time against log T for the per-token ops, and
multilinear over (log batch, log q, log(1 + ctx)) for attention. It is exact at measured points
and monotone along every axis: medians are first made non-decreasing (a running maximum along
each axis; a measured dip is timing noise, more work never costs less).

Attention of a mixed batch: sequences are grouped by q (decode q = 1, verify q = gamma + 1 each
form one group); a group of n sequences is looked up as one uniform batch (n, q, ctx*) where ctx*
is the group's MAX context when the profile's attention backend pads the batch to its longest
sequence (specsim's torch profiler, "...padded"), and its MEAN context otherwise (paged kernels
do work proportional to sum(ctx) = n * mean). A group whose point the grid does not cover at
that batch size (prefill chunks are measured at batch 1) is summed sequence by sequence.

Outside the grid (T or batch beyond the largest measured point, ctx beyond the range, a cell the
KV did not fit) a component comes from the fallback model (a RooflineLatency, ideally calibrated),
scaled to agree with the nearest measured point so the curve stays continuous; such calls are
counted in `.stats`, with the share of predicted time that came from measured points.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from simulator.hardware.gpus import GPU, GPUS
from simulator.hardware.models import ModelArch
from simulator.errors import SpecsimError
from simulator.latency.base import COMMUNICATION, LINEAR, OVERHEAD, add_steps
from simulator.latency.roofline import RooflineLatency, RooflineParams
from simulator.latency.profile_grid import Curve, Grid3
from simulator.latency.profiles import Profile, find_profile, load_profile, profile_paths


MEMO_LIMIT = 200_000  # memoised lookups kept (about 50 MB) before the memo is cleared


class ProfileLatency:
    """Forward-pass time of `model` at `tp` on `gpu` from a measured profile (source "measured")."""

    source = "measured"

    def __init__(self, profile: Profile | str | Path, model: ModelArch, gpu: GPU | None, tp: int = 1,
                 dtype: str = "bf16", fallback=None):
        """`fallback`: the latency model for points outside the grid; default a RooflineLatency
        with default params on `gpu`. With gpu=None and no fallback, a point outside the grid
        is an error (used to validate a profile against itself)."""
        if not isinstance(profile, Profile):
            profile = load_profile(profile, model=model.name, tp=tp)
        meta = profile.meta
        where = str(profile.csv_path or f"profile {meta.gpu}/{meta.model}/tp{meta.tp}")
        if meta.model != model.name:
            raise SpecsimError(f"{where}: profile is for model {meta.model!r}, not {model.name!r}")
        if meta.tp != tp:
            raise SpecsimError(f"{where}: profile is for tp={meta.tp}, not tp={tp}")
        if meta.dtype != dtype:
            raise SpecsimError(f"{where}: profile was measured in {meta.dtype}, the deployment asks "
                               f"for {dtype} (capture a {dtype} profile or set dtype: {meta.dtype})")
        self.profile, self.model, self.gpu, self.tp, self.dtype = profile, model, gpu, tp, dtype
        if fallback is None and gpu is not None:
            fallback = RooflineLatency(model, gpu, tp, dtype)
        self.fallback = fallback
        self._where = where
        self.L = model.n_layers
        self.step_overhead_s = (meta.step_overhead_s if meta.step_overhead_s is not None
                                else self.fallback.step_overhead_s if fallback is not None else 0.0)
        if meta.forward_overhead_s is not None:
            self._overhead, self._overhead_measured = float(meta.forward_overhead_s), True
        else:
            self._overhead = float(self._fb(np.array([1]), np.array([0]), 0)[OVERHEAD])
            self._overhead_measured = False

        def curve(op):
            t = profile.table(op)
            return Curve(t["tokens"], t["median_s"]) if len(t["tokens"]) else None
        self._na, self._emb, self._head, self._ar = (curve(op) for op in
                                                     ("non_attention", "embedding", "lm_head", "allreduce"))
        a = profile.table("attention")
        self._attn = Grid3(a["batch"], a["q"], a["ctx"], a["median_s"]) if len(a["batch"]) else None
        self.ctx_stat = "max" if "padded" in meta.attention_backend else "mean"
        self.reset_stats()

    def reset_stats(self) -> None:
        """Start `stats` afresh (one per simulation run). The memo goes too, so that the
        per-component fallback counts (counted when a lookup is first computed) are the run's."""
        # Memoised per-component lookups: key -> (seconds, from_measured_points).
        self._memo: dict[tuple, tuple[float, bool]] = {}
        # _token_parts per (tokens, n_logits), cleared with _memo (its fallbacks are counted
        # when _per_token first computes them).
        self._parts: dict[tuple, tuple] = {}
        self._calls = self._fallback_calls = 0
        self._t_total = self._t_measured = 0.0
        self._component_fallbacks = {"non_attention": 0, "embedding": 0, "lm_head": 0, "attention": 0,
                                     "allreduce": 0}

    # ---------------------------------------------------------------------------- fallback parts
    def _fb(self, q, ctx, n_logits):
        if self.fallback is None:
            raise SpecsimError(f"{self._where}: a forward pass (q={list(q)[:8]}, ctx={list(ctx)[:8]}, "
                               f"n_logits={n_logits}) is outside the profile's grid and no fallback "
                               f"latency model was given")
        return self.fallback.forward(np.asarray(q, dtype=np.int64), np.asarray(ctx, dtype=np.int64), n_logits)

    def _fb_part(self, op: str, *key) -> float:
        """The fallback's time for one op (per layer where the op is per layer)."""
        if op == "non_attention":
            (t,) = key
            return float(self._fb([t], [0], 0)[LINEAR]) / self.L
        if op == "lm_head":
            (n,) = key
            return float(self._fb([1], [0], n)[LINEAR] - self._fb([1], [0], 0)[LINEAR])
        if op == "embedding":  # a gather of t rows: memory-bound, as the roofline charges it
            (t,) = key
            self._fb([1], [0], 0)  # (raises when there is no fallback)
            return self.fallback.embedding_s(t)
        if op == "allreduce":
            (t,) = key
            return float(self._fb([t], [0], 0)[COMMUNICATION]) / (2 * self.L)
        b, q, c = key
        if self.fallback is None:
            self._fb(np.full(b, q), np.full(b, c), 0)  # raises, naming the batch
        return float(self.fallback.uniform_attention(float(b), float(q), float(c)))

    def _anchored(self, op: str, key: tuple, edge_key: tuple, edge_time: float | None) -> float:
        """Fallback time scaled to match the measured time at the nearest grid point."""
        fb = self._fb_part(op, *key)
        if edge_time is None:
            return fb
        fb_edge = self._fb_part(op, *edge_key)
        return edge_time * fb / fb_edge if fb_edge > 0 else fb

    # ---------------------------------------------------------------------------- lookups
    def _per_token(self, op: str, curve: Curve | None, t: int) -> tuple[float, bool]:
        key = (op, t)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        v = curve(t) if curve is not None else None
        if v is not None:
            res = (v, True)
        else:
            self._component_fallbacks[op] += 1
            if curve is None:
                res = (self._fb_part(op, t), False)
            else:
                edge = curve.lo if t < curve.lo else curve.hi
                res = (self._anchored(op, (t,), (edge,), curve(edge)), False)
        self._memo[key] = res
        return res

    def _attention_uniform(self, n: int, q: int, c: int) -> tuple[float, bool]:
        """One layer's attention for n sequences of q query tokens over c cached tokens."""
        key = ("attention", n, q, c)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        g = self._attn
        v = g(n, q, c) if g is not None else None
        if v is not None:
            res = (v, True)
        else:
            edge = g.clamp(n, q, c) if g is not None else None
            edge_t = g(*edge) if g is not None else None
            if edge_t is None and n > 1 and g is not None and g(1, q, c) is not None:
                # A hole at this batch size that batch 1 covers (prefill chunks are measured at
                # batch 1): one sequence at a time.
                res = (n * g(1, q, c), True)
            else:
                self._component_fallbacks["attention"] += 1
                res = (self._anchored("attention", (n, q, c), edge, edge_t) if g is not None
                       else self._fb_part("attention", n, q, c), False)
        if len(self._memo) > MEMO_LIMIT:  # contexts keep growing over a run: bound the memory
            self._memo.clear()
            self._parts.clear()
        self._memo[key] = res
        return res

    def _attention(self, q: np.ndarray, ctx: np.ndarray) -> tuple[float, float]:
        """(seconds, seconds from measured points) of one layer's attention over the batch."""
        stat = np.max if self.ctx_stat == "max" else np.mean
        q0 = int(q[0])
        if q.size == 1 or (q.min() == q.max()):
            t, ok = self._attention_uniform(int(q.size), q0, int(round(float(stat(ctx)))))
            return t, (t if ok else 0.0)
        total = measured = 0.0
        counts = np.bincount(q)
        qs = np.flatnonzero(counts)
        if self.ctx_stat == "max":
            cstat = [int(ctx[q == v].max()) for v in qs.tolist()]
        else:
            cstat = (np.bincount(q, weights=ctx)[qs] / counts[qs]).tolist()
        for qv, n, c in zip(qs.tolist(), counts[qs].tolist(), cstat):
            t, ok = self._attention_uniform(n, qv, int(round(c)))
            total += t
            measured += t if ok else 0.0
        return total, measured

    # ---------------------------------------------------------------------------- interface
    def token_kernels_s(self, t: int) -> float:
        """Linear and all-reduce seconds of a forward over t tokens (what CUDA-graph padding
        rows cost; simulator/latency/engine_costs.py). Not counted as a call in `stats`."""
        v = self.L * self._per_token("non_attention", self._na, t)[0]
        v += self._per_token("embedding", self._emb, t)[0]
        if self.tp > 1:
            v += 2 * self.L * self._per_token("allreduce", self._ar, t)[0]
        return v

    def forward(self, q: np.ndarray, ctx: np.ndarray, n_logits: int) -> np.ndarray:
        return np.array(self._compose(int(q.sum()), n_logits, *self._attention(q, ctx)))

    def forward_uniform(self, n: int, q: int, ctx: np.ndarray | None, ctx_sum: int,
                        n_logits: int) -> tuple:
        """forward(full(n, q), ctx, n_logits) for a batch whose every sequence has q query tokens
        (an engine decode step); ctx_sum = ctx.sum() (ctx is read only under the max statistic)."""
        c = int(ctx.max()) if self.ctx_stat == "max" else int(round(ctx_sum / n))
        t, ok = self._attention_uniform(n, q, c)
        return self._compose(n * q, n_logits, t, t if ok else 0.0)

    def forward_mixed(self, q_dec: int, dec_ctx: np.ndarray, dec_ctx_sum: int, pre_q: list[int],
                      pre_ctx: list[int], n_logits: int, shift: int = 0) -> tuple:
        """forward() of an engine step's batch (n decoding rows of q_dec query tokens over
        dec_ctx - shift cached, which must be >= 0; plus prefill chunks pre_q over pre_ctx)
        without building per-row arrays (forward_grouped)."""
        n = dec_ctx.shape[0]
        if not n:
            stat = 0
        else:
            stat = int(dec_ctx.max()) - shift if self.ctx_stat == "max" else dec_ctx_sum - n * shift
        return self.forward_grouped(n, q_dec, stat, pre_q, pre_ctx, n_logits)

    def forward_grouped(self, n: int, q_dec: int, dec_stat: int, pre_q: list[int],
                        pre_ctx: list[int], n_logits: int) -> tuple:
        """forward_mixed from the decoding rows' count and context statistic (their longest
        context under the max statistic, their context sum under the mean): the rows grouped
        by query length, and each group's context statistic, exactly as _attention forms
        them, so the seconds are the same."""
        use_max = self.ctx_stat == "max"
        groups: dict[int, list] = {}  # query length -> [rows, context max or sum]
        if n:
            groups[q_dec] = [n, dec_stat]
        for q, c in zip(pre_q, pre_ctx):
            g = groups.get(q)
            if g is None:
                groups[q] = [1, c]
            else:
                g[0] += 1
                g[1] = max(g[1], c) if use_max else g[1] + c
        T = n * q_dec + sum(pre_q)
        total = measured = 0.0
        for q in sorted(groups):  # _attention adds the groups in increasing q
            rows, c = groups[q]
            t, ok = self._attention_uniform(rows, q, c if use_max else int(round(c / rows)))
            total += t
            measured += t if ok else 0.0
        return self._compose(T, n_logits, total, measured)

    def decode_steps(self, ctx: np.ndarray, steps: int, n_logits: int, ctx_sum: int | None = None,
                     start: int = 0) -> tuple:
        """latency.base.decode_steps' sum of `steps` single-token forwards over caches of
        ctx + start, + start + 1, ..: each as forward() prices it, added in the same order
        (under the mean statistic from the context sum alone)."""
        n, use_max = ctx.shape[0], self.ctx_stat == "max"
        if use_max:
            c_max = int(ctx.max())
        elif ctx_sum is None:
            ctx_sum = int(ctx.sum())
        acc0 = acc1 = acc2 = acc3 = 0.0
        for j in range(start, start + steps):
            if use_max:
                t, ok = self._attention_uniform(n, 1, c_max + j)
            else:
                t, ok = self._attention_uniform(n, 1, int(round((ctx_sum + n * j) / n)))
            a, b, c, d = self._compose(n, n_logits, t, t if ok else 0.0)
            acc0 += a
            acc1 += b
            acc2 += c
            acc3 += d
        return (acc0, acc1, acc2, acc3)

    def forward_decode_many(self, q_dec: int, n: int, ctx_sums: np.ndarray, n_logits: int,
                            shift: int = 0, ctx_max: np.ndarray | None = None, pending=None):
        """forward_uniform for each step of a run (latency.base.forward_decode_many)."""
        if shift or n == 0 or (self.ctx_stat == "max" and ctx_max is None):
            return None
        cs = ctx_max if self.ctx_stat == "max" else np.round(ctx_sums / n).astype(np.int64)
        att = [self._attention_uniform(n, q_dec, c) for c in cs.tolist()]
        linear, lin_meas, comm, comm_meas, fell = self._token_parts(n * q_dec, n_logits)
        L, over = self.L, self._overhead
        over_meas, attn = over if self._overhead_measured else 0.0, np.array([L * t for t, _ in att])
        stats = [("_calls", np.ones(len(att), np.int64)),  # each step's, as _compose keeps them
                 ("_fallback_calls", np.array([fell or (not ok and 0.0 < t) for t, ok in att], np.int64)),
                 ("_t_total", linear + attn + comm + over),
                 ("_t_measured", np.array([lin_meas + (L * t if ok else 0.0) + comm_meas + over_meas
                                           for t, ok in att]))]
        if pending is None:
            for name, v in stats:
                setattr(self, name, add_steps(getattr(self, name), v, len(att)))
        else:
            pending += [(self, name, v) for name, v in stats]
        return (linear, attn, comm, over)

    def _token_parts(self, T: int, n_logits: int) -> tuple:
        """(linear, its measured part, communication, its measured part, any fallback) of a
        forward over T tokens with n_logits sampled positions (memoised)."""
        got = self._parts.get((T, n_logits))
        if got is None:
            got = self._parts[(T, n_logits)] = self._token_parts_of(T, n_logits)
        return got

    def _token_parts_of(self, T: int, n_logits: int) -> tuple:
        L = self.L
        na, na_ok = self._per_token("non_attention", self._na, T)
        emb, emb_ok = self._per_token("embedding", self._emb, T)
        linear = L * na + emb
        lin_meas = (L * na if na_ok else 0.0) + (emb if emb_ok else 0.0)
        fell_back = not (na_ok and emb_ok)
        if n_logits:
            head, head_ok = self._per_token("lm_head", self._head, int(n_logits))
            linear += head
            lin_meas += head if head_ok else 0.0
            fell_back |= not head_ok
        comm = comm_meas = 0.0
        if self.tp > 1:
            ar, ar_ok = self._per_token("allreduce", self._ar, T)
            comm = 2 * L * ar
            comm_meas = comm if ar_ok else 0.0
            fell_back |= not ar_ok
        return linear, lin_meas, comm, comm_meas, fell_back

    def _compose(self, T: int, n_logits: int, attn: float, attn_meas: float) -> tuple:
        """The forward's breakdown from its token count and one layer's attention."""
        linear, lin_meas, comm, comm_meas, fell_back = self._token_parts(T, n_logits)
        fell_back |= attn_meas < attn
        attn, attn_meas = self.L * attn, self.L * attn_meas
        over = self._overhead
        self._calls += 1
        self._fallback_calls += fell_back
        self._t_total += linear + attn + comm + over
        self._t_measured += lin_meas + attn_meas + comm_meas + (over if self._overhead_measured else 0.0)
        return (linear, attn, comm, over)

    @property
    def stats(self) -> dict:
        """calls, fallback_calls (calls with any component outside the grid), measured_share
        (fraction of predicted seconds from measured points), fallback lookups per component."""
        return {
            "calls": self._calls,
            "fallback_calls": self._fallback_calls,
            "measured_share": self._t_measured / self._t_total if self._t_total > 0 else 1.0,
            "fallback_lookups": dict(self._component_fallbacks),
            "profile": str(self.profile.csv_path) if self.profile.csv_path else None,
        }


def make_profile_latency(model: ModelArch, gpu: GPU, tp: int, dtype: str, *,
                         root: Path | str = Path("profiles"), overrides: dict | None = None,
                         field: str = "latency") -> ProfileLatency:
    """The measured backend for a deployment: the profile of (gpu, model, tp) under `root`.

    Its fallback (outside the grid) is a roofline with the GPU's saved calibration, or the
    nearest calibrated GPU's (simulator/latency/calibration.py), else default params; a scenario's
    `latency.params` override either.
    """
    path = find_profile(gpu.name, model.name, tp, root)
    if path is None:
        csv_path, _ = profile_paths(root, gpu.name, model.name, tp)
        raise SpecsimError(f"{field}.backend: 'profile' needs a measured profile of "
                           f"{model.name} at tp={tp} on {gpu.name}, expected at {csv_path}; capture one "
                           f"with `specsim profile --model {model.name} --tp {tp} --device-name "
                           f"{gpu.name}` or use backend 'roofline'")
    profile = load_profile(path, model=model.name, tp=tp, gpu=gpu.name)
    from simulator.latency.calibration import derived_params
    # Inline devices (e.g. cpu-local) use only their own calibration: datasheet scaling from
    # another GPU means nothing for them.
    got = derived_params(gpu, root, nearest=gpu.name in GPUS)
    params = got[0] if got is not None else RooflineParams()
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(RooflineParams.field_names()))
    if unknown:
        raise SpecsimError(f"{field}.params: unknown roofline parameter(s) {unknown}")
    params = replace(params, **overrides)
    fallback = RooflineLatency(model, gpu, tp, dtype, params)
    return ProfileLatency(profile, model, gpu, tp, dtype, fallback)
