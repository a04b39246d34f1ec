"""Round pricing: the one place the wall time of an AR, SD or SSD round is combined from the
times of its parts (MODEL.md sections 2-4). Pure functions of seconds: the callers price the
parts with a latency backend (engine strategies, gamma auto, the `sdsl` command).

The sums keep the order in which the parts happen (draft, verify, then what follows), so every
caller gets the same floating-point result for the same parts.
"""
from __future__ import annotations


def ar_round(t_forward: float, overhead_s: float = 0.0) -> float:
    """One autoregressive step: a target forward plus the engine's per-step overhead."""
    return t_forward + overhead_s


def sd_round(t_draft: float, t_verify: float, overhead_s: float = 0.0,
             handshake_s: float = 0.0) -> float:
    """One standard SD round: the draft's gamma steps, then the target's verify of gamma+1
    positions, then the per-step overhead (when t_verify does not already hold it) and, with a
    dedicated draft, the handshake."""
    return t_draft + t_verify + overhead_s + handshake_s


def ssd_round(t_verify: float, t_prespeculation: float, handshake_s: float, backup_s: float = 0.0,
              uses_tree: bool = True) -> float:
    """One SSD round (simulator/engine/strategies/ssd.py): the draft's pre-speculation overlaps
    the verify when the tree is used; a backup (re-drafting after a miss) follows the verify;
    the handshake closes the round."""
    return (max(t_verify, t_prespeculation) if uses_tree else t_verify) + backup_s + handshake_s
