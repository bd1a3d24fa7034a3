"""The Streamlit side of elsviz: the shared sidebar, session state and cached engines and runs.

Only this subpackage (and app.py, pages/) may import streamlit; the core of elsviz never does.
Pages stay thin: read the settings, fetch a run, draw figures from elsviz.figures.
"""
from .runs import (branch_run, derived, derived_later, engine_use, estimate_seconds, explain, main_result,
                    previous_result, spec_run, start_live_k, status_slot)
from .draw import show
from .nav import navigation
from .sidebar import Settings, settings, sidebar

__all__ = ["navigation", "show", "Settings", "settings", "sidebar", "main_result", "spec_run", "branch_run", "explain", "previous_result", "derived",
           "derived_later", "estimate_seconds", "engine_use", "start_live_k", "status_slot"]
