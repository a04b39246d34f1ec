"""A scenario deployment resolved into what the engine runs: catalogue lookups, memory plan, latency
backends (deployments.py, memory.py), the fit check (fit.py), gamma auto (gamma.py), its summary config (describe.py)."""
