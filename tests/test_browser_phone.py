"""The app on a phone (390 CSS pixels wide) in a real browser: the pages stack instead of overprinting,
nothing sticks out sideways, and every clickable picture is whole (shrunk to its column, not cut off).

Screenshots go to out/screenshots/ (or $ELSVIZ_SCREENSHOTS) as phone_*.png.
"""
import pytest

from tests.test_browser import CHROMIUM, CLICKABLE, LONG, PLOT, browser, no_exception, serve, settle, shots  # noqa: F401

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (CI installs it: apt-get install chromium)"),
]

PHONE = {"width": 390, "height": 844}  # CSS pixels of a common phone
LINK = "set=digits&limit=150&machine=bbels&loc=k&k=3&steps=6&seed=3"  # a run well under a second

# what sticks out sideways: the page, and the main column (Streamlit scrolls it, not the page)
OVERFLOW = """() => {
    const main = document.querySelector('[data-testid="stMain"]');
    return {page: document.documentElement.scrollWidth - document.documentElement.clientWidth,
            main: main.scrollWidth - main.clientWidth};
}"""

# the step player's texts and controls, as boxes on the page
PLAYER = """s => {
    const gd = document.querySelector(s);
    const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
    return {titles: Array.from(gd.querySelectorAll('.annotation-text')).map(box),
            title: box(gd.querySelector('.gtitle')),
            buttons: box(gd.querySelector('.updatemenu-container')),
            slider: box(gd.querySelector('.slider-container')),
            plot: box(gd)};
}"""

# a clickable picture inside its iframe: its drawn width, the iframe's, and where it ends
PICTURE = """img => {
    return {natural: img.naturalWidth, shown: img.getBoundingClientRect().width,
            right: img.getBoundingClientRect().right, frame: document.documentElement.clientWidth};
}"""


def overlap(a, b) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > 0.5 and min(a[3], b[3]) - max(a[1], b[1]) > 0.5


def phone_page(browser, url, **kwargs):
    pg = browser.new_page(viewport=PHONE, **kwargs)
    pg.set_default_timeout(LONG)
    pg.goto(url)
    return pg


def whole(pg, frame_index: int = 0) -> dict:
    """The clickable picture in the n-th image iframe: it must lie inside its iframe, which lies inside the page."""
    pg.locator(CLICKABLE).nth(frame_index).wait_for()
    frame = pg.frame_locator(CLICKABLE).nth(frame_index)
    frame.locator("img#image").wait_for()
    pic = frame.locator("img#image").evaluate(PICTURE)
    iframe = pg.locator(CLICKABLE).nth(frame_index).bounding_box()
    assert iframe["x"] + iframe["width"] <= PHONE["width"] + 0.5, iframe
    assert pic["right"] <= pic["frame"] + 0.5 and pic["shown"] <= pic["frame"] + 0.5, (
        f"the picture is {pic['shown']:.0f} px wide and ends at {pic['right']:.0f} px in an iframe "
        f"{pic['frame']} px wide: its right part is cut off")
    return pic


def test_reverse_diffusion_stacks_on_a_phone(browser, shots):
    with serve() as url:
        pg = phone_page(browser, f"{url}/?{LINK}")
        pg.wait_for_selector(PLOT + " .gtitle")
        settle(pg)
        no_exception(pg)
        pg.locator(PLOT).scroll_into_view_if_needed()
        pg.wait_for_timeout(500)
        pg.screenshot(path=shots / "phone_reverse_diffusion.png")
        assert pg.evaluate(OVERFLOW) == {"page": 0, "main": 0}
        player = pg.evaluate(PLAYER, PLOT)
        titles = player["titles"]
        assert len(titles) == 3  # noisy image | estimate | entropy
        for n, a in enumerate(titles):  # the subplot titles side by side, none over another or the step title
            assert a[0] >= player["plot"][0] - 0.5 and a[2] <= player["plot"][2] + 0.5, (n, a, player["plot"])
            assert not overlap(a, player["title"]), (n, a, player["title"])
            for b in titles[n + 1:]:
                assert not overlap(a, b), (a, b)
        assert not overlap(player["buttons"], player["slider"]), (player["buttons"], player["slider"])
        # pictures shrunk to the column are smoothed by the browser (nearest neighbour drops rows of a
        # caption's letters); on a screen of 2 device pixels per CSS pixel, where they are enlarged, kept sharp
        shrunk = pg.evaluate("""() => Array.from(document.querySelectorAll('[data-testid="stImage"] img'))
            .filter(i => i.getBoundingClientRect().width < i.naturalWidth - 1)
            .map(i => getComputedStyle(i).imageRendering)""")
        assert shrunk and set(shrunk) == {"auto"}, shrunk
        pg.close()
        sharp = phone_page(browser, f"{url}/?{LINK}", device_scale_factor=2)
        sharp.wait_for_selector('[data-testid="stImage"] img')
        assert sharp.evaluate("""() => getComputedStyle(document.querySelector('[data-testid="stImage"] img'))
                                 .imageRendering""") == "pixelated"
        sharp.close()


def test_the_provenance_picture_is_whole_on_a_phone_and_its_last_column_clickable(browser, shots):
    with serve() as url:
        pg = phone_page(browser, f"{url}/provenance?{LINK}")
        pg.locator(CLICKABLE).first.wait_for()
        settle(pg)
        no_exception(pg)
        pic = whole(pg)
        assert pic["shown"] < pic["natural"]  # 448 px shrunk into the phone's column
        assert pg.evaluate(OVERFLOW) == {"page": 0, "main": 0}
        img = pg.frame_locator(CLICKABLE).first.locator("img#image")
        box = img.bounding_box()
        cell = box["width"] / 16
        img.click(position={"x": box["width"] - cell / 2, "y": 3 * cell + cell / 2})  # the last column
        pg.get_by_text("Pixel (3, 15)").first.wait_for()
        settle(pg)
        no_exception(pg)
        pg.locator(CLICKABLE).first.scroll_into_view_if_needed()
        pg.screenshot(path=shots / "phone_provenance.png")
        pg.close()


def test_the_finger_gallery_is_whole_on_a_phone(browser, shots):
    """Eight hands in a row (864 px) on a 390 px phone: the gallery shrinks to the column, every hand visible."""
    with serve() as url:
        pg = phone_page(browser, f"{url}/extra_fingers?set=hands&limit=30")
        pg.get_by_text("How often: finger counts against the window size").wait_for()
        settle(pg)
        no_exception(pg)
        for label, value in (("Seeds", "8"), ("Window sizes k (or schedules)", "13")):
            box = pg.locator(f'input[aria-label="{label}"]')
            box.fill(value)
            box.press("Enter")
            settle(pg)
        pg.get_by_role("button", name="Run the study: 8 seeds x 1 window sizes", exact=False).click()
        pg.get_by_text("Which seeds: the gallery").wait_for()
        settle(pg)
        no_exception(pg)
        pg.get_by_text("Which seeds: the gallery").scroll_into_view_if_needed()
        pg.wait_for_timeout(500)
        pg.screenshot(path=shots / "phone_extra_fingers.png")
        pic = whole(pg)
        assert pic["natural"] > PHONE["width"] and pic["shown"] < pic["natural"]  # 8 columns, shrunk to fit
        assert pg.evaluate(OVERFLOW) == {"page": 0, "main": 0}
        pg.close()
