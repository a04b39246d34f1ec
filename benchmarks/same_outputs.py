"""Check that a change preserves behaviour: every bundled scenario gives byte-identical outputs.

    python benchmarks/same_outputs.py [REF] [--jobs N] [--only NAME ...] [--no-cache]

Checks REF (default 02f0661, the last commit before the package layout) out with
`git worktree add` into a temporary folder beside the repository, runs `specsim run --out` on every
`scenarios/*.yaml` with that tree's own code (`PYTHONPATH=<tree> python -m simulator.cli`, run
from the tree's root), does the same for the working tree, and compares `summary.json`,
`requests.csv` and `summary.md` byte for byte. Prints one row per scenario and exits 1 on any difference (2 when
a run fails). The REF side's outputs are cached under $SPECSIM_SAME_CACHE (default
/tmp/specsim-same-outputs/<commit>/), keyed by the full commit id, so later checks only run the
working tree. Scenarios whose run needs torch would be skipped when torch is missing; none of
the bundled ones does (cpu-tiny is timed from committed profiles).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("summary.json", "requests.csv", "summary.md")
NEEDS_TORCH: set[str] = set()  # scenario stems whose run imports torch (none today)


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def run_one(tree: Path, scenario: str, out: Path) -> str | None:
    """Run one scenario with `tree`'s code into `out`; None on success, else the error tail."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "simulator.cli", "run", f"scenarios/{scenario}.yaml",
           "--out", str(out), "--json"]
    p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    return None if p.returncode == 0 else (p.stderr or p.stdout)[-2000:]


def compare(a: Path, b: Path) -> str:
    diffs = [f for f in FILES if not (a / f).exists() or not (b / f).exists()
             or (a / f).read_bytes() != (b / f).read_bytes()]
    return "identical" if not diffs else "DIFFERS: " + ", ".join(diffs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ref", nargs="?", default="02f0661")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="scenario stems to check (default: all)")
    ap.add_argument("--no-cache", action="store_true", help="rerun the ref side")
    args = ap.parse_args()

    commit = git("rev-parse", args.ref)
    # Plan files (a `search:` section, run by `specsim plan`) are not `specsim run` scenarios.
    names = sorted(p.stem for p in (ROOT / "scenarios").glob("*.yaml")
                   if not re.search(r"^search:", p.read_text(), re.M))
    if args.only:
        names = [n for n in names if n in args.only]
    has_torch = importlib.util.find_spec("torch") is not None
    skipped = [n for n in names if n in NEEDS_TORCH and not has_torch]
    names = [n for n in names if n not in skipped]

    cache = Path(os.environ.get("SPECSIM_SAME_CACHE", "/tmp/specsim-same-outputs")) / commit
    if args.no_cache and cache.exists():
        shutil.rmtree(cache)
    work = Path(tempfile.mkdtemp(prefix="specsim-same-"))
    # Beside the working tree, so that scenario paths such as ../../shared/... resolve alike.
    ref_tree = ROOT.parent / f".specsim-same-ref-{os.getpid()}"
    todo = [n for n in names if not all((cache / n / f).exists() for f in FILES)]
    jobs: list[tuple[Path, str, Path]] = [(ROOT, n, work / "new" / n) for n in names]
    if todo:
        git("worktree", "add", "--detach", str(ref_tree), commit)
        jobs = [(ref_tree, n, cache / n) for n in todo] + jobs
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            errors = list(pool.map(lambda j: run_one(*j), jobs))
    finally:
        if todo:
            git("worktree", "remove", "--force", str(ref_tree))
    failed = [(j, e) for j, e in zip(jobs, errors) if e is not None]
    for (tree, name, _), err in failed:
        side = "ref" if tree != ROOT else "working tree"
        print(f"{name} ({side}) failed:\n{err}", file=sys.stderr)
        shutil.rmtree(cache / name, ignore_errors=True)

    print(f"{'scenario':<28} {' + '.join(FILES)} vs {commit[:7]}")
    bad = bool(failed)
    for n in names:
        verdict = compare(cache / n, work / "new" / n)
        bad |= verdict != "identical"
        print(f"{n:<28} {verdict}")
    for n in skipped:
        print(f"{n:<28} skipped (needs torch)")
    shutil.rmtree(work, ignore_errors=True)
    return 2 if failed else (1 if bad else 0)


if __name__ == "__main__":
    sys.exit(main())
