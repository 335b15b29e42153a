"""tessera.estimators: cycle and resource models, synthesis, sweeps, surrogates and DSE.

- :mod:`~tessera.estimators.cycles`: exact cycle models of every engine (``engine_cycles``).
- :mod:`~tessera.estimators.synthesis`: Yosys resource counts (``synthesize``), cached.
- :mod:`~tessera.estimators.fmax`: nextpnr-ecp5 place and route, Fmax (``place_and_route_ecp5``).
- :mod:`~tessera.estimators.sweep`: resumable parallel synthesis sweep and the dataset CSV.
- :mod:`~tessera.estimators.analytic`: first-principles LUT / FF / DSP / BRAM model.
- :mod:`~tessera.estimators.surrogate`: gradient-boosted surrogate trained on the dataset.
- :mod:`~tessera.estimators.devices`, :mod:`~tessera.estimators.dse`: device budgets, Pareto DSE.
"""
