"""A fidelity run's result, and its JSON form (fidelity.json; paths under the working directory
made relative, since results get committed)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


def _relpath(x: str) -> str:
    """An absolute path under the working directory as a relative one (results get committed)."""
    if x.startswith("/") and "\n" not in x:
        try:
            rel = Path(x).resolve().relative_to(Path.cwd().resolve())
            return str(rel)
        except ValueError:
            return x
    return x


@dataclass
class FidelityResult:
    config: dict
    table: pd.DataFrame
    errors: dict
    crossover: dict
    points: list[dict] = field(repr=False)
    extra: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        def clean(x):
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, str):
                return _relpath(x)
            if isinstance(x, dict):
                return {str(k): clean(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [clean(v) for v in x]
            if isinstance(x, (np.integer,)):
                return int(x)
            if isinstance(x, (np.floating,)):
                return clean(float(x))
            return x
        return clean({"config": self.config, "errors": self.errors, "crossover": self.crossover,
                      "table": self.table.to_dict(orient="records"), "points": self.points, **self.extra})
