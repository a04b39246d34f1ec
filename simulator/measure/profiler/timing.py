"""Timing on this machine: a steady allocator, the clock (CUDA events, thread CPU time or wall
time), attention timed in context (inside a layer, against the layer's non-attention work), the
rows made from the samples, and the per-operator breakdown from torch.profiler."""
from __future__ import annotations

import itertools
import math
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Callable

import numpy as np

from simulator.errors import SpecsimError
from simulator.latency.profiles import ProfileRow
from simulator.measure.profiler.grid import Grid

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def steady_cpu_allocator() -> str:
    """Make glibc keep freed memory instead of returning it to the OS, process-wide.

    By default glibc serves large blocks (past a threshold that moves with the allocation history)
    with fresh mmap pages, so a tensor of a few MB can cost a page fault per 4 KiB on every call
    and an op's time depends on what ran before it (measured here: the same attention call 6 ms
    or 45 ms). Fixing the mmap threshold at its 32 MiB maximum and never trimming makes repeated
    forwards reuse their memory. A real CPU engine compared with a CPU profile should call this too.
    Returns a description for the profile's notes.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        int_max = 2**31 - 1  # mallopt takes a C int: a larger value would wrap (to 0: trim always)
        ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20) == 1 and libc.mallopt(M_TRIM_THRESHOLD, int_max) == 1
    except (OSError, AttributeError):
        ok = False
    return ("glibc mallopt: mmap threshold 32 MiB, no trimming (steady_cpu_allocator)" if ok
            else "default allocator (mallopt unavailable)")


class _Timer:
    """Time of fn() per call: CUDA events on a GPU; on a CPU, the calling thread's CPU time when
    torch runs single-threaded (immune to other processes time-slicing a shared machine, which
    otherwise doubles some samples), else wall time (perf_counter)."""

    def __init__(self, torch, device):
        self.torch, self.cuda = torch, device.type == "cuda"
        single = torch.get_num_threads() == 1
        self.clock = time.thread_time if single else time.perf_counter
        self.description = ("CUDA events per call" if self.cuda else
                            "time.thread_time per call (CPU time of the single torch thread)" if single
                            else "time.perf_counter per call (wall time)")

    def stamp(self):
        """A point in time on this timer's clock (a recorded CUDA event on a GPU)."""
        if self.cuda:
            e = self.torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return self.clock()

    def spans(self, stamps: list) -> list[float]:
        """Seconds between successive stamps."""
        if self.cuda:
            stamps[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(stamps, stamps[1:])]
        return [b - a for a, b in zip(stamps, stamps[1:])]

    def measure(self, fn: Callable[[], object], warmup: int, min_repeats: int, max_repeats: int,
                budget_s: float) -> list:
        """Per-call times of fn(); or, when fn has a `sample(timer)` method (a point that times
        several things per sample, e.g. _InContextAttention), the tuples it returns."""
        torch = self.torch
        for _ in range(warmup):
            fn()
        if self.cuda:
            torch.cuda.synchronize()
        times: list = []
        spent = 0.0
        sample = getattr(fn, "sample", None)
        while len(times) < min_repeats or (len(times) < max_repeats and spent < budget_s):
            if sample is not None:
                v = sample(self)
                times.append(v)
                spent += v[0] + v[1]
                continue
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                dt = a.elapsed_time(b) / 1e3
            else:
                t0 = self.clock()
                fn()
                dt = self.clock() - t0
            times.append(dt)
            spent += dt
        return times

    def measure_points(self, points: list[tuple[tuple, Callable[[], Callable]]], g: Grid,
                       log: Callable[[str], None]) -> dict[tuple, np.ndarray]:
        """Samples per point key, taken in `g.passes` passes over all the points: a burst of
        load from elsewhere on the machine then spoils a fraction of each point's samples (which
        the median ignores) rather than all the samples of a few points."""
        out: dict[tuple, list] = {k: [] for k, _ in points}
        per = lambda n: max(1, math.ceil(n / g.passes))
        for i in range(g.passes):
            t0 = time.perf_counter()
            for key, build in points:
                out[key] += self.measure(build(), g.warmup, per(g.min_repeats), per(g.max_repeats),
                                         g.budget_s / g.passes)
            log(f"  pass {i + 1}/{g.passes}: {len(points)} points in {time.perf_counter() - t0:.1f}s")
        return {k: np.asarray(v) for k, v in out.items()}


def _row(op: str, b: int, q: int, ctx: int, tokens: int, t: np.ndarray) -> ProfileRow:
    if t.ndim == 2:  # (layer, non_attention, attention op in the layer) samples
        return _in_context_row(op, b, q, ctx, tokens, t)
    p10, med, p90 = np.percentile(t, [10, 50, 90])
    return ProfileRow(op, b, q, ctx, tokens, float(med), float(p10), float(p90), int(t.size))


def _in_context_row(op: str, b: int, q: int, ctx: int, tokens: int, t: np.ndarray) -> ProfileRow:
    """The row of an in-context attention point from its samples t[:, (layer, non_attention,
    attention op inside the layer)]: median of layer - non_attention (what attention adds to a
    layer), floored at the median of the attention op's own time inside the layer; p10/p90 of
    the per-sample differences, floored the same way and kept around the median."""
    d = t[:, 0] - t[:, 1]
    floor = float(np.median(t[:, 2]))
    med = max(float(np.median(d)), floor)
    p10, p90 = np.percentile(np.maximum(d, t[:, 2]), [10, 90])
    return ProfileRow(op, b, q, ctx, tokens, med, float(min(p10, med)), float(max(p90, med)), int(len(t)))


class _InContextAttention:
    """One attention point (b sequences, q new tokens over ctx cached) timed inside a layer.

    `sample(timer)` times, back to back and in alternating order, (a) a whole layer as
    Transformer.forward runs it (pre_attention, Block.attend with the forward's precomputed mask,
    post_attention; a stamp on each side of the attention op) and (b) the same layer's
    non-attention work on the same tokens, each on the next of the rotating layer copies and KV
    caches. Returns (layer s, non_attention s, attention op inside the layer s)."""

    def __init__(self, tm, blocks: list, cache, x, positions, slots, kv_lens, n: int):
        self.cache, self.x, self.pos, self.slots, self.kv_lens, self.n = \
            cache, x, positions, slots, kv_lens, n
        self.blocks = itertools.cycle(blocks)
        self.layers = itertools.cycle(range(cache.n_layers))
        self.mask = tm.causal_mask(x.shape[1], kv_lens, n)  # once per forward, as Transformer.forward
        self._flip = False

    def _layer(self, stamp):
        blk, li = next(self.blocks), next(self.layers)
        t0 = stamp()
        q, k, v = blk.pre_attention(self.x, self.pos)
        t1 = stamp()
        o = blk.attend(q, k, v, self.pos, self.cache, li, self.slots, self.kv_lens, self.n, self.mask)
        t2 = stamp()
        blk.post_attention(self.x, o)
        return [t0, t1, t2, stamp()]

    def _non_attention(self, stamp):
        blk = next(self.blocks)
        t0 = stamp()
        blk.non_attention_parts(self.x, self.pos)
        return [t0, stamp()]

    def __call__(self):  # warm-up: both halves, untimed
        self._layer(lambda: None)
        self._non_attention(lambda: None)

    def sample(self, timer) -> tuple[float, float, float]:
        self._flip = not self._flip
        if self._flip:
            lay, na = self._layer(timer.stamp), self._non_attention(timer.stamp)
        else:
            na, lay = self._non_attention(timer.stamp), self._layer(timer.stamp)
        s_lay, s_na = timer.spans(lay), timer.spans(na)
        return sum(s_lay), s_na[0], s_lay[1]


# Kineto (torch's profiler library, torch 2.13) writes a trace line per profiler start and stop
# straight to file descriptor 2 ("USDT:... SyncActivityProfilerHandler.cpp:52] profiler_start");
# older builds print "STAGE:... ActivityProfilerController" lines. Dropped; anything else is kept.
_KINETO_NOISE = re.compile(r"^(USDT|STAGE):.*(ActivityProfiler|profiler_(start|stop))")


@contextmanager
def _quiet_native_stderr():
    """Capture what native code writes to fd 2 and pass on all but kineto's trace lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode("utf-8", "replace").splitlines()
                    if line.strip() and not _KINETO_NOISE.match(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


def _breakdown(torch, device, parent, b, q, ctx, T, fn, iters) -> list[ProfileRow]:
    """Per-operator self time of fn() from torch.profiler, averaged over `iters` calls."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    fn()
    with _quiet_native_stderr():
        with profile(activities=acts) as prof:
            for _ in range(iters):
                fn()
            if cuda:
                torch.cuda.synchronize()
        events = prof.key_averages()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(float(getattr(e, attr)) for e in events)
    if cuda and total <= 0:
        raise SpecsimError(f"torch.profiler returned zero CUDA device time for {parent} b={b} q={q} "
                           f"ctx={ctx}: the CUDA activity was not recorded (check CUPTI / the torch build)")
    rows = []
    for e in events:
        us = float(getattr(e, attr))
        if us <= 0:
            continue
        t = us / 1e6 / iters
        rows.append(ProfileRow(f"op:{parent}/{e.key}", b, q, ctx, T, t, t, t, iters))
    return rows
