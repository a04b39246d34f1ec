"""The SimPy engine: records (the engine -> metrics contract), replica (plan / fit / admit / apply), router,
simulation (arrivals, closed loop) and the strategies registry."""
