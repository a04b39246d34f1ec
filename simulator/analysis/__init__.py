"""From records to the numbers a user reads: metrics (TTFT, TPOT, ITL, goodput), crossover (where
speculation stops paying), the SDSL summary of a run and the `specsim sdsl` report."""
