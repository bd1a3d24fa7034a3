"""The exact score machines with per-pixel provenance: `Engine(train, machine).denoise(x, t, k)`.

Rooms (docs/ENGINE.md describes each; docs/ARCHITECTURE.md shows a call's way through them):
core (the Engine: checks, plan, run, posterior), plan (every path decision), paths (the ways a
step computes), softmax (streaming statistics), geometry (windows, classes), tables (key tables),
ties (identical windows), keyset (distinct keys in blocks with bounds), explain, cache, theories
(the rival theories nearest, wiener, pca, pspc, cfdm; docs/THEORIES.md).
"""
from ..machines import MACHINES
from .core import Engine, resolve_device
from .posterior import Posterior
from .geometry import windows
from .plan import Plan, Step

__all__ = ["MACHINES", "Engine", "Plan", "Posterior", "Step", "resolve_device", "windows"]
