"""The "Theories side by side" page in a real browser (headless Chromium through Playwright): the grid of the
network and the nine machines, a click on a pixel naming each machine's source, the curves; on a desktop and on
a phone (390 px: the columns stack, the grid shrinks whole into its column, nothing sticks out sideways).

Screenshots go to out/screenshots/ (or $ELSVIZ_SCREENSHOTS); with ELSVIZ_UPDATE_ASSETS=1 the desktop one also
replaces assets/screenshot_theories.png.
"""
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.servers import free_port, running
from tests.test_browser import CHROMIUM, CLICKABLE, LONG, browser, no_exception, settle, shots  # noqa: F401
from tests.test_browser_phone import OVERFLOW, phone_page, whole

ROOT = Path(__file__).resolve().parents[1]
# the digits (the bundled network's set) at 10 steps: the nine machines and the network in seconds on a quiet CPU
LINK = "set=digits&steps=10&seed=0"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (CI installs it: apt-get install chromium)"),
]


@contextlib.contextmanager
def serve():
    """The app (README's `streamlit run app.py`) on a free port; its URL."""
    port = free_port()
    tmp_dir = Path(tempfile.mkdtemp(prefix="elsviz-server-"))
    env = dict(os.environ, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    with running([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                  "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
                 cwd=ROOT, port=port, log=tmp_dir / f"server-{port}.log", env=env):
        yield f"http://127.0.0.1:{port}"


def ready(pg):
    """Wait for the grid (after answering the question a long first run asks)."""
    pg.wait_for_selector(f'{CLICKABLE}, [data-testid="stException"], button:has-text("Run them")')
    settle(pg)
    run = pg.get_by_role("button", name="Run them", exact=False)
    if run.count():
        run.click()
    pg.locator(CLICKABLE).first.wait_for()
    settle(pg)
    no_exception(pg)


def test_the_grid_a_click_and_the_curves_on_a_desktop_and_a_phone(browser, shots):
    with serve() as url:
        pg = browser.new_page(viewport={"width": 1440, "height": 1000})
        pg.set_default_timeout(LONG)
        pg.goto(f"{url}/theories?{LINK}")
        try:
            ready(pg)
            assert pg.get_by_role("heading", name="Theories side by side").count() == 1
            frame = pg.frame_locator(CLICKABLE).first
            img = frame.locator("img#image")
            img.wait_for()
            box = img.bounding_box()
            natural = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
            assert box["width"] >= 500  # ten outputs, two rows of five, drawn large
            # the pixel (3, 12) of the fifth panel (bbELS): the grid's geometry, as the page computes it
            from elsviz import figures

            scale = box["width"] / natural[0]
            spot = next((x, y) for y in range(0, natural[1], 4) for x in range(0, natural[0], 4)
                        if figures.theories_grid_cell({"x": x, "y": y, "width": natural[0], "height": natural[1]}, 10,
                                                      (16, 16), target=128, captions=True) == (4, (3, 12)))
            img.click(position={"x": spot[0] * scale + 2, "y": spot[1] * scale + 2})
            pg.get_by_text("At pixel (3, 12)").first.wait_for()
            settle(pg)
            no_exception(pg)
            assert pg.get_by_text("copies nothing", exact=False).count() >= 1  # Wiener
            assert pg.locator('[data-testid="stMain"] .js-plotly-plot').count() == 1
            pg.get_by_text("Same noise, 10 outputs").evaluate("e => e.scrollIntoView()")
            pg.mouse.move(5, 5)
            pg.screenshot(path=shots / "theories.png", full_page=False)
            if os.environ.get("ELSVIZ_UPDATE_ASSETS") == "1":
                shutil.copyfile(shots / "theories.png", ROOT / "assets" / "screenshot_theories.png")
        except BaseException:
            pg.screenshot(path=shots / "failure_theories.png")
            raise
        pg.close()

        phone = phone_page(browser, f"{url}/theories?{LINK}")  # the runs are cached now
        try:
            ready(phone)
            pic = whole(phone)
            assert pic["shown"] < pic["natural"]  # shrunk whole into the phone's column
            assert phone.evaluate(OVERFLOW) == {"page": 0, "main": 0}
            grid = phone.locator(CLICKABLE).first.bounding_box()
            sources = phone.get_by_role("heading", name="What each machine copied there").bounding_box()
            assert sources["y"] >= grid["y"] + grid["height"] - 0.5  # stacked below the grid, not beside it
            phone.locator(CLICKABLE).first.scroll_into_view_if_needed()
            phone.screenshot(path=shots / "phone_theories.png")
            phone.get_by_text("Step by step: how closely").evaluate("e => e.scrollIntoView()")
            phone.screenshot(path=shots / "phone_theories_curves.png")
        except BaseException:
            phone.screenshot(path=shots / "failure_phone_theories.png")
            raise
        phone.close()
