"""Carbon: grid-intensity sources (intensity.py, standalone: it imports neither the engine nor the config), the
configured source the tick reads (source.py, file.py), embodied-carbon defaults (embodied.py) and the exact
per-workload accounting of operational and embodied grams (ledger.py). docs/carbon.md explains the model.
"""
