"""What a report must tell its reader besides the figures, read from the summary dict (so
`specsim report` re-renders it): settings that run but that a real engine would not serve as
given (a draft whose vocabulary differs from the target's: `config.warnings` of each row), and
length traces cycled to give the requested count (`repeat: true`: the summary's `trace_cycles`).
The console, summary.md and summary.html print the same sentences."""
from __future__ import annotations


def warnings(summary: dict) -> list[str]:
    """Each distinct deployment warning once, in row order (a sweep repeats a deployment per point)."""
    out: list[str] = []
    for row in summary.get("deployments", []):
        for w in (row.get("config") or {}).get("warnings", []):
            if w not in out:
                out.append(w)
    return out


def times(x: float) -> str:
    """2.5, 2.07, 3: the cycle count at two decimals without trailing zeros."""
    return f"{x:.2f}".rstrip("0").rstrip(".")


def trace_notes(summary: dict) -> list[str]:
    """One sentence per cycled trace (and request count, where a sweep or replications vary it)."""
    return [f"{c['field']}: {c['requests']:,} requests from the {c['rows']:,} rows of {c['path']} "
            f"(column {c['column']}): the rows cycle {times(c['cycles'])} times (repeat: true)"
            for c in summary.get("trace_cycles", [])]
