"""The SimPy engine: one process per replica looping over batch steps, an arrival process, a router.

Continuous batching as vLLM does it (v1 scheduler with chunked prefill): each step first gives
running decodes their tokens (1 for AR, gamma+1 verify positions for SD), then continues
partial prefills, then admits waiting requests while max_num_seqs, the token budget and free KV
blocks allow. When the KV cache cannot hold the step, the most recently admitted requests are
preempted and later recomputed. Without chunked prefill, a step runs either new prompts whole
(prefill first, as vLLM v0) or decodes.

The engine only schedules: step times come from the latency backends and accepted counts from
acceptance.py. Per-request state lives in numpy arrays indexed by request id; one SimPy event
per batch step (plus one per open-loop arrival), never per token.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np
import simpy

from simulator.acceptance import request_alphas, sample_accepted, sample_accepted_per_position
from simulator.deployments import ResolvedDeployment
from simulator.latency.base import COMPONENTS, decode_steps
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


class _State:
    """Per-request arrays shared by the replicas of one deployment."""

    def __init__(self, req: Requests, alpha: np.ndarray):
        n = req.n
        self.prompt, self.out = req.prompt, req.output
        self.arrival = req.arrival.copy()
        self.first = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.generated = np.zeros(n, np.int64)
        self.computed = np.zeros(n, np.int64)  # tokens whose KV is in the cache
        self.prefill_target = req.prompt.copy()  # KV length at which prefill is complete
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


_EMPTY = np.zeros(0, np.int64)


class Replica:
    """One model instance (tp GPUs): a SimPy process that runs batch steps while it has work."""

    def __init__(self, env: simpy.Environment, idx: int, dep: ResolvedDeployment, st: _State,
                 rng: np.random.Generator, on_finish: Callable[[int], None]):
        self.env, self.idx, self.dep, self.st, self.rng = env, idx, dep, st, rng
        self.on_finish = on_finish
        self.waiting: deque[int] = deque()
        self.running = _EMPTY
        self.wake: simpy.Event | None = None
        self.busy = 0.0
        self.steps = 0
        self.breakdown = np.zeros(4)
        self.draft_breakdown = np.zeros(4)
        self.max_blocks_used = 0
        sch = dep.scheduler
        self.bs, self.max_seqs, self.budget = sch.block_size, sch.max_num_seqs, sch.max_num_batched_tokens
        self.chunked = sch.chunked_prefill
        self.blocks_total = dep.memory.kv_capacity_tokens // self.bs
        self.sd = dep.strategy == "sd"
        self.gamma = dep.gamma
        self.qdec = self.gamma + 1 if self.sd else 1
        self.lookahead = self.gamma if self.sd else 0
        acc = dep.acceptance
        self.per_position = (np.asarray(acc.per_position) if acc is not None and acc.per_position
                             else None)
        self.process = env.process(self.run())

    @property
    def outstanding(self) -> int:
        return len(self.waiting) + self.running.shape[0]

    def submit(self, r: int) -> None:
        self.st.replica[r] = self.idx
        self.waiting.append(r)
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    # ---- scheduling -------------------------------------------------------------------------
    def _blocks(self, tokens: np.ndarray) -> int:
        return int(((tokens + (self.bs - 1)) // self.bs).sum())

    def _preempt(self, run: np.ndarray, need: np.ndarray, extra_blocks: int = 0):
        """Drop the most recently admitted requests until the others' KV fits (recompute later)."""
        st = self.st
        per = (need + (self.bs - 1)) // self.bs
        total = np.cumsum(per) + extra_blocks
        keep = int(np.searchsorted(total, self.blocks_total, side="right"))
        keep = max(keep, 1) if extra_blocks == 0 else keep
        for r in run[keep:][::-1]:
            st.prefill_target[r] = st.prompt[r] + st.generated[r]
            st.computed[r] = 0
            st.preempt[r] += 1
            self.waiting.appendleft(int(r))
        return keep

    def _plan(self):
        """Choose this step's batch: (request ids, query tokens, ctx, is_decode)."""
        st, run = self.st, self.running
        comp = st.computed[run]
        remaining = st.prefill_target[run] - comp
        is_dec = remaining <= 0
        if not self.chunked:
            plan = None
            if self.waiting and len(run) < self.max_seqs:
                plan = self._plan_whole_prefills(comp)
            return plan or self._plan_decode_only()
        admit_ok = True
        q = np.where(is_dec, self.qdec, 0)
        left = self.budget - int(q.sum())
        if not is_dec.all():  # continue partial prefills in admission order
            rem = np.where(is_dec, 0, remaining)
            before = np.cumsum(rem) - rem
            q = np.where(is_dec, q, np.clip(left - before, 0, rem))
            left -= int(q[~is_dec].sum())
        need = comp + q + np.where(is_dec, self.lookahead, 0)
        used = self._blocks(need)
        if used > self.blocks_total:
            keep = self._preempt(run, need)
            run, comp, q, is_dec, need = run[:keep], comp[:keep], q[:keep], is_dec[:keep], need[:keep]
            self.running = run
            used = self._blocks(need)
            admit_ok = False
        new_ids, new_q = [], []
        while admit_ok and self.waiting and left > 0 and len(run) + len(new_ids) < self.max_seqs:
            r = self.waiting[0]
            chunk = min(int(st.prefill_target[r]), left)
            blocks = -(-chunk // self.bs)
            if used + blocks > self.blocks_total:
                break
            self.waiting.popleft()
            new_ids.append(r)
            new_q.append(chunk)
            used += blocks
            left -= chunk
        if new_ids:
            ids = np.asarray(new_ids, np.int64)
            run = np.concatenate([run, ids])
            self.running = run
            comp = np.concatenate([comp, np.zeros(len(ids), np.int64)])
            q = np.concatenate([q, np.asarray(new_q, np.int64)])
            is_dec = np.concatenate([is_dec, np.zeros(len(ids), bool)])
        self.max_blocks_used = max(self.max_blocks_used, used)
        return run, q, comp, is_dec

    def _plan_whole_prefills(self, comp_running: np.ndarray):
        """vLLM v0 without chunked prefill: a prefill-only step over whole prompts."""
        st, run = self.st, self.running
        used = self._blocks(comp_running + np.where(st.prefill_target[run] <= comp_running,
                                                    self.lookahead + 1, 0))
        new_ids, new_q, left = [], [], self.budget
        while self.waiting and len(run) + len(new_ids) < self.max_seqs:
            r = self.waiting[0]
            p = int(st.prefill_target[r])
            blocks = -(-p // self.bs)
            if (p > left and new_ids) or used + blocks > self.blocks_total:
                break
            self.waiting.popleft()
            new_ids.append(r)
            new_q.append(p)
            used += blocks
            left -= p
        if not new_ids:  # nothing fits: the caller decodes the running batch instead
            return None
        ids = np.asarray(new_ids, np.int64)
        self.running = np.concatenate([run, ids])
        self.max_blocks_used = max(self.max_blocks_used, used)
        z = np.zeros(len(ids), np.int64)
        return ids, np.asarray(new_q, np.int64), z, np.zeros(len(ids), bool)

    def _plan_decode_only(self):
        st, run = self.st, self.running
        comp = st.computed[run]
        is_dec = st.prefill_target[run] <= comp
        q = np.where(is_dec, self.qdec, 0)
        need = comp + q + np.where(is_dec, self.lookahead, 0)
        if self._blocks(need) > self.blocks_total:
            keep = self._preempt(run, need)
            run, comp, q, is_dec = run[:keep], comp[:keep], q[:keep], is_dec[:keep]
            self.running = run
        sel = is_dec
        return run[sel], q[sel], comp[sel], is_dec[sel]

    # ---- timing -----------------------------------------------------------------------------
    def _step_time(self, q: np.ndarray, ctx: np.ndarray, is_dec: np.ndarray, n_dec: int,
                   completes: np.ndarray | None) -> float:
        dep = self.dep
        n_pre = 0 if completes is None else int(np.count_nonzero(completes))
        if completes is None:
            qa, ca, da = q, ctx, is_dec
        else:  # partial prefills that got no budget this step take no part
            active = q > 0
            qa, ca, da = q[active], ctx[active], is_dec[active]
        n_logits = n_dec * self.qdec + n_pre
        t = dep.target_latency.forward(qa, ca, n_logits)
        self.breakdown += t
        total = float(t.sum()) + dep.target_latency.step_overhead_s
        self.breakdown[3] += dep.target_latency.step_overhead_s
        if self.sd:
            dl = dep.draft_latency
            # The draft proposes gamma tokens for each decoding sequence (gamma forwards). New
            # prompt chunks go through the draft's first forward with the first proposals.
            if n_dec and qa.shape[0] == n_dec:
                d = decode_steps(dl, ca, self.gamma, n_dec)
            else:
                d = dl.forward(np.where(da, 1, qa), ca, n_dec + n_pre)
                if n_dec and self.gamma > 1:
                    d = d + decode_steps(dl, ca[da] + 1, self.gamma - 1, n_dec)
            self.draft_breakdown += d
            total += float(d.sum())
        return total

    # ---- the loop ---------------------------------------------------------------------------
    def run(self):
        env, st = self.env, self.st
        while True:
            if not self.waiting and self.running.shape[0] == 0:
                self.wake = env.event()
                yield self.wake
                self.wake = None
                continue
            run, q, ctx, is_dec = self._plan()
            n_dec = int(np.count_nonzero(is_dec))
            if n_dec == run.shape[0]:
                completes = None
            else:
                completes = (~is_dec) & (q > 0) & (ctx + q >= st.prefill_target[run])
                if n_dec == 0 and not (q > 0).any():
                    # Nothing schedulable; cannot happen with a valid memory plan (check_fits),
                    # but never spin: wait for the next arrival.
                    self.wake = env.event()
                    yield self.wake
                    self.wake = None
                    continue
            dt = self._step_time(q, ctx, is_dec, n_dec, completes)
            self.busy += dt
            self.steps += 1
            yield env.timeout(dt)
            self._apply(run, q, is_dec, n_dec, completes, env.now)

    def _apply(self, run, q, is_dec, n_dec, completes, now: float) -> None:
        st = self.st
        done = []
        if n_dec:
            dec = run if completes is None else run[is_dec]
            left = st.out[dec] - st.generated[dec]
            if self.sd:
                if self.per_position is not None:
                    k = sample_accepted_per_position(self.rng, self.per_position, n_dec)
                else:
                    k = sample_accepted(self.rng, st.alpha[dec], self.gamma)
                e = np.minimum(k + 1, left)
                st.accepted[dec] += k
                st.round_tokens[dec] += e
            else:
                e = 1
                st.round_tokens[dec] += 1
            st.rounds[dec] += 1
            st.computed[dec] += e
            st.generated[dec] += e
            st.add_itl(now - st.last_emit[dec])  # decoding sequences have emitted before
            st.last_emit[dec] = now
            done.append(dec[e >= left])
        if completes is not None:
            pre = ~is_dec
            st.computed[run[pre]] += q[pre]
            ids = run[completes]  # prefill (or recompute) done: the pass samples one token
            if ids.shape[0]:
                st.generated[ids] += 1
                last = st.last_emit[ids]
                seen = ~np.isnan(last)
                if seen.any():
                    st.add_itl(now - last[seen])
                st.first[ids[~seen]] = now
                st.last_emit[ids] = now
                done.append(ids[st.generated[ids] >= st.out[ids]])
        done = done[0] if len(done) == 1 else np.concatenate(done) if done else _EMPTY
        if done.shape[0]:
            st.finish[done] = now
            self.running = self.running[~np.isin(self.running, done)]
            self.on_finish(done.shape[0])


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
        self.replicas = [Replica(self.env, i, dep, self.st, rng, self._finished)
                         for i, rng in enumerate(replica_rngs)]
        self._rr = 0
        self.completed = 0
        self.issued = 0
        self.progress = progress

    def _route(self, r: int) -> None:
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
        breakdown = {f"target_{k}": float(v)
                     for k, v in zip(COMPONENTS, sum(r.breakdown for r in self.replicas))}
        if self.dep.strategy == "sd":
            breakdown.update({f"draft_{k}": float(v) for k, v in
                              zip(COMPONENTS, sum(r.draft_breakdown for r in self.replicas))})
        return Records(
            arrival=st.arrival, first_token=st.first, finish=st.finish, prompt=st.prompt,
            output=st.out, rounds=st.rounds, accepted=st.accepted, drafted=st.rounds * self.dep.gamma,
            round_tokens=st.round_tokens, preemptions=st.preempt, replica=st.replica,
            alpha=st.alpha, itl=st.itl[:st.itl_n].copy(),
            busy_s=np.array([r.busy for r in self.replicas]), breakdown_s=breakdown,
            steps=sum(r.steps for r in self.replicas),
            max_kv_blocks_used=max(r.max_blocks_used for r in self.replicas),
            kv_blocks_total=self.replicas[0].blocks_total)
