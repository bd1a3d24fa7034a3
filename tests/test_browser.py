"""The app in a real browser: `streamlit run app.py` driven by headless Chromium through Playwright.

open -> see the animation -> press play -> provenance page -> click a pixel, see its patches ->
change k, see the image change; the lesson's first picture; one hand on the Extra fingers page; never an
exception box. Screenshots go to out/screenshots/ (or $ELSVIZ_SCREENSHOTS); with ELSVIZ_UPDATE_ASSETS=1
those README shows (ASSETS) also replace assets/screenshot_*.png.
"""
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from elsviz.app.first_picture import FIRST_PICTURE
from tests.servers import free_port, running

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LONG = 240_000  # ms: the first run on a cold machine builds key tables
ASSETS = {  # screenshot -> its name in assets/ (shown in the README)
    "reverse_diffusion_playing.png": "screenshot_reverse.png",
    "provenance.png": "screenshot_provenance.png",
    "locality.png": "screenshot_locality.png",
    "network.png": "screenshot_network.png",
    "lesson.png": "screenshot_lesson.png",
    "one_hand.png": "screenshot_fingers.png",
}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (CI installs it: apt-get install chromium)"),
]


PLOT = '[data-testid="stMain"] .js-plotly-plot'  # the step player (the sidebar may hold a schedule plot)
CLICKABLE = 'iframe[title="elsviz.ui.clickable.clickable"]'  # a picture one clicks on (elsviz.ui.clickable)


@contextlib.contextmanager
def serve():
    """`streamlit run app.py` on a free port of 127.0.0.1; yields its URL once it answers, stops it after.
    Its output goes to a log in a temporary folder (shown if it does not start)."""
    port = free_port()
    tmp_dir = Path(tempfile.mkdtemp(prefix="elsviz-server-"))
    env = dict(os.environ, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    with running([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
                  str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
                 cwd=ROOT, port=port, log=tmp_dir / f"server-{port}.log", env=env):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()


def new_page(browser, url):
    pg = browser.new_page(viewport={"width": 1440, "height": 1200})
    pg.set_default_timeout(LONG)
    pg.goto(url)
    return pg


@pytest.fixture(scope="module")
def shots():
    folder = Path(os.environ.get("ELSVIZ_SCREENSHOTS", ROOT / "out" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def settle(pg):
    """Wait until the script has finished running (no 'Running...' status, no progress bar)."""
    pg.wait_for_timeout(300)
    pg.wait_for_function("""() => !document.querySelector('[data-testid="stStatusWidget"]')
                                  && !document.querySelector('[data-testid="stProgress"]')""", timeout=LONG)
    pg.wait_for_timeout(300)


def no_exception(pg):
    assert pg.locator('[data-testid="stException"]').count() == 0, pg.locator('[data-testid="stException"]').first.inner_text()


def plot_title(pg) -> str:
    return pg.evaluate("s => document.querySelector(s).textContent", PLOT + " .gtitle")


def test_a_deep_link_on_a_fresh_server_opens_its_page_with_the_sidebar(browser):
    with serve() as url:  # a fresh server: no session has declared the navigation yet
        pg = new_page(browser, f"{url}/provenance")
        pg.wait_for_selector(f'{CLICKABLE}, [data-testid="stException"]')
        settle(pg)
        no_exception(pg)
        assert pg.get_by_role("heading", name="Patch provenance").count() == 1
        assert pg.locator('[data-testid="stSidebar"]').get_by_text("Training set").count() == 1
        pg.close()


def test_open_watch_click_and_change_k(browser, shots):
    with serve() as url:
        pg = new_page(browser, f"{url}/reverse_diffusion")  # a first visit opens on the Lesson
        try:
            watch_click_and_change_k(pg, shots)
        except BaseException:
            pg.screenshot(path=shots / "failure.png")  # what the browser showed when it went wrong
            raise


def watch_click_and_change_k(pg, shots):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    start = time.time()
    lap = lambda what: print(f"{time.time() - start:6.1f} s  {what}")
    # open: the looping run and the step-by-step player appear
    pg.wait_for_selector(PLOT + " .gtitle")
    settle(pg)
    no_exception(pg)
    # the output first, as a large still picture, and the looping run beside it
    srcs = [img.get_attribute("src") for img in pg.locator('[data-testid="stImage"] img').all()]
    assert ".png" in srcs[0] and any(".gif" in s for s in srcs), srcs
    n_frames = pg.evaluate("s => document.querySelector(s)._transitionData._frames.length", PLOT)
    assert n_frames == 19
    first_title = plot_title(pg)
    assert first_title.startswith("step 1 ")  # the result first: the player opens on the output
    lap("opened")
    pg.screenshot(path=shots / "reverse_diffusion.png", full_page=False)

    # press play: the player moves through the steps in the browser
    pg.locator(PLOT + " .updatemenu-button", has_text="Play").click()
    pg.wait_for_function("a => document.querySelector(a[0]).textContent !== a[1]", arg=[PLOT + " .gtitle", first_title],
                         timeout=10_000)
    pg.wait_for_timeout(1500)
    assert plot_title(pg) != first_title
    pg.locator(PLOT + " .updatemenu-button", has_text="Pause").click()
    lap("played")
    pg.screenshot(path=shots / "reverse_diffusion_playing.png", full_page=False)

    # the provenance page: click a pixel of the overlay and see its top keys
    pg.get_by_role("link", name="Patch provenance").click()
    frame = pg.frame_locator(CLICKABLE)
    img = frame.locator("img#image")
    img.wait_for()
    settle(pg)
    no_exception(pg)
    box = img.bounding_box()
    assert box["width"] >= 256  # drawn large
    cell = box["width"] / 16
    img.click(position={"x": 5 * cell + cell / 2, "y": 8 * cell + cell / 2})
    pg.get_by_text("Pixel (8, 5)").first.wait_for()
    settle(pg)
    no_exception(pg)
    captions = pg.locator('[data-testid="stImageCaption"]', has_text="weight")
    assert captions.count() >= 1
    lap("clicked a pixel")
    pg.screenshot(path=shots / "provenance.png", full_page=False)

    # the app opens on the paper's schedule; switch the sidebar to one k (k = 5)
    schedule_src = img.get_attribute("src")
    pg.locator('[data-testid="stSidebar"]').get_by_text("one k", exact=True).click()
    pg.wait_for_function("() => document.body.innerText.includes('k = 5')", timeout=LONG)
    settle(pg)
    no_exception(pg)
    assert img.get_attribute("src") != schedule_src

    # change k in the sidebar: the picture changes
    before = img.get_attribute("src")
    slider = pg.locator('[data-testid="stSlider"]', has_text="k (window size)").locator('input[type="range"]')
    assert slider.input_value() == "5"
    for _ in range(3):  # a key press during a rerun can be lost: press until the slider says 7
        slider.focus()
        pg.keyboard.press("ArrowRight")
        try:
            pg.wait_for_function("e => e.value === '7'", arg=slider.element_handle(), timeout=5_000)
            break
        except PlaywrightTimeout:
            continue
    pg.wait_for_function("() => document.body.innerText.includes('k = 7')", timeout=LONG)
    settle(pg)
    no_exception(pg)
    assert slider.input_value() == "7"
    assert img.get_attribute("src") != before
    lap("changed k")
    pg.screenshot(path=shots / "provenance_k7.png", full_page=False)

    # the locality explorer, with the previous result beside the new one
    pg.get_by_role("link", name="Locality explorer").click()
    pg.get_by_text("Now and before").wait_for()
    settle(pg)
    no_exception(pg)
    lap("locality explorer")
    pg.screenshot(path=shots / "locality.png", full_page=False)

    # the network page: no bundled network was trained on the sidebar's MNIST at 16x16 (mnist-resnet's 5,000
    # digits at 28x28 take minutes a seed on a CPU), so it opens on the digits ResNet and says whose set it runs on
    pg.get_by_role("link", name="Network vs machine").click()
    pg.get_by_text("The locality schedule").wait_for()
    settle(pg)
    no_exception(pg)
    assert pg.get_by_text("The machines here run on the network's own training set, digits at 16x16").count() == 1
    pg.get_by_text("on digits 16x16").first.wait_for()
    seeds = pg.locator('[data-testid="stSlider"]', has_text="Seeds").locator('input[type="range"]')
    for _ in range(5):  # 4 -> 2 seeds; a key press during a rerun can be lost
        if seeds.input_value() == "2":
            break
        seeds.focus()
        pg.keyboard.press("ArrowLeft")
        pg.wait_for_timeout(500)
        settle(pg)
    assert seeds.input_value() == "2"
    run = pg.get_by_role("button", name="Run the machines on 2 seeds", exact=False)
    if run.count():
        run.click()
    pg.get_by_text("Seed by seed: bbELS against IS").wait_for()
    settle(pg)
    no_exception(pg)
    assert pg.get_by_text("seeds where bbELS beats IS").count() == 1
    lap("network vs machine")
    pg.get_by_text("Same noise, network and machines").evaluate("e => e.scrollIntoView()")
    pg.mouse.move(5, 5)  # no hover toolbar over the pictures
    pg.screenshot(path=shots / "network.png", full_page=False)
    keep(shots, "reverse_diffusion_playing.png", "provenance.png", "locality.png", "network.png")


def keep(shots, *names):
    """With ELSVIZ_UPDATE_ASSETS=1: these screenshots replace their assets (README shows them)."""
    if os.environ.get("ELSVIZ_UPDATE_ASSETS") == "1":
        for shot in names:
            shutil.copyfile(shots / shot, ROOT / "assets" / ASSETS[shot])


def test_a_shared_link_on_a_fresh_server_shows_the_same_picture(browser):
    """A link copied from one server opens the same view on another, started afresh: same settings, same output."""
    link = "/?set=digits&limit=150&machine=els&loc=k&k=7&steps=6&seed=3"
    seen = []
    for _ in range(2):
        with serve() as url:
            pg = new_page(browser, url + link)
            pg.wait_for_selector(PLOT + " .gtitle")
            settle(pg)
            no_exception(pg)
            assert pg.get_by_text("ELS, k=7, 6 steps, seed 3").count() >= 1
            assert plot_title(pg).startswith("step 1 ") and "k = 7" in plot_title(pg)
            assert "k=7" in pg.locator('[data-testid="stSidebar"] [data-testid="stCode"]').text_content()  # Copy link
            seen.append(pg.locator('[data-testid="stImage"] img').first.get_attribute("src").rsplit("/", 1)[-1])
            pg.close()
    assert seen[0] == seen[1]  # media files are named by their content: the same output picture


def test_extra_fingers_runs_a_tiny_study_and_opens_a_hand(browser, shots):
    """The Extra fingers page on 30 hands: a two-seed study, the gallery, one hand opened; no exception box."""
    with serve() as url:
        pg = new_page(browser, f"{url}/extra_fingers?set=hands&limit=30")
        try:
            pg.get_by_text("How often: finger counts against the window size").wait_for()
            settle(pg)
            no_exception(pg)
            for label, value in (("Seeds", "2"), ("Window sizes k (or schedules)", "5 13")):
                box = pg.locator(f'input[aria-label="{label}"]')
                box.fill(value)
                box.press("Enter")
                settle(pg)
            run = pg.get_by_role("button", name="Run the study: 2 seeds x 2 window sizes", exact=False)
            assert "about" in run.inner_text()  # the estimate, before it starts
            run.click()
            pg.get_by_text("Which seeds: the gallery").wait_for()
            pg.get_by_role("heading", name="One hand: seed", exact=False).wait_for()
            settle(pg)
            no_exception(pg)
            gallery = pg.frame_locator(CLICKABLE).first
            assert gallery.locator("img#image").bounding_box()["width"] >= 200  # two hands, large enough to click
            assert pg.locator('[data-testid="stAlertContentInfo"]').last.inner_text().strip()  # the sentence
            pg.get_by_text("Which seeds: the gallery").evaluate("e => e.scrollIntoView()")
            pg.mouse.move(5, 5)
            pg.screenshot(path=shots / "extra_fingers.png", full_page=False)
        except BaseException:
            pg.screenshot(path=shots / "failure_fingers.png")
            raise


def test_the_lesson_opens_on_its_first_picture(browser, shots):
    """A first visit on a fresh server: the lesson's first picture (the output of its first run, section 1)
    is drawn; the sidebar's "Copy link", drawn after it, comes too, and every section's picture; the sidebar's
    schedule is drawn without Plotly; no exception box."""
    with serve() as url:
        pg = new_page(browser, url)
        pg.wait_for_function(FIRST_PICTURE, polling=100)
        first = pg.locator('[data-testid="stMain"] [data-testid="stImage"] img').first
        assert first.evaluate("i => i.naturalWidth") >= 256  # drawn large, for a projector
        assert pg.get_by_role("heading", name="1. Noise, then the reverse process").count() == 1
        settle(pg)
        no_exception(pg)
        assert pg.locator('[data-testid="stMain"] [data-testid="stImage"] img').count() >= 7  # a picture a section
        assert pg.locator('[data-testid="stSidebar"] svg[role="img"] circle').count() == 19  # the schedule: steps 19 .. 1
        assert pg.locator(".js-plotly-plot").count() == 0
        assert "page=lesson" in pg.locator('[data-testid="stSidebar"] [data-testid="stCode"]').text_content()
        pg.get_by_role("heading", name="Lesson: how a diffusion model makes something new").evaluate(
            "e => e.scrollIntoView()")
        pg.mouse.move(5, 5)
        pg.screenshot(path=shots / "lesson.png", full_page=False)
        keep(shots, "lesson.png")
        pg.close()


def test_extra_fingers_explains_one_hand(browser, shots):
    """README's hand: 200 hands, seed 11 at k = 17 (10 steps), opened from a link without the study; the
    branch test names the extra finger in the page's sentence."""
    with serve() as url:
        pg = new_page(browser, f"{url}/extra_fingers?set=hands&limit=200&study_steps=10&hand=17:11&fix=25")
        try:
            heading = pg.get_by_role("heading", name="One hand: seed 11, k = 17", exact=False)
            heading.wait_for()
            settle(pg)
            no_exception(pg)
            pg.get_by_role("button", name="Run the branch test", exact=False).click()
            pg.wait_for_function("""() => [...document.querySelectorAll('[data-testid="stAlertContentInfo"]')]
                                          .some(e => e.innerText.includes('k = 25'))""", timeout=LONG)
            settle(pg)
            no_exception(pg)
            sentence = pg.locator('[data-testid="stAlertContentInfo"]').first.inner_text()
            assert "of 6" in sentence and "k = 25" in sentence, sentence  # six fingers, and which one the branch drops
            heading.evaluate("e => e.scrollIntoView()")
            pg.mouse.move(5, 5)
            pg.screenshot(path=shots / "one_hand.png", full_page=False)
            keep(shots, "one_hand.png")
        except BaseException:
            pg.screenshot(path=shots / "failure_one_hand.png")
            raise
