"""Per-partition engine state that outlives a process: snapshot format, stores, checkpointing.

Kept free of engine imports at package level so that the engine can use `state.slots` without
an import cycle.
"""
