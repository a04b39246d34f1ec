"""`python -m simulator.cli ...`: the same as the `specsim` console script."""
from simulator.cli import main

main()
