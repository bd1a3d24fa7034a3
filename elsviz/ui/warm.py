"""A new server's head start on its first visit (app.py starts warm_up in a thread when the server starts).

On a fresh server a first visit waits, before the lesson's first picture, for torch's import, the
default training set, its engine and the default run (docs/BENCHMARKS.md, "The first picture", has the
seconds). None of it depends on the visit, so the server begins it as soon as it starts, while the user
opens the page: the compiled kernel loads, the set and the engine go into their caches (data.builtin,
data.engine), and the run the sidebar's defaults ask for (the lesson's first) is computed by the
background worker into the run cache (runs.compute_ahead). A visit that comes meanwhile waits for the
work under way instead of doing it again (the import lock, st.cache_resource's lock per key, spec_run
waiting for a run computed ahead, with its progress); one with other settings (a link) still finds
torch imported. What fails here is left for the visit, which meets and reports it itself.
"""
from __future__ import annotations

import logging

from ..app.runs import RunSpec
from ..kernels import cpu as cpu_kernel
from . import data
from .runs import compute_ahead
from .sidebar import DEFAULTS, Settings


def _not_missing_context(record: logging.LogRecord) -> bool:
    """Streamlit's caches warn that this thread is no visit's ("missing ScriptRunContext"): it is meant not to be."""
    return record.threadName != "elsviz-warm-up" or "ScriptRunContext" not in record.getMessage()


def warm_up() -> None:
    """Load the kernel, the default set and its engine, and compute the default run ahead (the module says why)."""
    logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").addFilter(_not_missing_context)
    try:
        cpu_kernel.build_in_background()
        name = DEFAULTS["dataset"]
        key, train = data.builtin(name, *(v or None for v in data.app_subset(name)))  # as the sidebar asks for it
        spec = RunSpec(machine=DEFAULTS["machine"], k=DEFAULTS["preset"], steps=DEFAULTS["steps"], seed=DEFAULTS["seed"])
        compute_ahead(Settings(key, train, data.engine(key, spec.machine, train), spec))
    except Exception:  # noqa: BLE001 - the visit does the work instead, and shows any error
        logging.getLogger(__name__).warning("elsviz: the server's head start failed; the first visit does the work",
                                            exc_info=True)
