"""A new server's head start (elsviz/ui/warm.py, started by app.py's st.App lifespan when the server starts):
the run a first visit shows first is computed before anyone opens the page, and the visit shows that run."""
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


def test_the_first_visit_shows_the_run_computed_before_it():
    from elsviz.ui import warm
    from elsviz.ui.runs import _worker, runs_cache

    runs_cache.clear()  # a new server's: nothing computed yet
    warm.warm_up()  # what the server begins when it starts, before any visit
    assert _worker().idle(timeout=600)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.switch_page("app_pages/reverse_diffusion.py")  # the default run, alone (the lesson adds six more)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = at.session_state["_last_result"]
    assert shown.background  # computed ahead, not while the visit waited
    assert shown.spec.describe() == "bbELS, schedule mnist-resnet, 20 steps, seed 0"  # the defaults a first visit has
    assert shown.train.name == "mnist" and len(shown.train) == 1000
