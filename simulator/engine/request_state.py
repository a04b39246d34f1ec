"""Per-request state of one simulation, shared by a deployment's replicas (index = request id):
progress, timestamps, counters and the inter-token gaps. simulator/engine/replica.py writes
a decoding request's progress here when it finishes or is preempted."""
from __future__ import annotations

from array import array

import numpy as np

from simulator.config.workload import Requests

# Rows of a replica's decode table (simulator/engine/replica.py; int64, one column per decoding
# sequence, in admission order): request id, KV length, tokens left to generate, accepted draft
# tokens, and offsets from which rounds (R0 + the replica's decode-step count) and round tokens
# (T0 - REM) follow, so that a decode step touches only CTX, REM and ACC; and where its rounds
# sit in the replica's trajectory buffer (simulator/engine/trajectories.py: TS, TE).
ID, CTX, REM, ACC, R0, T0, TS, TE = range(8)


class Prefill:
    """A sequence whose prompt (or recompute) is not yet all in its KV cache."""

    __slots__ = ("rid", "comp", "tgt")

    def __init__(self, rid: int, tgt: int):
        self.rid, self.comp, self.tgt = rid, 0, tgt


class RequestState:
    """Per-request arrays shared by the replicas of one deployment (index = request id).

    Progress of a decoding request lives in its replica's decode table while it runs; it is
    written back here when the request finishes or is preempted.
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
        # Inter-token gaps as (value, count): a decode step gives every sequence the same gap.
        self.itl_values = array("d")  # typed arrays: 8 bytes a gap, however many steps
        self.itl_counts = array("q")
        self.itl_arrays: list[np.ndarray] = []  # gaps that differ per sequence (count 1 each)

    def columns(self, rids: list[int], comps: list[int], epoch: int) -> tuple:
        """Decode-table columns (ID..TE; TS and TE zero, set by the replica) and alphas of
        requests that start decoding with comps[i] tokens cached, when the replica has run
        `epoch` decode steps."""
        if len(rids) == 1:  # the common case: scalar gathers cost a fraction of array ones
            r = rids[0]
            rem = int(self.out[r]) - int(self.generated[r])
            cols = np.array((r, comps[0], rem, int(self.accepted[r]), int(self.rounds[r]) - epoch,
                             int(self.round_tokens[r]) + rem, 0, 0), np.int64)
            return cols[:, None], self.alpha[r:r + 1]
        a = np.asarray(rids, np.int64)
        rem = self.out[a] - self.generated[a]
        zero = np.zeros(a.shape[0], np.int64)
        return (np.stack([a, np.asarray(comps, np.int64), rem, self.accepted[a],
                          self.rounds[a] - epoch, self.round_tokens[a] + rem, zero, zero]),
                self.alpha[a])

    def write_back(self, cols: np.ndarray, epoch: int) -> np.ndarray:
        """Progress of decode-table columns that leave the table (finished or preempted) when
        the replica has run `epoch` decode steps; returns their ids."""
        if cols.shape[1] == 1:  # scalar writes, as columns() reads
            r, _, rem, acc, r0, t0 = cols[:T0 + 1, 0].tolist()
            self.generated[r] = int(self.out[r]) - rem
            self.round_tokens[r], self.rounds[r], self.accepted[r] = t0 - rem, r0 + epoch, acc
            return cols[ID]
        ids, rem = cols[ID], cols[REM]
        self.generated[ids] = self.out[ids] - rem
        self.round_tokens[ids] = cols[T0] - rem
        self.rounds[ids] = cols[R0] + epoch
        self.accepted[ids] = cols[ACC]
        return ids

    def itl(self) -> tuple[np.ndarray, np.ndarray]:
        """All gaps as (values, counts)."""
        vals = np.concatenate([np.asarray(self.itl_values, float), *self.itl_arrays])
        counts = np.concatenate([np.asarray(self.itl_counts, np.int64),
                                 *(np.ones(a.shape[0], np.int64) for a in self.itl_arrays)])
        return vals, counts
