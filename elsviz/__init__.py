"""elsviz: watch and question the Equivariant Local Score machine (Kamb & Ganguli, ICML 2025).

    from elsviz import ImageSet, Engine, sample, branch, ElsvizError, load_dataset
"""
from .errors import ElsvizError
from .imageset import ImageSet

__all__ = ["ElsvizError", "ImageSet"]

try:  # the engine and the datasets land in their own modules
    from .engine import Engine, Posterior  # noqa: F401
    from .sampling import Frame, Trajectory, branch, sample  # noqa: F401

    __all__ += ["Engine", "Posterior", "sample", "branch", "Trajectory", "Frame"]
except ImportError:  # pragma: no cover - during bootstrap only
    pass
try:
    from .datasets import load_dataset  # noqa: F401

    __all__ += ["load_dataset"]
except ImportError:  # pragma: no cover - during bootstrap only
    pass
