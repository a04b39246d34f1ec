"""Scenario files: the pydantic schema (workload_schema.py, schema.py), YAML loading with errors users
can act on (loading.py), and workload generation (workload.py)."""
