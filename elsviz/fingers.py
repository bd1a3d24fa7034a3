"""The finger debugger's public path (README and docs/FINGERS.md import from it): the code lives in
elsviz/analysis/fingers.py."""
from .analysis.fingers import *  # noqa: F401,F403
from .analysis.fingers import DEFAULT_STUDY, HAND, explain_extra_finger, finger_birth  # noqa: F401 (named for readers)
