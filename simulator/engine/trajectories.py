"""The rounds of a replica's decoding requests, drawn when each starts decoding (Strategy.rounds),
for the eager decode table (simulator/engine/replica.py) and its runs (simulator/engine/macro.py).

One flat int64 buffer holds every decoding request's tokens per round, back to back; the decode
table keeps, per row, TS (where its round at epoch e sits, minus e) and TE (the end of its
rounds), so a step's tokens are one gather, buf[TS + epoch]. Finished and preempted rows leave
dead rounds behind: when the buffer fills, the live rounds are packed to its front (and the
table's TS and TE rewritten) or, when more than half of it is live, it doubles. A strategy's
per-round mark (Strategy.marks: SSD's cache misses) rides above MARK_SHIFT (mark() / split()).
"""
from __future__ import annotations

import numpy as np


MARK_SHIFT = 32  # a round's tokens fit far below it


def mark(tok: np.ndarray, marks: np.ndarray | None) -> np.ndarray:
    """A request's rounds as stored: tokens, and each round's mark above MARK_SHIFT."""
    return tok if marks is None else tok + (marks << MARK_SHIFT)


def split(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stored rounds back into (tokens, marks)."""
    return v & ((1 << MARK_SHIFT) - 1), v >> MARK_SHIFT


class TrajectoryBuffer:
    """Tokens per round of the rows of one decode table (see the module docstring). `slack`: the
    longest window read past a row's last round (a run's steps; macro.CAP)."""

    def __init__(self, slack: int, size: int = 1 << 14):
        self.slack = slack
        self.buf = np.zeros(size + slack, np.int64)
        self.top = 0

    def store(self, toks: list[np.ndarray], ts: np.ndarray, te: np.ndarray,
              epoch: int) -> list[int]:
        """Append the rounds of requests that start decoding at `epoch`; returns where each
        starts. ts, te: the table's TS and TE rows (rewritten in place when the buffer packs)."""
        need = sum(t.shape[0] for t in toks)
        if self.top + need + self.slack > self.buf.shape[0]:
            self._pack(ts, te, epoch, need)
        starts, top, buf = [], self.top, self.buf
        for t in toks:
            buf[top:top + t.shape[0]] = t
            starts.append(top)
            top += t.shape[0]
        self.top = top
        return starts

    def _pack(self, ts: np.ndarray, te: np.ndarray, epoch: int, need: int) -> None:
        segs = [self.buf[a + epoch:b] for a, b in zip(ts.tolist(), te.tolist())]
        live = sum(s.shape[0] for s in segs)
        size = self.buf.shape[0] - self.slack
        while 2 * (live + need) > size:
            size *= 2
        new = np.zeros(size + self.slack, np.int64)
        top = 0
        for i, s in enumerate(segs):
            new[top:top + s.shape[0]] = s
            ts[i], te[i] = top - epoch, top + s.shape[0]
            top += s.shape[0]
        self.buf, self.top = new, top

    def at(self, ts: np.ndarray, epoch: int) -> np.ndarray:
        """Each row's tokens in the round at `epoch`."""
        return self.buf[ts + epoch]

    def window(self, ts: np.ndarray, epoch: int, k: int) -> np.ndarray:
        """(k, n): each row's tokens in the k rounds from `epoch` (rounds past a row's last are
        whatever the buffer holds there: a run stops at the first finish, never reading them)."""
        return self.buf[ts[None, :] + (epoch + np.arange(k))[:, None]]
