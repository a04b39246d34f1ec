"""The per-round target <-> draft exchange when the draft runs on its own GPU(s) (dedicated SD
and SSD; MODEL.md section 4: "a handshake with its own latency")."""
from __future__ import annotations

from dataclasses import dataclass

# Default handshake (MODEL.md section 4: "a handshake with its own latency"): two messages per
# round (draft -> target: gamma token ids + their logits; target -> draft: k and the bonus token),
# each paying a fixed link latency (NCCL point-to-point small-message latency over NVLink/PCIe is
# ~10 us), plus the bytes over the one-way interconnect bandwidth at the efficiency the roofline
# uses for collectives. Override per deployment with `handshake_s`.
LINK_LATENCY_S = 10e-6
LINK_EFFICIENCY = 0.70
LOGIT_BYTES = 2  # bf16 logits
TOKEN_BYTES = 4  # int32 token ids


@dataclass(frozen=True)
class Handshake:
    """Per-round target <-> draft exchange: fixed_s + n_seqs * bytes_per_seq / bytes_per_s."""

    fixed_s: float
    bytes_per_seq: float = 0.0
    bytes_per_s: float = float("inf")

    def time(self, n_seqs: int) -> float:
        return self.fixed_s + n_seqs * self.bytes_per_seq / self.bytes_per_s

    @classmethod
    def from_link(cls, link_gbps: float, gamma: int, vocab: int) -> "Handshake":
        """Default: two messages of LINK_LATENCY_S each, and per sequence gamma token ids with
        their full-vocabulary bf16 logits (draft -> target) plus k and the bonus token back,
        over LINK_EFFICIENCY of the one-way bandwidth (link_gbps is the datasheet bidirectional
        GB/s)."""
        per_seq = gamma * (TOKEN_BYTES + vocab * LOGIT_BYTES) + 2 * TOKEN_BYTES
        return cls(2 * LINK_LATENCY_S, per_seq, link_gbps * 1e9 / 2 * LINK_EFFICIENCY)
