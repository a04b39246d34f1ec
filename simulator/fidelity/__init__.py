"""The real-vs-simulated experiment (`specsim fidelity`), split by job: config, metrics, micro-benchmark,
latency wrapper, canary, diagnostics, experiment, markdown, plot."""
