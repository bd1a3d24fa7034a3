"""The `elsviz` command: commands (the parser, sample, explain, fetch, app, ...) and networks (train,
calibrate, compare)."""
from .commands import main

__all__ = ["main"]
