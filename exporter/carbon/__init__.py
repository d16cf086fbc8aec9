"""Carbon accounting inputs: grid carbon-intensity sources (intensity.py).

Standalone: nothing here imports the engine, daemon or config, so the tick can hold a source and read it
without this package knowing how it is configured.
"""
