"""The SimPy engine: one process per replica looping over batch steps, an arrival process, a router.

Continuous batching as vLLM does it (v1 scheduler with chunked prefill): each step first gives
running decodes their tokens (1 for AR, gamma+1 verify positions for SD), then continues
partial prefills, then admits waiting requests while max_num_seqs, the token budget and free KV
blocks allow. When the KV cache cannot hold the step, the most recently admitted requests are
preempted and later recomputed. Without chunked prefill, a step runs either new prompts whole
(prefill first, as vLLM v0) or decodes.

The engine only schedules: step times come from the latency backends and accepted counts from
acceptance.py, both through the deployment's Strategy. State lives in numpy arrays: each replica
keeps a running table (one row per running sequence, updated by whole-column operations) and
writes progress back to per-request arrays when a request finishes or is preempted. One SimPy
event per batch step (plus one per open-loop arrival), never per token.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np
import simpy

from simulator.acceptance import request_alphas
from simulator.deployments import ResolvedDeployment
from simulator.latency.base import COMPONENTS
from simulator.strategies import Outcome, StepBatch, Strategy, make_strategy
from simulator.workload import Requests


@dataclass
class Records:
    """What a run produced: per-request arrays (index = request id) plus run-level counters."""

    arrival: np.ndarray
    first_token: np.ndarray
    finish: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    rounds: np.ndarray
    accepted: np.ndarray
    drafted: np.ndarray
    round_tokens: np.ndarray  # tokens emitted by decode rounds (prefill tokens excluded)
    preemptions: np.ndarray
    replica: np.ndarray
    alpha: np.ndarray
    itl: np.ndarray  # gaps between successive emissions of a request (s)
    busy_s: np.ndarray  # per replica
    breakdown_s: dict  # component -> seconds summed over steps and replicas
    steps: int
    max_kv_blocks_used: int
    kv_blocks_total: int
    mean_in_system: float  # time-average requests in the system (waiting + running)
    strategy_stats: dict  # strategy-specific metrics (e.g. SSD cache hit rates), merged into the summary


class _State:
    """Per-request arrays shared by the replicas of one deployment (index = request id).

    Progress of a request lives in its replica's running table while it runs; it is written
    back here when the request finishes or is preempted.
    """

    def __init__(self, req: Requests, alpha: np.ndarray):
        n = req.n
        self.prompt, self.out = req.prompt, req.output
        self.arrival = req.arrival.copy()
        self.first = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.generated = np.zeros(n, np.int64)
        self.prefill_target = req.prompt.copy()  # KV length at which (re)prefill is complete
        self.rounds = np.zeros(n, np.int64)
        self.accepted = np.zeros(n, np.int64)
        self.round_tokens = np.zeros(n, np.int64)
        self.preempt = np.zeros(n, np.int64)
        self.replica = np.full(n, -1, np.int64)
        self.last_emit = np.full(n, np.nan)
        self.alpha = alpha
        self.itl = np.empty(1 << 16)
        self.itl_n = 0

    def add_itl(self, gaps: np.ndarray) -> None:
        end = self.itl_n + gaps.shape[0]
        if end > self.itl.shape[0]:
            self.itl = np.resize(self.itl, max(end, 2 * self.itl.shape[0]))
        self.itl[self.itl_n:end] = gaps
        self.itl_n = end


# Columns of a replica's running table (int64 rows aligned with its running order). COMP, GEN
# and RTOK are adjacent so one slice update advances all three.
COMP, GEN, RTOK, ROUNDS, ACC, TGT, OUT = range(7)
_EMPTY = np.zeros(0, np.int64)


class Replica:
    """One model instance (tp GPUs): a SimPy process that runs batch steps while it has work."""

    def __init__(self, env: simpy.Environment, idx: int, dep: ResolvedDeployment, st: _State,
                 strategy: Strategy, rng: np.random.Generator, on_finish: Callable[[int], None]):
        self.env, self.idx, self.dep, self.st, self.rng = env, idx, dep, st, rng
        self.on_finish = on_finish
        self.waiting: deque[int] = deque()
        # The running table: request ids, int columns (see COMP..OUT), alpha, last emission time.
        self.ids = _EMPTY
        self.S = np.zeros((0, 7), np.int64)
        self.alpha = np.zeros(0)
        self.last = np.zeros(0)
        self.wake: simpy.Event | None = None
        self.busy = 0.0
        self.steps = 0
        self.max_blocks_used = 0
        sch = dep.scheduler
        self.bs, self.max_seqs, self.budget = sch.block_size, sch.max_num_seqs, sch.max_num_batched_tokens
        self.chunked = sch.chunked_prefill
        self.max_prefills = sch.max_prefills_per_step  # None: no limit on prefilling rows per step
        self.blocks_total = dep.memory.kv_capacity_tokens // self.bs
        self.strategy = strategy
        self.qdec, self.lookahead = strategy.query_tokens, strategy.lookahead
        self._q_cache: dict[int, np.ndarray] = {}
        self.process = env.process(self.run())

    @property
    def outstanding(self) -> int:
        return len(self.waiting) + self.ids.shape[0]

    def submit(self, r: int) -> None:
        self.st.replica[r] = self.idx
        self.waiting.append(r)
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    # ---- the running table ------------------------------------------------------------------
    def _add(self, ids: list[int]) -> None:
        st, a = self.st, np.asarray(ids, np.int64)
        rows = np.empty((a.shape[0], 7), np.int64)
        rows[:, COMP] = 0
        rows[:, GEN], rows[:, RTOK] = st.generated[a], st.round_tokens[a]
        rows[:, ROUNDS], rows[:, ACC] = st.rounds[a], st.accepted[a]
        rows[:, TGT], rows[:, OUT] = st.prefill_target[a], st.out[a]
        self.ids = np.concatenate([self.ids, a])
        self.S = np.concatenate([self.S, rows])
        self.alpha = np.concatenate([self.alpha, st.alpha[a]])
        self.last = np.concatenate([self.last, st.last_emit[a]])

    def _remove(self, drop: np.ndarray) -> np.ndarray:
        """Write the dropped rows' progress back to the shared state; return their ids."""
        st, ids, rows = self.st, self.ids[drop], self.S[drop]
        st.generated[ids], st.round_tokens[ids] = rows[:, GEN], rows[:, RTOK]
        st.rounds[ids], st.accepted[ids] = rows[:, ROUNDS], rows[:, ACC]
        st.last_emit[ids] = self.last[drop]
        keep = ~drop
        self.ids, self.S, self.alpha, self.last = self.ids[keep], self.S[keep], self.alpha[keep], self.last[keep]
        return ids

    def _preempt_tail(self, keep: int) -> None:
        """Preempt rows keep.. (the most recently admitted): free their KV, recompute later."""
        drop = np.zeros(self.ids.shape[0], bool)
        drop[keep:] = True
        ids = self._remove(drop)
        st = self.st
        st.prefill_target[ids] = st.prompt[ids] + st.generated[ids]
        st.preempt[ids] += 1
        for r in ids[::-1]:
            self.waiting.appendleft(int(r))

    # ---- scheduling -------------------------------------------------------------------------
    def _uniform_q(self, n: int) -> np.ndarray:
        """full(n, qdec), shared between steps (read-only: nobody writes into a step's q)."""
        q = self._q_cache.get(n)
        if q is None:
            q = self._q_cache[n] = np.full(n, self.qdec)
            q.flags.writeable = False
        return q

    def _fit(self, need: np.ndarray) -> int:
        """KV blocks for `need` tokens per row; preempts from the tail if they do not fit."""
        per = (need + (self.bs - 1)) // self.bs
        used = int(per.sum())
        if used > self.blocks_total:
            keep = max(1, int(np.searchsorted(np.cumsum(per), self.blocks_total, side="right")))
            self._preempt_tail(keep)
            used = int(per[:keep].sum())
        return used

    def _admit(self, q: np.ndarray, used: int, left: int, whole: bool, cap: int | None = None) -> np.ndarray:
        """Admit waiting requests (FCFS) while seats, token budget and KV blocks allow, and at
        most `cap` of them (the step's remaining prefill slots; None = no limit)."""
        if not self.waiting:  # the common case under load: nothing to admit
            self.max_blocks_used = max(self.max_blocks_used, used)
            return q
        st, new, chunks = self.st, [], []
        while (self.waiting and self.ids.shape[0] + len(new) < self.max_seqs and left > 0
               and (cap is None or len(new) < cap)):
            r = self.waiting[0]
            p = int(st.prefill_target[r])
            chunk = p if whole else min(p, left)
            blocks = -(-chunk // self.bs)
            if used + blocks > self.blocks_total or (whole and p > left and new):
                break
            self.waiting.popleft()
            new.append(r)
            chunks.append(chunk)
            used += blocks
            left -= chunk
        self.max_blocks_used = max(self.max_blocks_used, used)
        if not new:
            return q
        self._add(new)
        return np.concatenate([q, np.asarray(chunks, np.int64)])

    def _plan(self) -> tuple[np.ndarray, np.ndarray]:
        """This step's query tokens per running row (0 = sits out) and which rows decode."""
        S = self.S
        comp, tgt = S[:, COMP], S[:, TGT]
        is_dec = comp >= tgt
        n, n_dec = is_dec.shape[0], int(np.count_nonzero(is_dec))
        if not self.chunked:
            # vLLM v0 without chunked prefill: whole new prompts in a prefill-only step when
            # any fit, otherwise a decode step of the running batch.
            used = self._fit(comp + (self.qdec + self.lookahead))  # preempts when it cannot fit
            if self.ids.shape[0] == n and self.waiting and n < self.max_seqs:
                q = self._admit(np.zeros(n, np.int64), used, self.budget, whole=True, cap=self.max_prefills)
                if q.shape[0] > n:
                    return q, np.zeros(q.shape[0], bool)
            self.max_blocks_used = max(self.max_blocks_used, used)
            n = self.ids.shape[0]
            return self._uniform_q(n), np.ones(n, bool)
        if n_dec == n:
            q = self._uniform_q(n)
            left = self.budget - n * self.qdec
            need = comp + (self.qdec + self.lookahead)
        else:
            left = self.budget - n_dec * self.qdec
            rem = np.where(is_dec, 0, tgt - comp)
            if self.max_prefills is not None:  # only the first max_prefills partial prefills run
                rem[np.cumsum(~is_dec) > self.max_prefills] = 0
            before = np.cumsum(rem) - rem  # partial prefills continue in admission order
            q = np.where(is_dec, self.qdec, np.clip(left - before, 0, rem))
            left -= int(q.sum()) - n_dec * self.qdec
            need = comp + q + np.where(is_dec, self.lookahead, 0)
        used = self._fit(need)
        if self.ids.shape[0] < n:  # preempted: no admissions this step (as vLLM)
            keep = self.ids.shape[0]
            self.max_blocks_used = max(self.max_blocks_used, used)
            return q[:keep], is_dec[:keep]
        cap = None
        if self.max_prefills is not None:
            cap = max(0, self.max_prefills - int(np.count_nonzero(~is_dec & (q > 0))))
        q = self._admit(q, used, left, whole=False, cap=cap)
        if q.shape[0] > n:
            is_dec = np.concatenate([is_dec, np.zeros(q.shape[0] - n, bool)])
        return q, is_dec

    # ---- the loop ---------------------------------------------------------------------------
    def _idle(self):
        self.wake = self.env.event()
        yield self.wake
        self.wake = None

    def run(self):
        env, strategy = self.env, self.strategy
        while True:
            if not self.waiting and self.ids.shape[0] == 0:
                yield from self._idle()
                continue
            q, is_dec = self._plan()
            n, n_dec = q.shape[0], int(np.count_nonzero(is_dec))
            comp = self.S[:, COMP]
            if n_dec == n:
                completes = None
                batch = StepBatch(q, comp, is_dec, n_dec, 0)
            else:
                active = q > 0
                if not active.any():  # cannot happen with a plan check_fits accepted; never spin
                    yield from self._idle()
                    continue
                completes = ~is_dec & active & (comp + q >= self.S[:, TGT])
                batch = StepBatch(q[active], comp[active], is_dec[active], n_dec,
                                  int(np.count_nonzero(completes)))
            alpha = self.alpha if completes is None else self.alpha[is_dec]
            outcome = strategy.sample(self.rng, alpha) if n_dec else None
            dt = strategy.step_time(batch, outcome)
            self.busy += dt
            self.steps += 1
            yield env.timeout(dt)
            self._apply(q, is_dec, outcome, completes, env.now)

    def _apply(self, q, is_dec, outcome: Outcome | None, completes, now: float) -> None:
        st, S = self.st, self.S
        done = None
        if outcome is not None:
            if completes is None:  # every row decoded: whole-column updates
                left = S[:, OUT] - S[:, GEN]
                e = np.minimum(outcome.tokens, left)
                S[:, COMP] += e  # three 1-D adds are cheaper than one broadcast over a 2-D slice
                S[:, GEN] += e
                S[:, RTOK] += e
                S[:, ROUNDS] += 1
                if outcome.accepted is not None:
                    S[:, ACC] += outcome.accepted
                st.add_itl(now - self.last)  # decoding rows have emitted before
                self.last.fill(now)
                done = e >= left
            else:
                idx = np.flatnonzero(is_dec)
                left = S[idx, OUT] - S[idx, GEN]
                e = np.minimum(outcome.tokens, left)
                S[idx, COMP:RTOK + 1] += e[:, None]
                S[idx, ROUNDS] += 1
                if outcome.accepted is not None:
                    S[idx, ACC] += outcome.accepted
                st.add_itl(now - self.last[idx])
                self.last[idx] = now
                done = np.zeros(is_dec.shape[0], bool)
                done[idx] = e >= left
        if completes is not None:
            pre = ~is_dec
            S[pre, COMP] += q[pre]
            cidx = np.flatnonzero(completes)
            if cidx.shape[0]:  # a finished (re)prefill samples one token
                S[cidx, GEN] += 1
                last = self.last[cidx]
                seen = ~np.isnan(last)
                if seen.any():
                    st.add_itl(now - last[seen])
                st.first[self.ids[cidx[~seen]]] = now
                self.last[cidx] = now
                fin = np.zeros(is_dec.shape[0], bool)
                fin[cidx] = S[cidx, GEN] >= S[cidx, OUT]
                done = fin if done is None else done | fin
        if done is not None and done.any():
            ids = self._remove(done)
            st.finish[ids] = now
            self.on_finish(ids.shape[0])


class Simulation:
    """One deployment under one workload: replicas, router, arrivals. Call run() once."""

    def __init__(self, dep: ResolvedDeployment, req: Requests, seed: int,
                 progress: Callable[[int], None] | None = None):
        self.dep, self.req = dep, req
        ss = np.random.SeedSequence([seed, 0xACCE])
        alpha_rng, *replica_rngs = (np.random.default_rng(s) for s in ss.spawn(1 + dep.replicas))
        acc = dep.acceptance
        if acc is not None and acc.alpha is not None:
            kappa = acc.heterogeneity.concentration if acc.heterogeneity else None
            alpha = request_alphas(alpha_rng, acc.alpha, kappa, req.n)
        else:
            alpha = np.full(req.n, np.nan)
        self.st = _State(req, alpha)
        self.env = simpy.Environment()
        self.replicas = [Replica(self.env, i, dep, self.st, make_strategy(dep), rng, self._finished)
                         for i, rng in enumerate(replica_rngs)]
        self._rr = 0
        self.completed = 0
        self.issued = 0
        self.progress = progress
        # Time integral of the number of requests in the system (Little's law check).
        self._in_system, self._area, self._last_t = 0, 0.0, 0.0

    def _count(self, delta: int) -> None:
        now = self.env.now
        self._area += self._in_system * (now - self._last_t)
        self._in_system += delta
        self._last_t = now

    def _route(self, r: int) -> None:
        self._count(+1)
        if self.dep.router == "least_outstanding":
            rep = min(self.replicas, key=lambda x: x.outstanding)
        else:
            rep = self.replicas[self._rr % len(self.replicas)]
            self._rr += 1
        rep.submit(r)

    def _issue(self, now: float) -> None:
        r = self.issued
        self.issued += 1
        self.st.arrival[r] = now
        self._route(r)

    def _finished(self, n: int) -> None:
        self._count(-n)
        self.completed += n
        if self.progress is not None:
            self.progress(n)
        if self.req.concurrency is not None:  # closed loop: each completion issues the next
            for _ in range(min(n, self.req.n - self.issued)):
                self._issue(self.env.now)

    def _open_loop(self):
        env, arr = self.env, self.req.arrival
        for r in range(self.req.n):
            delay = arr[r] - env.now
            if delay > 0:
                yield env.timeout(delay)
            self.issued += 1
            self._route(r)

    def run(self) -> Records:
        if self.req.concurrency is not None:
            for _ in range(min(self.req.concurrency, self.req.n)):
                self._issue(0.0)
        else:
            self.env.process(self._open_loop())
        self.env.run()
        st = self.st
        strategies = [r.strategy for r in self.replicas]
        duration = float(np.nanmax(st.finish) - np.nanmin(st.arrival)) if st.finish.size else 0.0
        breakdown = {f"target_{k}": float(v)
                     for k, v in zip(COMPONENTS, sum(x.target_busy for x in strategies))}
        if self.dep.draft is not None:
            breakdown.update({f"draft_{k}": float(v)
                              for k, v in zip(COMPONENTS, sum(x.draft_busy for x in strategies))})
        return Records(
            arrival=st.arrival, first_token=st.first, finish=st.finish, prompt=st.prompt,
            output=st.out, rounds=st.rounds, accepted=st.accepted,
            drafted=st.rounds * strategies[0].drafted_per_round,
            round_tokens=st.round_tokens, preemptions=st.preempt, replica=st.replica,
            alpha=st.alpha, itl=st.itl[:st.itl_n].copy(),
            busy_s=np.array([r.busy for r in self.replicas]), breakdown_s=breakdown,
            steps=sum(r.steps for r in self.replicas),
            max_kv_blocks_used=max(r.max_blocks_used for r in self.replicas),
            kv_blocks_total=self.replicas[0].blocks_total,
            strategy_stats=strategies[0].summary(strategies, duration),
            mean_in_system=self._area / duration if duration > 0 else 0.0)
