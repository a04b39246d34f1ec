"""Run independent simulation tasks: in this process, in local worker processes, or as Ray tasks,
with a content-hashed cache of finished results.

A task is plain data (a scenario dict, a seed and the folder its relative paths resolve against),
so it pickles and its result depends on nothing but its content: the seed comes from the task,
never from the worker that runs it, and results come back in submission order. Hence the same
tasks give the same results whatever the executor and worker count.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from simulator import __version__
from simulator.errors import SpecsimError
from simulator.config.loading import parse_scenario
from simulator.run.report import summary_json
from simulator.run.runner import RunResult, run_scenario

Progress = Callable[[int], None]  # called with the number of tasks just finished


@dataclass(frozen=True)
class Task:
    scenario: dict  # a scenario file's content
    seed: int
    base: str  # folder that relative paths in the scenario resolve against

    def key(self) -> str:
        """Content hash: the task's canonical JSON and the specsim version."""
        blob = json.dumps({"task": asdict(self), "specsim": __version__}, sort_keys=True,
                          separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def simulate(task: Task) -> dict:
    """Run one task; its summary dict, as `specsim run --json` would print it (JSON round trip, so
    a cached result and a fresh one are the same data)."""
    sc = parse_scenario(task.scenario, f"<task {task.scenario.get('name')}>")
    result: RunResult = run_scenario(sc, Path(task.base), task.seed)
    return json.loads(summary_json(result))


def _in_process(tasks: list[Task], progress: Progress | None) -> list[dict]:
    out = []
    for t in tasks:
        out.append(simulate(t))
        if progress:
            progress(1)
    return out


class LocalExecutor:
    """`workers` processes (spawned, so no state leaks from the parent); 1 runs in this process."""

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._pool = None

    def __enter__(self):
        if self.workers > 1:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def map(self, tasks: list[Task], progress: Progress | None = None) -> list[dict]:
        if self._pool is None or len(tasks) <= 1:
            return _in_process(tasks, progress)
        futures = {self._pool.submit(simulate, t): i for i, t in enumerate(tasks)}
        out: list = [None] * len(tasks)
        for f in as_completed(futures):
            out[futures[f]] = f.result()
            if progress:
                progress(1)
        return out


class RayExecutor:
    """Ray tasks on the cluster at `address`, or on a local Ray started (and stopped) for the run
    with `workers` CPUs. Workers must be able to import specsim (installed, or on PYTHONPATH)."""

    def __init__(self, address: str | None = None, workers: int | None = None):
        try:
            import ray
        except ImportError:
            raise SpecsimError("--executor ray: Ray is not installed; pip install 'specsim[ray]'") from None
        self.ray, self.address, self.workers = ray, address, workers
        self._started = False

    def __enter__(self):
        ray = self.ray
        if not ray.is_initialized():
            kwargs = dict(address=self.address, log_to_driver=False)
            if self.address is None:  # local workers import specsim from this very checkout
                root = str(Path(__file__).resolve().parents[2])
                path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
                kwargs.update(num_cpus=self.workers or os.cpu_count(), include_dashboard=False,
                              runtime_env={"env_vars": {"PYTHONPATH": path}})
            try:
                ray.init(**kwargs)
            except ConnectionError as e:
                raise SpecsimError(f"--ray-address: cannot connect to Ray at {self.address}: {e}") from None
            self._started = True
        self._remote = ray.remote(num_cpus=1)(simulate)
        return self

    def __exit__(self, *exc):
        if self._started:
            self.ray.shutdown()

    def map(self, tasks: list[Task], progress: Progress | None = None) -> list[dict]:
        refs = [self._remote.remote(t) for t in tasks]
        pending = list(refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            if progress:
                progress(len(done))
        return self.ray.get(refs)


def make_executor(kind: str, workers: int | None = None, address: str | None = None):
    if kind == "local":
        if address is not None:
            raise SpecsimError("--ray-address applies to --executor ray")
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(address, workers)
    raise SpecsimError(f"--executor: expected 'local' or 'ray', got '{kind}'")


class TaskCache:
    """Finished results under `root`, one JSON file per task content hash; None disables it."""

    def __init__(self, root: Path | None):
        self.root = root
        self.hits = self.misses = 0

    def get(self, task: Task) -> dict | None:
        if self.root is None:
            return None
        p = self.root / f"{task.key()}.json"
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except ValueError:  # a torn write from an interrupted run: simulate again
            return None

    def put(self, task: Task, result: dict) -> None:
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        p = self.root / f"{task.key()}.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, sort_keys=True))
        tmp.replace(p)


def run_tasks(executor, tasks: list[Task], cache: TaskCache,
              progress: Progress | None = None) -> list[dict]:
    """Results of `tasks` in order: cached ones read back, the rest run on `executor` and stored."""
    out: list = [cache.get(t) for t in tasks]
    todo = [i for i, r in enumerate(out) if r is None]
    cache.hits += len(tasks) - len(todo)
    cache.misses += len(todo)
    if progress and len(tasks) > len(todo):
        progress(len(tasks) - len(todo))
    for i, r in zip(todo, executor.map([tasks[i] for i in todo], progress)):
        cache.put(tasks[i], r)
        out[i] = r
    return out
