"""The engine: one trainer loop, EMA, checkpoints, reporting and the run folder."""
