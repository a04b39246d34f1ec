"""What a simulation run produced: the engine -> metrics contract (simulator/analysis/metrics.py
reads nothing else)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    itl: np.ndarray  # distinct gaps between successive emissions of a request (s) ...
    itl_count: np.ndarray  # ... and how many times each occurred
    busy_s: np.ndarray  # per replica
    breakdown_s: dict  # component -> seconds summed over steps and replicas
    steps: int
    events: int  # SimPy events the steps took (one per step, or per run with macro-steps)
    max_kv_blocks_used: int
    kv_blocks_total: int
    mean_in_system: float  # time-average requests in the system (waiting + running)
    strategy_stats: dict  # strategy-specific metrics (e.g. SSD cache hit rates), merged into the summary
    # One entry per batch step, every replica's steps in replica order (index = step):
    step_replica: np.ndarray | None = None  # which replica ran it
    step_start: np.ndarray | None = None  # when it started (s)
    step_time: np.ndarray | None = None  # its duration (s)
    step_seqs: np.ndarray | None = None  # sequences in its forward pass (decoding + prefilling)
    step_tokens: np.ndarray | None = None  # tokens it scheduled (decode query tokens + prefill chunks)
    step_emitted: np.ndarray | None = None  # output tokens it emitted, at start + time
