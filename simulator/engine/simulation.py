"""One deployment under one workload: its replicas, the router, and the arrivals (an open-loop
process, or a closed loop in which each completion issues the next request)."""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import simpy

from simulator.config.workload import Requests
from simulator.deploy.deployments import ResolvedDeployment
from simulator.engine.records import Records
from simulator.engine.lazy_table import LazyReplica
from simulator.engine.replica import Replica
from simulator.engine.request_state import RequestState
from simulator.engine.router import make_router
from simulator.engine.strategies import make_strategy
from simulator.latency.base import COMPONENTS
from simulator.physics.acceptance import request_alphas


class Simulation:
    """One deployment under one workload: replicas, router, arrivals. Call run() once."""

    def __init__(self, dep: ResolvedDeployment, req: Requests, seed: int,
                 progress: Callable[[int], None] | None = None, macro_steps: bool | None = None,
                 lazy: bool = True):
        """macro_steps: the fast engine (default: on, unless the environment sets
        SPECSIM_MACRO_STEPS=0): the lazy decode table where it applies (and `lazy`), else
        runs of predictable decode steps in one event; False runs the single-step reference
        loop (the eager table). The outputs are the same."""
        if macro_steps is None:
            macro_steps = os.environ.get("SPECSIM_MACRO_STEPS", "1") != "0"
        self.dep, self.req = dep, req
        ss = np.random.SeedSequence([seed, 0xACCE])
        alpha_rng, *replica_rngs = (np.random.default_rng(s) for s in ss.spawn(1 + dep.replicas))
        acc = dep.acceptance
        if acc is not None and acc.alpha is not None:
            kappa = acc.heterogeneity.concentration if acc.heterogeneity else None
            alpha = request_alphas(alpha_rng, acc.alpha, kappa, req.n)
        else:
            alpha = np.full(req.n, np.nan)
        self.st = RequestState(req, alpha)
        self.env = simpy.Environment()
        self.replicas = []
        for i, rng in enumerate(replica_rngs):
            s = make_strategy(dep)
            self.replicas.append(self._replica(macro_steps and lazy, s)(
                self.env, i, dep, self.st, s, rng, self._finished, macro_steps, self._next_arrival))
        self.router = make_router(dep.router)
        self.completed = 0
        self.issued = 0
        self.progress = progress
        # Time integral of the number of requests in the system (Little's law check).
        self._in_system, self._area, self._last_t = 0, 0.0, 0.0

    @staticmethod
    def _replica(lazy: bool, strategy) -> type[Replica]:
        """The lazy decode table where it applies (simulator/engine/lazy_table.py), else the
        eager one: the same outputs either way."""
        ok = lazy and strategy.cheap_steps and not strategy.per_step_outcomes
        return LazyReplica if ok else Replica

    def _next_arrival(self) -> float:
        """When the next open-loop request arrives (inf in a closed loop or when all have)."""
        if self.req.concurrency is not None or self.issued >= self.req.n:
            return float("inf")
        return float(self.req.arrival[self.issued])

    def _count(self, delta: int) -> None:
        now = self.env.now
        self._area += self._in_system * (now - self._last_t)
        self._in_system += delta
        self._last_t = now

    def _route(self, r: int) -> None:
        self._count(+1)
        self.router.pick(self.replicas).submit(r)

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
        # Python floats: numpy scalars would make the clock (and every time computed from it)
        # numpy scalars, the same values at several times the cost of each operation.
        env, arr = self.env, self.req.arrival.tolist()
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
                     for k, v in zip(COMPONENTS, np.sum([x.target_busy for x in strategies], axis=0))}
        if self.dep.draft is not None:
            breakdown.update({f"draft_{k}": float(v) for k, v in
                              zip(COMPONENTS, np.sum([x.draft_busy for x in strategies], axis=0))})
        itl, itl_count = st.itl()
        return Records(
            arrival=st.arrival, first_token=st.first, finish=st.finish, prompt=st.prompt,
            output=st.out, rounds=st.rounds, accepted=st.accepted,
            drafted=st.rounds * strategies[0].drafted_per_round,
            round_tokens=st.round_tokens, preemptions=st.preempt, replica=st.replica,
            alpha=st.alpha, itl=itl, itl_count=itl_count,
            busy_s=np.array([r.busy for r in self.replicas]), breakdown_s=breakdown,
            steps=sum(r.steps for r in self.replicas),
            events=sum(r.events for r in self.replicas),
            max_kv_blocks_used=max(r.max_blocks_used for r in self.replicas),
            kv_blocks_total=self.replicas[0].blocks_total,
            strategy_stats=strategies[0].summary(strategies, duration),
            mean_in_system=self._area / duration if duration > 0 else 0.0,
            **self._step_log())

    def _step_log(self) -> dict:
        """The replicas' step logs as flat arrays (Records' step_* fields)."""
        reps = self.replicas

        def cat(attr: str, dtype) -> np.ndarray:
            return np.concatenate([np.asarray(getattr(r, attr), dtype) for r in reps])

        return {"step_replica": np.repeat(np.arange(len(reps)), [len(r.log_dt) for r in reps]),
                "step_start": cat("log_start", float), "step_time": cat("log_dt", float),
                "step_seqs": cat("log_seqs", np.int64), "step_tokens": cat("log_tokens", np.int64),
                "step_emitted": cat("log_emitted", np.int64)}
