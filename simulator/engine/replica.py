"""One replica of the SimPy engine: a process looping over batch steps (plan, fit, admit, apply).
The arrivals are simulator/engine/simulation.py's, the router simulator/engine/router.py's.

Continuous batching as vLLM does it (v1 scheduler with chunked prefill): each step first gives
running decodes their tokens (1 for AR, gamma+1 verify positions for SD), then continues
partial prefills, then admits waiting requests while max_num_seqs, the token budget and free KV
blocks allow (simulator/engine/admission.py). When the KV cache cannot hold the step, the most
recently admitted requests are preempted and later recomputed. Without chunked prefill, a step
runs either new prompts whole (prefill first, as vLLM v0) or decodes.

The engine only schedules: step times come from the latency backends and accepted counts from
physics/acceptance.py, both through the deployment's Strategy; a request's rounds are drawn when
it starts decoding (Strategy.rounds, with SSD's hits as marks; SSD with a fast backup or
per-sequence re-drafts draws per step). This class is the eager decode
table, the reference: decoding sequences sit in numpy columns (a few whole-column operations per
step), their drawn rounds in a trajectory buffer (simulator/engine/trajectories.py), partial
prefills in a list; progress goes back to per-request arrays when a request finishes or is
preempted. A step reaches the strategy as the context column and its sum plus the prefill chunks.
One SimPy event per batch step (plus one per open-loop arrival), never per token. The fast
engine (the default) uses the lazy table (simulator/engine/lazy_table.py: O(1) work a step) where
steps are priced from sums, else this table with runs of predictable decode steps in one event
(simulator/engine/macro.py); macro_steps=False keeps single steps, for tests and benchmarks.
"""
from __future__ import annotations

from array import array
from collections import deque
from typing import Callable

import numpy as np
import simpy

from simulator.deploy.deployments import ResolvedDeployment
from simulator.deploy.kv_blocks import admission_limit, blocks_for, total_blocks
from simulator.engine import macro, trajectories
from simulator.engine.admission import Admission
from simulator.engine.request_state import ACC, CTX, REM, TE, TS, Prefill, RequestState
from simulator.engine.strategies import Outcome, StepBatch, Strategy
from simulator.engine.trajectories import TrajectoryBuffer


_EMPTY = np.zeros(0, np.int64)
_add = np.add.reduce  # a column's sum without ndarray.sum's Python-level wrapper


class Replica(Admission):
    """One model instance (tp GPUs): a SimPy process that runs batch steps while it has work.

    Running sequences are the decode table (numpy columns, see ID..TE) followed by the partial
    prefills (a short list); both in admission order, which is also the preemption order.
    """

    uniform_fast = True  # _apply_uniform on (False: the general apply, for tests)

    def __init__(self, env: simpy.Environment, idx: int, dep: ResolvedDeployment, st: RequestState,
                 strategy: Strategy, rng: np.random.Generator, on_finish: Callable[[int], None],
                 macro_steps: bool = True, horizon: Callable[[], float] | None = None):
        """macro_steps: advance runs of predictable decode steps in one event (False: the
        single-step reference loop). horizon: the time of the next open-loop arrival."""
        self.env, self.idx, self.dep, self.st, self.rng = env, idx, dep, st, rng
        self.on_finish = on_finish
        self.macro = macro_steps and strategy.macro_safe
        self.horizon = horizon or (lambda: float("inf"))
        self._live: macro.Run | None = None  # the run being waited for
        self.run_fails = self.run_skip = 0  # failed run plans in a row, steps not to try (macro)
        self._preempted = False  # the step just planned preempted
        self._bound_of: tuple | None = None  # (contexts, prefill blocks, bound) when _fit bounded
        self.events = 0  # SimPy events the replica's steps took (one per step or run)
        self.waiting: deque[int] = deque()
        self.D = np.zeros((8, 0), np.int64)
        self._rem_min = self._ctx_sum = None  # min of D[REM], sum of D[CTX] (None: not known)
        self.alpha = np.zeros(0)  # per decoding sequence
        # Last emission time of every decoding sequence (they emit together), or per sequence
        # in last_arr when they differ (non-chunked prefill steps leave decodes out).
        self.last_t: float | None = None
        self.last_arr: np.ndarray | None = None
        self.pre: list[Prefill] = []
        self.epoch = 0  # decode steps run (rounds of every decoding sequence)
        self.wake: simpy.Event | None = None
        self.busy, self.steps = 0.0, 0
        self._last_dt: float | None = None
        # Step log, one typed-array append each per step: start, duration, sequences in the
        # pass, scheduled tokens (decode queries + prefill chunks), output tokens at its end.
        self.log_start, self.log_dt = array("d"), array("d")
        self.log_seqs, self.log_tokens, self.log_emitted = array("q"), array("q"), array("q")
        self.max_blocks_used = 0
        sch = dep.scheduler
        self.bs, self.max_seqs, self.budget = sch.block_size, sch.max_num_seqs, sch.max_num_batched_tokens
        self.chunked = sch.chunked_prefill
        self.max_prefills = sch.max_prefills_per_step  # None: no limit on prefilling rows per step
        self.blocks_total = total_blocks(dep.memory.kv_capacity_tokens, self.bs)
        # The engine's admission rules (simulator/latency/serving.py): blocks admission keeps
        # free (vLLM v0's watermark), whether a prompt's blocks are all taken when it is admitted
        # (v0) or chunk by chunk (V1), and a cap on running sequences when speculating (SGLang).
        eng = dep.engine
        self.admit_limit = admission_limit(self.blocks_total, eng.kv_watermark)
        self.whole_alloc = eng.whole_prompt_admission
        if eng.max_running_sd and strategy.lookahead:
            self.max_seqs = min(self.max_seqs, eng.max_running_sd)
        self.strategy = strategy
        self.qdec, self.lookahead = strategy.query_tokens, strategy.lookahead
        # Per-request rounds drawn at entry (None: the outcome needs no draw, or is drawn per step)
        self.traj = (None if strategy.uniform is not None or strategy.per_step_outcomes
                     else TrajectoryBuffer(macro.CAP))
        self._run: list[tuple[Prefill, int]] = []  # this step's prefill chunks
        self.process = env.process(self.run())

    @property
    def outstanding(self) -> int:
        return len(self.waiting) + self._n_dec() + len(self.pre)

    def _n_dec(self) -> int:
        """Decoding sequences (the decode table's rows)."""
        return self.D.shape[1]

    def _dec_ctx(self) -> np.ndarray:
        """The decoding rows' KV lengths, as the step batch carries them."""
        return self.D[CTX]

    def running_ids(self) -> list[int]:
        """Requests in the decode table, then partial prefills, in admission order."""
        return [*self.D[0].tolist(), *(p.rid for p in self.pre)]

    def submit(self, r: int) -> None:
        self.st.replica[r] = self.idx
        live = self._live
        if live is not None and live.interruptible and live.cut_at is None and not self.waiting:
            # The request could be admitted at the next step: end the run with the step in
            # progress (no interrupt when that is its last step anyway).
            if live.cut(self.env.now) < live.steps:
                self.process.interrupt()
        self.waiting.append(r)
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    # ---- the decode table -------------------------------------------------------------------
    def _enter(self, rows: list[Prefill], now: float) -> None:
        """Prefills that completed at `now` (and emitted a token then) start decoding."""
        st = self.st
        cols, alpha = st.columns([p.rid for p in rows], [p.comp for p in rows], self.epoch)
        self._note_entry(len(rows), now)
        if self.traj is not None:  # each request's rounds (and their marks), drawn now
            s, rng = self.strategy, self.rng
            toks = []
            for r, c in zip(cols[0].tolist(), cols[REM].tolist()):
                tok = s.rounds(rng, float(st.alpha[r]), int(c))[0]
                toks.append(trajectories.mark(tok, s.marks(rng, tok)))
            starts = self.traj.store(toks, self.D[TS], self.D[TE], self.epoch)
            for i, (a, t) in enumerate(zip(starts, toks)):
                cols[TS, i], cols[TE, i] = a - self.epoch, a + t.shape[0]
        self.D = np.concatenate([self.D, cols], axis=1)
        self.alpha = np.concatenate([self.alpha, alpha])
        self._rem_min = self._ctx_sum = None

    def _note_entry(self, k: int, now: float) -> None:
        """k rows start decoding at `now`: last emission times (per row when they differ)."""
        n = self._n_dec()
        if n == 0:
            self.last_t, self.last_arr = now, None
        elif self.last_arr is not None or self.last_t != now:
            old = self.last_arr if self.last_arr is not None else np.full(n, self.last_t)
            self.last_arr = np.concatenate([old, np.full(k, now)])

    def _leave(self, drop: np.ndarray) -> np.ndarray:
        """Write the dropped decode rows' progress back to the shared state; return their ids."""
        st, D = self.st, self.D
        ids = st.write_back(D[:, drop], self.epoch)  # one gather of the dropped columns
        keep = ~drop
        if self.last_arr is None:
            st.last_emit[ids] = self.last_t
        else:
            st.last_emit[ids] = self.last_arr[drop]
            self.last_arr = self.last_arr[keep]
        self.D, self.alpha = D[:, keep], self.alpha[keep]
        self._rem_min = self._ctx_sum = None
        return ids

    def _drop_tail(self, keep: int) -> list[int]:
        """Take decode rows keep.. out of the table (preempted); returns their ids."""
        drop = np.zeros(self.D.shape[1], bool)
        drop[keep:] = True
        return self._leave(drop).tolist()

    # ---- scheduling -------------------------------------------------------------------------
    def _ctx_total(self) -> int:
        """The decode table's context sum (kept across steps that add known tokens)."""
        if self._ctx_sum is None:
            self._ctx_sum = int(_add(self.D[CTX]))
        return self._ctx_sum

    def _plan(self) -> StepBatch | None:
        """This step's batch: which sequences run and how many tokens each puts in the pass.
        Leaves the prefill chunks in self._run; None when nothing can run."""
        self._run = run = []
        self._preempted = False
        ctx = self._dec_ctx()
        if not self.waiting and not self.pre:  # the common step: every running sequence decodes
            if self._fit(ctx, self._ctx_total(), [])[1]:
                ctx = self._dec_ctx()
            return StepBatch(self.qdec, ctx, self._ctx_total()) if ctx.shape[0] else None
        bs = self.bs
        n = ctx.shape[0]
        if not self.chunked:
            # vLLM v0 without chunked prefill: whole new prompts in a prefill-only step when
            # any fit, otherwise a decode step of the running batch (every running row decodes).
            used, preempted = self._fit(ctx, self._ctx_total(), [])
            if not preempted and self.waiting:  # (no seat left: _admit admits none)
                self._admit(used, self.budget, whole=True, cap=self.max_prefills)
                if run:
                    return StepBatch(self.qdec, _EMPTY, 0, [q for _, q in run], [0] * len(run),
                                     len(run))
            ctx = self._dec_ctx()
            return StepBatch(self.qdec, ctx, self._ctx_total()) if ctx.shape[0] else None
        left = self.budget - n * self.qdec
        pre_per = []
        for i, p in enumerate(self.pre):  # partial prefills continue in admission order
            q = 0
            if left > 0 and (self.max_prefills is None or i < self.max_prefills):
                q = min(p.tgt - p.comp, left)
                left -= q
                run.append((p, q))
            pre_per.append(blocks_for(p.tgt if self.whole_alloc else p.comp + q, bs))
        ctx_sum = self._ctx_total()
        used, preempted = self._fit(ctx, ctx_sum, pre_per)
        if preempted:  # no admissions this step (as vLLM)
            ctx = self._dec_ctx()
            ctx_sum = self._ctx_total()
        elif used is not None:
            cap = None if self.max_prefills is None else max(0, self.max_prefills - len(run))
            self._admit(used, left, whole=False, cap=cap)
        run = self._run
        if not run and ctx.shape[0] == 0:
            return None
        pre_q = [q for _, q in run]
        pre_ctx = [p.comp for p, _ in run]
        done = sum(1 for p, q in run if p.comp + q >= p.tgt)
        return StepBatch(self.qdec, ctx, ctx_sum, pre_q, pre_ctx, done)

    # ---- the loop ---------------------------------------------------------------------------
    def _idle(self):
        self.wake = self.env.event()
        yield self.wake
        self.wake = None

    def run(self):
        env, strategy = self.env, self.strategy
        log_start, log_dt, log_seqs, log_tokens, log_emitted = (  # bound once: a step's appends
            a.append for a in (self.log_start, self.log_dt, self.log_seqs, self.log_tokens,
                               self.log_emitted))
        while True:
            if not self.waiting and not self.pre and self._n_dec() == 0:
                yield from self._idle()
                continue
            b = self._plan()
            if b is None:  # cannot happen with a plan the memory check accepted; never spin
                yield from self._idle()
                continue
            if self.macro and b.n_dec and not self._run and not self.pre and not self._preempted:
                if self.run_skip:  # (macro.try_run's back-off, without the call)
                    self.run_skip -= 1
                else:
                    run = macro.try_run(self, env.now)
                    if run is not None:
                        yield from macro.wait_run(self, run)
                        continue
            outcome = self._outcome() if b.n_dec else None
            dt = self._last_dt = strategy.step_time(b, outcome)
            self.busy += dt
            self.steps += 1
            self.events += 1
            log_start(env.now)
            log_dt(dt)
            log_seqs(b.n_dec + len(b.pre_q))
            log_tokens(b.n_dec * b.q_dec + sum(b.pre_q))
            yield env.timeout(dt)
            log_emitted(self._apply(b.n_dec, outcome, env.now))

    def _plan_run(self, now: float, horizon: float, last_dt: float | None) -> macro.Run | None:
        return macro.plan_run(self, now, horizon, last_dt)

    def _apply_run(self, run: macro.Run) -> None:
        macro.apply_run(self, run)

    def _outcome(self) -> Outcome | None:
        """What this step's decoding rows get: the same for all, their rounds' draws, or a
        draw per step (SSD with a fast backup or per-sequence re-drafts)."""
        s = self.strategy
        if s.uniform is not None:
            return s.uniform
        if s.per_step_outcomes:
            return s.sample(self.rng, self.alpha)
        tok = self.traj.at(self.D[TS], self.epoch)
        if s.marked_rounds:
            return s.outcome_at(*trajectories.split(tok))
        return Outcome(tok, tok - 1)

    def _apply_uniform(self, D: np.ndarray, tok: int, accepted: int | None, n_dec: int,
                       now: float) -> int:
        """_apply for an all-decode step in which every sequence gets tok tokens and none
        finishes: whole-row operations only, no per-sequence comparisons."""
        D[CTX] += tok
        D[REM] -= tok
        self._rem_min -= tok
        if self._ctx_sum is not None:
            self._ctx_sum += tok * n_dec
        if accepted:
            D[ACC] += accepted
        self._round_done(n_dec, now)
        return tok * n_dec

    def _round_done(self, n_dec: int, now: float) -> None:
        """Every decoding sequence got its round at `now`: one more epoch, and their gaps."""
        self.epoch += 1
        st = self.st
        if self.last_arr is None:
            st.itl_values.append(now - self.last_t)
            st.itl_counts.append(n_dec)
        else:
            st.itl_arrays.append(now - self.last_arr)
            self.last_arr = None
        self.last_t = now

    def _apply_decode(self, n_dec: int, outcome: Outcome, now: float) -> tuple:
        """A step's decoding rows get their tokens: (tokens emitted, ids that finished or None)."""
        D = self.D
        tok, rem = outcome.tokens, D[REM]
        if type(tok) is int and not self._run and self.uniform_fast:  # AR, SD alpha 1
            if self._rem_min is None:
                self._rem_min = int(rem.min())
            if tok < self._rem_min:  # and none finishes: no per-sequence comparisons
                return self._apply_uniform(D, tok, outcome.accepted, n_dec, now), None
        fin = rem <= tok
        any_fin = np.count_nonzero(fin) > 0  # (no Python-level wrapper, unlike .any())
        e = np.minimum(tok, rem) if any_fin else tok
        emitted = int(_add(e)) if isinstance(e, np.ndarray) else int(e) * n_dec
        D[CTX] += e
        rem -= e  # a view: updates D
        self._rem_min = None
        if self._ctx_sum is not None:
            self._ctx_sum += emitted
        if outcome.accepted is not None:
            D[ACC] += outcome.accepted
        self._round_done(n_dec, now)
        return emitted, (self._leave(fin) if any_fin else None)

    def _apply(self, n_dec: int, outcome: Outcome | None, now: float) -> int:
        """Apply a step's outcome at its end; returns the output tokens it emitted."""
        st, finished, emitted = self.st, None, 0
        if n_dec:
            emitted, ids = self._apply_decode(n_dec, outcome, now)
            if ids is not None:
                finished = [ids]
        if self._run:
            movers, ended = [], []
            for p, q in self._run:
                p.comp += q
                if p.comp < p.tgt:
                    continue
                r = p.rid  # a finished (re)prefill samples one token
                g = st.generated[r] = st.generated[r] + 1
                emitted += 1
                last = st.last_emit[r]
                if last != last:  # nan: the request's first token
                    st.first[r] = now
                else:
                    st.itl_values.append(now - last)
                    st.itl_counts.append(1)
                if g >= st.out[r]:
                    st.last_emit[r] = now
                    ended.append(r)
                else:
                    movers.append(p)
            if movers or ended:
                self.pre = [p for p in self.pre if p.comp < p.tgt]
            if movers:
                self._enter(movers, now)
            if ended:
                finished = [*(finished or []), np.asarray(ended, np.int64)]
        if finished is not None:
            ids = np.concatenate(finished) if len(finished) > 1 else finished[0]
            st.finish[ids] = now
            self.on_finish(ids.shape[0])
        return emitted
