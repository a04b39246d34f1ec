"""Routers: which replica a new request goes to, by the scenario's `router` name."""
from __future__ import annotations


class RoundRobin:
    """Replicas in turn."""

    def __init__(self):
        self._next = 0

    def pick(self, replicas: list):
        rep = replicas[self._next % len(replicas)]
        self._next += 1
        return rep


class LeastOutstanding:
    """The replica with the fewest outstanding requests (the first of them on a tie)."""

    def pick(self, replicas: list):
        return min(replicas, key=lambda x: x.outstanding)


ROUTERS = {"round_robin": RoundRobin, "least_outstanding": LeastOutstanding}


def make_router(name: str):
    """A fresh router (routers keep per-run state) for the scenario's router name."""
    if name not in ROUTERS:
        raise ValueError(f"unknown router {name!r}; registered: {', '.join(ROUTERS)}")
    return ROUTERS[name]()
