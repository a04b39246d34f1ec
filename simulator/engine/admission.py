"""Admission and preemption of one replica (simulator/engine/replica.py), after vLLM's
scheduler: the KV blocks a step holds, preemption of the most recently admitted sequences when
they do not fit (recomputed later), and FCFS admission of waiting requests while seats, the token
budget and free blocks allow. A mixin of Replica: it works on the replica's waiting queue,
partial prefills and decode table (through _n_dec, _drop_tail)."""
from __future__ import annotations

import numpy as np

from simulator.deploy.kv_blocks import blocks_for, decode_row_blocks
from simulator.engine.request_state import Prefill


class Admission:
    """Replica's KV fit, preemption and admission (see the module docstring)."""

    bound_admission = True  # admission on _fit's bound where it decides (False: exact, for tests)

    def _preempt_tail(self, keep: int) -> None:
        """Preempt running sequences keep.. (the most recently admitted): free their KV,
        recompute later."""
        n = self._n_dec()
        ids = [p.rid for p in self.pre[max(0, keep - n):]]
        self.pre = self.pre[:max(0, keep - n)]
        self._run = [(p, q) for p, q in self._run if p in self.pre]
        if keep < n:
            ids = [*self._drop_tail(keep), *ids]
        st = self.st
        a = np.asarray(ids, np.int64)
        st.prefill_target[a] = st.prompt[a] + st.generated[a]
        st.preempt[a] += 1
        self.waiting.extendleft(reversed(ids))

    def _fit(self, ctx: np.ndarray, ctx_sum: int, pre_per: list[int]) -> tuple[int | None, bool]:
        """KV blocks this step holds: each decoding row's cache plus its query and lookahead
        slots, and each prefill's blocks (pre_per). Preempts from the tail when they do not fit.
        Returns (blocks used, preempted); blocks None when the exact count is not needed: no
        admission pending and a bound shows neither overflow nor a new peak. With admission
        pending and no overflow possible, the bound (_admit counts exactly when it must)."""
        c, bs, n = self.qdec + self.lookahead, self.bs, ctx.shape[0]
        pre_blocks = sum(pre_per)
        bound = (ctx_sum + n * (c + bs - 1)) // bs + pre_blocks  # >= the sum of row ceilings
        self._bound_of = None
        if bound <= self.max_blocks_used and not self.waiting:
            return None, False
        if self.waiting and self.bound_admission and bound <= self.blocks_total:
            self._bound_of = (ctx, pre_blocks, bound)
            return bound, False
        per = decode_row_blocks(ctx, self.qdec, self.lookahead, bs)
        used = int(per.sum()) + pre_blocks
        if used <= self.blocks_total:
            self.max_blocks_used = max(self.max_blocks_used, used)
            return used, False
        return self._shed(per, pre_per)

    def _shed(self, per: np.ndarray, pre_per: list[int]) -> tuple[int, bool]:
        """The step's rows hold per (decode rows) and pre_per (prefills) blocks, more than the
        cache has: preempt from the tail until the rest fit."""
        cum = np.cumsum(np.concatenate([per, np.asarray(pre_per, np.int64)]))
        keep = int(np.searchsorted(cum, self.blocks_total, side="right"))
        if keep == 0:  # the fit check (deploy/fit.py) sizes requests so that this cannot happen
            raise RuntimeError(f"replica {self.idx}: one sequence needs {int(cum[0])} KV blocks "
                               f"of {self.blocks_total}: the fit check let it through")
        self._preempt_tail(keep)
        used = int(cum[keep - 1])
        self.max_blocks_used = max(self.max_blocks_used, used)
        self._preempted = True
        return used, True

    def _admit(self, used: int, left: int, whole: bool, cap: int | None) -> None:
        """Admit waiting requests (FCFS) while seats, token budget and KV blocks allow, and at
        most `cap` of them (the step's remaining prefill slots; None = no limit)."""
        st, admitted = self.st, 0
        seats = self.max_seqs - self._n_dec() - len(self.pre)
        while self.waiting and admitted < seats and left > 0 and (cap is None or admitted < cap):
            r = self.waiting[0]
            p = int(st.prefill_target[r])
            chunk = p if whole else min(p, left)
            blocks = blocks_for(p if self.whole_alloc else chunk, self.bs)
            if used + blocks > self.admit_limit or (whole and p > left and admitted):
                if self._bound_of is not None:  # decide on the exact count
                    used = self._exact(used)
                    continue
                break
            self.waiting.popleft()
            row = Prefill(r, p)
            self.pre.append(row)
            self._run.append((row, chunk))
            admitted += 1
            used += blocks
            left -= chunk
        if self._bound_of is not None and used > self.max_blocks_used:
            used = self._exact(used)  # a new peak only if the exact count says so
        self.max_blocks_used = max(self.max_blocks_used, used)

    def _exact(self, used: int) -> int:
        """`used` (the bound _fit returned plus blocks admitted since) with the exact count."""
        ctx, pre_blocks, bound = self._bound_of
        self._bound_of = None
        exact = int(decode_row_blocks(ctx, self.qdec, self.lookahead, self.bs).sum()) + pre_blocks
        return exact + used - bound
