"""Latency backends: how long one forward pass takes (see base.py for the interface)."""
