"""A replica whose decode table is lazy: a decode step costs O(1) work, however many sequences.

Each request's rounds are drawn when it starts decoding (Strategy.rounds), so at that moment
its whole decode is known: how many tokens each of its rounds emits, when its KV cache crosses a
block boundary, and the epoch (the replica's decode-step count) of its last round. The replica
adds those per-epoch contributions into rings of epochs (the tokens it emits in each round, the
KV blocks it holds at each) and lists the request under its last epoch. A decode step reads one
ring slot: the context sum and the exact KV block count stay current without touching any row,
and the requests whose last round it was leave (their context with them). Rows are visited
only when they enter, finish, or are preempted (their not-yet-run contributions are then taken
back from the ring).

A request's counters (generated tokens, rounds, accepted drafts) are written with their values at
its finish when it enters; preemption takes back what it did not run. Per-row contexts are never
materialised, so this table serves strategies priced from the batch's size and context sum (the
fast paths: Strategy.cheap_steps) whose outcomes are drawn per request; a strategy's per-round
marks (SSD's cache misses) go into a third ring, and a step reads their count. The others keep
the eager table (simulator/engine/replica.py), the reference for this one: the same draws in
the same order give the same outputs byte for byte (tests/test_lazy_table.py).
"""
from __future__ import annotations

import math

import numpy as np

from simulator.engine import macro
from simulator.engine.replica import Replica
from simulator.engine.strategies import RunBatch, StepBatch


class _Row:
    """One decoding request: entry epoch, context at entry, its rounds' tokens (before the last
    is truncated to its output length), the tokens out before each round (and after the last,
    untruncated), the KV blocks it holds at each round, and its context when it leaves."""

    __slots__ = ("s", "c0", "run", "tok", "blk", "ctx_end", "marks")

    def __init__(self, s, c0, run, tok, blk, ctx_end, marks=None):
        self.s, self.c0, self.run, self.tok, self.blk, self.ctx_end = s, c0, run, tok, blk, ctx_end
        self.marks = marks  # its rounds' marks (Strategy.marks), or None

    def before(self, k: int) -> int:
        """Tokens it emitted before its round k."""
        return int(self.run[k])


class LazyReplica(Replica):
    """Replica with the lazy decode table (see the module docstring). Runs of decode steps
    (simulator/engine/macro.py) read the ring too: until the first finish, each step's context
    sum and exact KV count are the ring's running sums."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.traj = None
        h = 1 << (int(self.st.out.max(initial=1)) + 2).bit_length()  # > any request's rounds
        self.mask = h - 1
        # The rings: per epoch, the tokens the step emits and the exact KV blocks it holds.
        self.emit, self.held = np.zeros(h, np.int64), np.zeros(h, np.int64)
        # Per epoch, the marked rounds (SSD's cache misses) where the strategy draws marks.
        self.marked = np.zeros(h, np.int64) if self.strategy.marked_rounds else None
        self.fins: dict[int, list[int]] = {}  # epoch -> requests whose last round it is
        self.rows: dict[int, _Row] = {}  # decoding requests, in admission order
        self.n = self.ctx_sum = self.blocks = 0  # rows, their context sum, their KV blocks now
        self._zeros = np.zeros(self.max_seqs, np.int64)
        self._cq = self.qdec + self.lookahead + self.bs - 1  # decode_row_blocks' offset

    def _n_dec(self) -> int:
        return self.n

    def _dec_ctx(self) -> np.ndarray:
        # Shape only: the strategies this table serves price from the count and the sum.
        return self._zeros[:self.n]

    def _ctx_total(self) -> int:
        return self.ctx_sum

    def _outcome(self):
        # The rows' rounds are in the ring; where they carry marks, the step's count of them.
        if self.marked is None:
            return None
        return self.strategy.outcome_counted(self.n, self.marked.item(self.epoch & self.mask))

    def running_ids(self) -> list[int]:
        return [*self.rows, *(p.rid for p in self.pre)]

    def _plan(self) -> StepBatch | None:
        if self.waiting or self.pre or not self.n or self.blocks > self.blocks_total:
            return super()._plan()
        # The common step, every running sequence decoding and fitting: Replica._plan's first
        # branch without the calls.
        self._run, self._preempted = [], False
        if self.blocks > self.max_blocks_used:
            self.max_blocks_used = self.blocks
        return StepBatch(self.qdec, self._zeros[:self.n], self.ctx_sum)

    def _fit(self, ctx, ctx_sum: int, pre_per: list[int]) -> tuple[int, bool]:
        """Admission._fit with the exact count the ring keeps."""
        used = self.blocks + sum(pre_per)
        if used <= self.blocks_total:
            if used > self.max_blocks_used:
                self.max_blocks_used = used
            return used, False
        e = self.epoch
        per = np.array([w.blk[e - w.s] for w in self.rows.values()], np.int64)
        return self._shed(per, pre_per)

    def _ring_add(self, ring: np.ndarray, e: int, v: np.ndarray) -> None:
        """ring at epochs e, e+1, .. += v."""
        i, m = e & self.mask, v.shape[0]
        if i + m <= self.mask + 1:
            ring[i:i + m] += v
        else:
            j = self.mask + 1 - i
            ring[i:] += v[:j]
            ring[:m - j] += v[j:]

    def _enter(self, rows, now: float) -> None:
        st, e0, bs, cq = self.st, self.epoch, self.bs, self._cq
        self._note_entry(len(rows), now)
        for p in rows:
            r, c0 = p.rid, p.comp
            rem = int(st.out[r]) - int(st.generated[r])
            tok, before = self.strategy.rounds(self.rng, float(st.alpha[r]), rem)
            marks = None
            if self.marked is not None:
                marks = self.strategy.marks(self.rng, tok)
                self._ring_add(self.marked, e0, marks)
            f = tok.shape[0] - 1  # its last round
            total = before.item(f + 1)
            over = total - rem  # the last round stops at its output length
            blk = before[:f + 1] + (c0 + cq)
            blk //= bs  # KV blocks held at each round (decode_row_blocks)
            i = e0 & self.mask
            if i + f < self.mask:  # (_ring_add, inlined for the common case: no wrap)
                self.held[i:i + f + 1] += blk
                self.emit[i:i + f + 1] += tok
                self.emit[i + f] -= over
            else:
                self._ring_add(self.held, e0, blk)
                self._ring_add(self.emit, e0, tok)
                self.emit[(e0 + f) & self.mask] -= over
            self.fins.setdefault(e0 + f, []).append(r)
            self.rows[r] = _Row(e0, c0, before, tok, blk, c0 + rem, marks)
            self.n += 1
            self.ctx_sum += c0
            self.blocks += blk.item(0)
            st.generated[r] += rem
            st.rounds[r] += f + 1
            st.round_tokens[r] += rem
            st.accepted[r] += total - f - 1  # tok - 1 drafts accepted a round

    def _apply_decode(self, n_dec: int, outcome, now: float) -> tuple:
        e = self.epoch
        i = e & self.mask
        emitted = self.emit.item(i)
        self.emit[i] = self.held[i] = 0
        if self.marked is not None:
            self.marked[i] = 0
        self.ctx_sum += emitted
        self.blocks = self.held.item((e + 1) & self.mask)
        self._round_done(n_dec, now)
        return emitted, (self._leave_finished(e, now) if e in self.fins else None)

    def _leave_finished(self, e: int, now: float) -> np.ndarray:
        """The requests whose last round was at epoch e leave (at `now`); returns their ids."""
        ids = self.fins.pop(e)
        self.n -= len(ids)
        for r in ids:
            w = self.rows.pop(r)
            self.ctx_sum -= w.ctx_end
        a = np.asarray(ids, np.int64)
        self.st.last_emit[a] = now
        return a

    def _plan_run(self, now: float, horizon: float, last_dt: float | None) -> macro.Run | None:
        """macro.plan_run on the ring: the run ends with the step of the first finish, before
        the first step whose exact KV count would overflow, and at the next open-loop arrival."""
        interruptible = not self.waiting
        k = macro.CAP
        if interruptible and horizon < math.inf and last_dt:
            k = min(k, int((horizon - now) / last_dt) + 1)
        e = self.epoch
        k = min(k, min(self.fins) - e + 1)
        if k < macro.MIN_RUN:
            return None
        idx = (e + np.arange(k)) & self.mask
        emit, used = self.emit[idx], self.held[idx]  # used[j]: the exact blocks step j holds
        over = np.flatnonzero(used[1:] > self.blocks_total)  # (step 0 fitted when planned)
        if over.shape[0]:
            k = int(over[0]) + 1
        ctx_sums = np.empty(k, np.int64)
        ctx_sums[0] = self.ctx_sum
        np.cumsum(emit[:k - 1], out=ctx_sums[1:])
        ctx_sums[1:] += self.ctx_sum
        rb = RunBatch(self.n, self.qdec, ctx_sums, None, None)
        got = self.strategy.run_times_many(rb)
        if got is None:
            return None
        dt = np.broadcast_to(np.asarray(got[0], float), (k,))
        ends = macro.step_ends(dt, now, horizon if interruptible else math.inf)
        run = macro.Run(self.n, dt, ends, (emit, used), got[1], interruptible)
        run.pending, run.start = rb.pending, now
        return run

    def _apply_run(self, run: macro.Run) -> None:
        """Apply the run's first run.cut_at (default all) steps: the ring's slots, the KV peak
        (blocks only grow along a run), the requests whose last round was its last step."""
        J = run.cut_at or run.steps
        e = self.epoch
        emit, used = run.table
        emitted = emit[:J].tolist()
        if J > 1:
            self.max_blocks_used = max(self.max_blocks_used, int(used[J - 1]))
        idx = (e + np.arange(J)) & self.mask
        self.ctx_sum += sum(emitted)
        self.emit[idx] = self.held[idx] = 0
        self.blocks = self.held.item((e + J) & self.mask)
        now = macro.account(self, run, J, emitted)
        if e + J - 1 in self.fins:
            ids = self._leave_finished(e + J - 1, now)
            self.st.finish[ids] = now
            self.on_finish(ids.shape[0])

    def _drop_tail(self, keep: int) -> list[int]:
        """Preempt decode rows keep..: take back their ring contributions and the counters they
        did not run."""
        st, e = self.st, self.epoch
        ids = list(self.rows)[keep:]
        for r in ids:
            w = self.rows.pop(r)
            k = e - w.s  # rounds run
            f = w.tok.shape[0] - 1
            self._ring_add(self.emit, e, -w.tok[k:])
            self.emit[(w.s + f) & self.mask] += int(w.run[f + 1]) - (w.ctx_end - w.c0)
            self._ring_add(self.held, e, -w.blk[k:])
            if w.marks is not None:
                self._ring_add(self.marked, e, -w.marks[k:])
            fin = self.fins[w.s + f]
            fin.remove(r)
            if not fin:
                del self.fins[w.s + f]
            self.n -= 1
            done = w.before(k)
            self.ctx_sum -= w.c0 + done
            self.blocks -= int(w.blk[k])
            undone = w.ctx_end - w.c0 - done
            st.generated[r] -= undone
            st.round_tokens[r] -= undone
            st.rounds[r] -= f + 1 - k
            st.accepted[r] -= (int(w.run[f + 1]) - f - 1) - (done - k)
        a = np.asarray(ids, np.int64)
        if self.last_arr is None:
            st.last_emit[a] = self.last_t
        else:
            st.last_emit[a] = self.last_arr[keep:]
            self.last_arr = self.last_arr[:keep]
        return ids
