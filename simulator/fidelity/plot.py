"""fidelity.png: real vs simulated metrics by concurrency, with the crossovers."""
from __future__ import annotations

from pathlib import Path

from simulator.fidelity.metrics import LABELS
from simulator.fidelity.result import FidelityResult


def plot(res: FidelityResult, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = res.table
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    colors = {"ar": "tab:blue", "sd": "tab:orange"}
    for ax, m in zip(axes.flat, ("throughput", "tpot_mean", "tpot_p99", "ttft_p50")):
        label, scale, _ = LABELS[m]
        for mode in ("ar", "sd"):
            s = t[t["mode"] == mode]
            ax.plot(s["concurrency"], s[f"{m}_real"] * scale, "o-", color=colors[mode], label=f"{mode.upper()} real")
            ax.plot(s["concurrency"], s[f"{m}_sim"] * scale, "s--", color=colors[mode], alpha=0.7,
                    label=f"{mode.upper()} simulated")
        for key, style in (("real", "-"), ("predicted", "--")):
            c = res.crossover.get(key)
            if c is not None:
                ax.axvline(c, color="gray", linestyle=style, alpha=0.6,
                           label=f"crossover {key} (c={c})" if m == "throughput" else None)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    cfg = res.config
    fig.suptitle(f"specsim fidelity: real vs simulated, {cfg['target']} + {cfg['draft']} (gamma {cfg['gamma']}) "
                 f"on {res.extra.get('device', {}).get('name', cfg['device'])}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
