"""Pure laws, no SimPy and no latency backend: acceptance sampling, SDSL, SSD hit and fan-out laws, the
handshake, round pricing (rounds.py: the one place a round is combined from its parts) and the lookahead choice."""
