"""Interpolation over a profile's measured points (simulator/latency/profile.py): per-token
curves piecewise-linear in log-log, and the attention grid multilinear in (log batch, log q,
log(1 + ctx)), both monotone (a running maximum: more work never costs less)."""
from __future__ import annotations

import bisect
import math

import numpy as np


class Curve:
    """time(tokens), piecewise-linear in log-log between measured points; None outside them."""

    def __init__(self, tokens: np.ndarray, times: np.ndarray):
        order = np.argsort(tokens)
        self.tokens = tokens[order].astype(np.int64)
        self.times = np.maximum.accumulate(times[order])
        self.lx, self.ly = np.log(self.tokens.astype(float)), np.log(self.times)
        self.lo, self.hi = int(self.tokens[0]), int(self.tokens[-1])

    def __call__(self, t: int) -> float | None:
        if t < self.lo or t > self.hi:
            return None
        return float(math.exp(np.interp(math.log(t), self.lx, self.ly)))


class Grid3:
    """time(batch, q, ctx), multilinear in (log b, log q, log(1 + ctx)); None outside or at a hole."""

    def __init__(self, batch: np.ndarray, q: np.ndarray, ctx: np.ndarray, times: np.ndarray):
        self.b_axis, self.q_axis, self.c_axis = (np.unique(a) for a in (batch, q, ctx))
        vals = np.full((len(self.b_axis), len(self.q_axis), len(self.c_axis)), np.nan)
        ib = np.searchsorted(self.b_axis, batch)
        iq = np.searchsorted(self.q_axis, q)
        ic = np.searchsorted(self.c_axis, ctx)
        vals[ib, iq, ic] = times
        hole = np.isnan(vals)
        for axis in range(3):  # running maximum along each axis, holes kept as holes
            vals = np.fmax.accumulate(np.where(hole, -np.inf, vals), axis=axis)
        vals[hole] = np.nan
        self.logt = np.log(vals)
        self.axes = [list(np.log(self.b_axis.astype(float))), list(np.log(self.q_axis.astype(float))),
                     list(np.log1p(self.c_axis.astype(float)))]
        self.bounds = [(int(a[0]), int(a[-1])) for a in (self.b_axis, self.q_axis, self.c_axis)]
        self._logt = self.logt.tolist()  # python floats: scalar indexing is much faster
        self._leg_memo: list[dict] = [{}, {}, {}]

    def clamp(self, b: int, q: int, c: int) -> tuple[int, int, int]:
        return tuple(min(max(v, lo), hi) for v, (lo, hi) in zip((b, q, c), self.bounds))

    def _legs(self, axis: int, v: int):
        """The grid indices and weights of value v along one axis; None outside the axis."""
        memo = self._leg_memo[axis]
        hit = memo.get(v, memo)
        if hit is not memo:
            return hit
        ax = self.axes[axis]
        x = math.log1p(v) if axis == 2 else math.log(v)
        if x < ax[0] - 1e-12 or x > ax[-1] + 1e-12:
            legs = None
        else:
            i = max(0, min(bisect.bisect_right(ax, x) - 1, len(ax) - 1))
            if i == len(ax) - 1 or abs(x - ax[i]) < 1e-12:
                legs = ((i, 1.0),)
            elif abs(x - ax[i + 1]) < 1e-12:
                legs = ((i + 1, 1.0),)
            else:
                w = (x - ax[i]) / (ax[i + 1] - ax[i])
                legs = ((i, 1.0 - w), (i + 1, w))
        memo[v] = legs
        return legs

    def __call__(self, b: int, q: int, c: int) -> float | None:
        lb, lq, lc = self._legs(0, b), self._legs(1, q), self._legs(2, c)
        if lb is None or lq is None or lc is None:
            return None
        t = self._logt
        acc = 0.0
        for i, wi in lb:
            ti = t[i]
            for j, wj in lq:
                tij = ti[j]
                for k, wk in lc:
                    v = tij[k]
                    if v != v:  # NaN: a point the capture skipped
                        return None
                    acc += wi * wj * wk * v
        return math.exp(acc)
