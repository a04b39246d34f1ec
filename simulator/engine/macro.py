"""Macro-steps: a replica advances a run of predictable decode steps in one SimPy event.

Between scheduling events the decode steps of a replica are predictable: the batch has no
partial prefill, the step just planned admitted nothing and preempted nothing (and, with a
waiting request, nothing can be admitted until a sequence finishes: admission's limits are
constant or only tighten as caches grow), so until a sequence finishes, the KV cache would
overflow, or a request arrives while none waits, every step decodes the same sequences. For
such a run the replica (simulator/engine/replica.py) plans the first step as usual; then
plan_run reads the k x n round tokens at once (drawn per request when it started decoding:
simulator/engine/trajectories.py), takes cumulative tokens per sequence, stops
at the first step in which any sequence finishes, before the first step whose exact KV count
would overflow, and before the next open-loop arrival, prices the steps from their context sums
(Strategy.run_times), and returns a Run ending at an absolute time computed by the same
sequential float additions as single steps; apply_run then applies the first J steps' effects.
An arrival in the middle of a run (closed loop, another replica's completion) cuts it at the
step in progress (Run.cut).

Exactness: step times, inter-token gaps, busy and component seconds are computed with the
single-step path's float operations in its order, so runs whose outcomes need no randomness
and round tokens are the ones single steps read, so runs reproduce the single-step loop's
outputs byte for byte (except where event order at equal times could differ).
"""
from __future__ import annotations

import bisect
import math

import numpy as np
import simpy

from simulator.engine.request_state import ACC, CTX, REM, TS
from simulator.engine.strategies import Outcome, RunBatch
from simulator.latency.base import add_steps

CAP = 128  # longest run (steps) sampled and priced at once
# Shortest expected run worth planning. Planning, pricing and applying a run cost about what
# several single steps do, and runs end earlier than expected (a sampled finish, an arrival), so
# shorter ones run as single steps; the outputs are the same either way. Measured (issue 13's
# closing note) over open and closed loops, AR and SD: with steps priced by the roofline's
# memoised path 12 is as fast as single steps where runs are short and keeps their gain where
# they are long; steps priced by a generic backend (the profile's) cost 3-5x more, and there 4.
MIN_RUN = 12
MIN_RUN_PRICEY = 4


class Run:
    """A planned run of decode steps: per-step seconds and absolute end times, what the decode
    table needs to apply it (`table`: for the eager table the cumulative tokens and accepted
    counts per sequence, for the lazy one each step's emitted tokens and KV blocks held),
    charges; `interruptible` when an arrival could be admitted mid-run (no request was
    waiting)."""

    __slots__ = ("n", "dt", "ends", "table", "charges", "interruptible", "cut_at", "pending",
                 "start")

    def __init__(self, n, dt, ends, table, charges, interruptible):
        self.n, self.dt, self.ends, self.table = n, dt, ends, table
        self.charges, self.interruptible, self.cut_at = charges, interruptible, None
        self.pending: list = []  # (object, attribute, per-step values) of backend statistics
        self.start: float | None = None  # when the first step starts (set by plan_run)

    @property
    def steps(self) -> int:
        return len(self.ends)

    def cut(self, t: float) -> int:
        """Steps kept when a request arrives at t mid-run: those up to the one in progress (the
        step that would be planned at or after t is not run). Returns the kept count."""
        self.cut_at = min(self.steps, bisect.bisect_left(self.ends, t) + 1)
        return self.cut_at


def exact_delay(now: float, t: float) -> float:
    """A delay d with now + d == t in floating point when one exists (SimPy schedules at
    now + delay), so that a run ends at exactly the time single steps would reach; else t - now
    (the caller then hops: simulator/engine/replica.py _sleep_until)."""
    d = t - now
    if now + d == t:
        return d
    for e in (math.nextafter(d, math.inf), math.nextafter(d, -math.inf)):
        if now + e == t:
            return e
    return d


def _kv_used(ctx: np.ndarray, before: np.ndarray | int, c: int, bs: int) -> int:
    """Exact KV blocks of the decode rows at a step whose contexts are ctx + before (as _fit)."""
    return int((((ctx + before) + (c + bs - 1)) // bs).sum())


MAX_FAILS = 6  # after f failed plans in a row the next 2**f - 1 eligible steps do not try


def try_run(rep, now: float):
    """plan_run, with a back-off: big batches have a sequence finishing nearly every step, and
    each failed plan costs a few microseconds, so after f failures in a row the next 2**f - 1
    eligible steps (at most 63) run as single steps without trying (the replica's loop counts
    them down in rep.run_skip before it calls this). Which steps try does not change the
    outputs (a run reproduces the single steps it replaces)."""
    run = rep._plan_run(now, rep.horizon(), rep._last_dt)
    if run is None:
        rep.run_fails = f = min(rep.run_fails + 1, MAX_FAILS)
        rep.run_skip = (1 << f) - 1
    else:
        rep.run_fails = 0
    return run


def plan_run(rep, now: float, horizon: float, last_dt: float | None):
    """The run starting with the step rep just planned (all decode, see the module docstring),
    or None when it would be a single step. horizon: the next open-loop arrival (inf: none)."""
    interruptible = not rep.waiting
    min_run = MIN_RUN if rep.strategy.cheap_steps else MIN_RUN_PRICEY
    # Every step emits >= 1 token, so nothing finishes before step min(rem); expect the first
    # finish near min(rem) / tokens per step, the next arrival near (horizon - now) / last dt.
    k = CAP
    if interruptible and horizon < math.inf and last_dt:
        k = min(k, int((horizon - now) / last_dt) + 1)
        if k < min_run:  # the common exit in open loops: an arrival within a few steps
            return None
    D = rep.D
    n, ctx, rem = D.shape[1], D[CTX], D[REM]
    rem_min = int(rem.min())
    k = min(k, rem_min, int(rem_min / rep.strategy.tokens_per_step) + 2)
    if k < min_run:
        return None
    out = rep.strategy.uniform
    if out is None:  # the rows' drawn rounds
        tok = rep.traj.window(D[TS], rep.epoch, k)
        out = Outcome(tok, tok - 1)
    tok = out.tokens
    steps = np.arange(k)
    if np.ndim(tok) == 0:  # every sequence gets the same tokens each step
        m = min(k, -(-int(rem.min()) // int(tok)))
        steps = steps[:m]
        before = lambda j: int(tok) * j  # noqa: E731  tokens emitted before step j
        ctx_sums = int(ctx.sum()) + n * int(tok) * steps
        ctx_max = int(ctx.max()) + int(tok) * steps
        cum = int(tok) * (steps + 1)
    else:
        cum = np.cumsum(tok, axis=0)
        done = (cum >= rem).any(axis=1)
        m = int(done.argmax()) + 1 if done.any() else k
        cum, steps = cum[:m], steps[:m]
        prev = np.concatenate([np.zeros((1, n), np.int64), cum[:-1]])
        before = lambda j: prev[j]  # noqa: E731
        ctx_sums = int(ctx.sum()) + prev.sum(axis=1)
        ctx_max = (ctx + prev).max(axis=1)
    m = _kv_limit(rep, ctx, ctx_sums, before, m)
    if m < 1:
        return None
    ctx_sums, ctx_max = ctx_sums[:m], ctx_max[:m]
    rb = RunBatch(n, rep.qdec, ctx_sums, ctx_max, lambda j: ctx + before(j))
    dt, charges = rep.strategy.run_times(rb)
    ends = step_ends(dt, now, horizon if interruptible else math.inf)
    acc = None if out.accepted is None else (
        out.accepted * (steps + 1) if np.ndim(out.accepted) == 0 else np.cumsum(out.accepted, axis=0))
    run = Run(n, dt, ends, (cum, acc), charges, interruptible)
    run.pending, run.start = rb.pending, now
    return run


def step_ends(dt: np.ndarray, now: float, horizon: float) -> list[float]:
    """Each step's end as single steps advance the clock (one addition a step), up to the step
    in progress at `horizon` (the next open-loop arrival when the run is interruptible)."""
    ends, s = [], now
    for d in dt.tolist():
        s = s + d
        ends.append(s)
    if horizon < math.inf:
        ends = ends[:min(len(ends), bisect.bisect_left(ends, horizon) + 1)]
    return ends


def _kv_limit(rep, ctx, ctx_sums, before, m: int) -> int:
    """Steps of the run before the first one whose exact KV count would overflow (step 0 was
    checked when it was planned). A bound on the last step's count skips the exact count."""
    c, bs = rep.qdec + rep.lookahead, rep.bs
    total_blocks = rep.blocks_total
    if (int(ctx_sums[m - 1]) + ctx.shape[0] * (c + bs - 1)) // bs <= total_blocks:
        return m
    if _kv_used(ctx, before(m - 1), c, bs) <= total_blocks:
        return m
    lo, hi = 0, m - 1  # used(lo) fits, used(hi) overflows; counts only grow along the run
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _kv_used(ctx, before(mid), c, bs) <= total_blocks:
            lo = mid
        else:
            hi = mid
    return hi


def sleep_until(env, t: float):
    """Wake at exactly time t. SimPy wakes at now + delay; when no delay rounds to t, a first
    hop to a time m >= t / 2 makes t - m exact (Sterbenz), so the second lands on t."""
    d = exact_delay(env.now, t)
    if env.now + d != t:
        yield env.timeout((t - env.now) * 0.75)
        d = t - env.now
    yield env.timeout(d)


def wait_run(rep, run: Run):
    """The replica's process waits for a run to end (or, cut by an arrival, for the step in
    progress: Replica.submit cuts it and interrupts), then applies it."""
    rep._live = run
    try:
        yield from sleep_until(rep.env, run.ends[-1])
    except simpy.Interrupt:
        yield from sleep_until(rep.env, run.ends[run.cut_at - 1])
    rep._live = None
    rep._last_dt = float(run.dt[(run.cut_at or run.steps) - 1])
    rep._apply_run(run)


def _note_kv(rep, ctx: np.ndarray) -> None:
    """Track the KV peak of a decode step over caches ctx as Replica._fit does."""
    c, bs = rep.qdec + rep.lookahead + rep.bs - 1, rep.bs
    if (int(ctx.sum()) + ctx.shape[0] * c) // bs > rep.max_blocks_used:
        rep.max_blocks_used = max(rep.max_blocks_used, int(((ctx + c) // bs).sum()))


def account(rep, run: Run, J: int, emitted: list[int]) -> float:
    """What the run's first J steps add outside the decode table, as single steps would have:
    the step log (emitted: tokens each step emitted), one more epoch a step, the inter-token
    gaps, busy and component seconds, backends' statistics. Returns the last step's end."""
    st, ends, n = rep.st, run.ends, run.n
    rep.log_start.append(run.start)
    rep.log_start.extend(ends[:J - 1])
    rep.log_dt.extend(run.dt[:J].tolist())
    rep.log_seqs.extend([n] * J)
    rep.log_tokens.extend([n * rep.qdec] * J)
    rep.log_emitted.extend(emitted)
    rep.epoch += J
    if rep.last_arr is None:
        st.itl_values.append(ends[0] - rep.last_t)
        st.itl_counts.append(n)
    else:
        st.itl_arrays.append(ends[0] - rep.last_arr)
        rep.last_arr = None
    if J > 1:
        st.itl_values.extend([b - a for a, b in zip(ends[:J - 1], ends[1:J])])
        st.itl_counts.extend([n] * (J - 1))
    now = rep.last_t = ends[J - 1]
    rep.busy = add_steps(rep.busy, run.dt, J)
    rep.steps += J
    rep.events += 1
    for name, parts in run.charges.items():
        acc = getattr(rep.strategy, f"{name}_busy")
        for i in range(4):
            acc[i] = add_steps(acc[i], parts[i], J)
    for obj, attr, values in run.pending:  # backends' run statistics (profile)
        setattr(obj, attr, add_steps(getattr(obj, attr), values, J))
    return now


def apply_run(rep, run: Run) -> None:
    """Apply the first run.cut_at (default all) steps of `run` to the eager table (see
    Replica._apply for one step): tokens, accepted counts, rounds, the KV peak, the sequences
    that finished in the last step, and what account() adds."""
    J = run.cut_at or run.steps
    D = rep.D
    cums, accs = run.table
    scalar = np.ndim(cums) == 1
    cum = int(cums[J - 1]) if scalar else cums[J - 1]
    before_last = (int(cums[J - 2]) if scalar else cums[J - 2]) if J > 1 else 0
    ctx, rem = D[CTX], D[REM]
    _note_kv(rep, ctx + before_last)  # the KV peak, as _fit tracks it, at the last step
    upto = np.minimum(cums[:J] if not scalar else cums[:J, None], rem).sum(axis=1)
    now = account(rep, run, J, np.diff(upto, prepend=0).tolist())  # emitted by each step
    fin = rem <= cum
    e = np.minimum(cum, rem)
    ctx += e  # views: update D
    rem -= e
    rep._rem_min = rep._ctx_sum = None
    if accs is not None:
        D[ACC] += accs[J - 1]
    if fin.any():
        ids = rep._leave(fin)
        rep.st.finish[ids] = now
        rep.on_finish(ids.shape[0])
