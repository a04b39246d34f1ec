"""Where speculative decoding stops paying, per serving-engine preset (issue 16).

Runs scenarios/batch-crossover.yaml (Llama-3.1-8B on one H100, 1B draft, gamma 4, alpha 0.7,
closed loop, concurrency 1..256) once per engine preset and prints SD's throughput ratio to AR at
each concurrency, the crossover and, with replications, its 95% interval.

    python benchmarks/crossover_presets.py [--requests N] [--replications R] [PRESET ...]
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import yaml

from simulator.config.loading import parse_scenario
from simulator.latency.engine_presets import PRESETS
from simulator.run.runner import run_scenario

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("presets", nargs="*", default=[p for p in PRESETS])
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--replications", type=int, default=None)
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "batch-crossover.yaml"))
    a = ap.parse_args()
    base = yaml.safe_load(Path(a.scenario).read_text())
    if a.requests:
        base["workload"]["requests"] = a.requests
    if a.replications:
        base["replications"] = a.replications
    print(f"{'preset':36s} {'SD/AR by concurrency':60s} crossover")
    for preset in a.presets:
        d = copy.deepcopy(base)
        for dep in d["deployments"]:
            dep["engine"] = {"preset": preset}
        t0 = time.perf_counter()
        s = run_scenario(parse_scenario(d), ROOT).summary
        cx = s["crossover"][0]
        ratios = " ".join(f"{p['concurrency']}:{p['ratio']:.2f}" for p in cx["speedup"])
        ci = cx.get("stops_paying_ci")
        extra = ""
        if ci and ci.get("lo") is not None:
            extra = f" 95% CI [{ci['lo']:g}, {'beyond' if ci['hi'] is None else format(ci['hi'], 'g')}]"
        sig = cx.get("significant")
        extra += "" if sig is None else (" significant" if sig else " not significant")
        interp = cx["stops_paying_at_interpolated"]
        where = f"{cx['stops_paying_at']}" + (f" (~{interp:.0f})" if interp else "")
        print(f"{preset:36s} {ratios:60s} {where}{extra}  [{time.perf_counter() - t0:.0f} s]",
              flush=True)

if __name__ == "__main__":
    main()
