"""elsviz: watch and question the Equivariant Local Score machine (Kamb & Ganguli, ICML 2025).

    from elsviz import ImageSet, Engine, sample, branch, ElsvizError, load_dataset
"""
from .analysis.compare import agreement, calibrate, compare, r2
from .datasets import load_dataset
from .engine import Engine, Posterior
from .machines import MACHINES
from .errors import ElsvizError
from .analysis.fingers import DEFAULT_STUDY, FingerBirth, FingerCount, FingerStudy, commitment_map, count_fingers, count_fingers_batch, explain_extra_finger, finger_birth, finger_study, region_sources, seam_map
from .imageset import ImageSet
from .networks import Network, load_network, train_network
from .sampling import Frame, Trajectory, branch, sample

__all__ = [
    "MACHINES", "ElsvizError", "Engine", "Frame", "ImageSet", "Posterior", "Trajectory",
    "branch", "load_dataset", "sample",
    "Network", "agreement", "calibrate", "compare", "load_network", "r2", "train_network",
    "DEFAULT_STUDY", "FingerBirth", "FingerCount", "FingerStudy", "commitment_map", "count_fingers",
    "count_fingers_batch", "explain_extra_finger", "finger_birth", "finger_study", "region_sources", "seam_map",
]
