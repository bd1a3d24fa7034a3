"""Colours in a real browser: the entropy map means what its caption says ("dark = settled", "bright =
many patches still in play").

Streamlit rewrites a Plotly figure's JSON before drawing it: the strings #000001 .. #000040 are its
theme's placeholders and are replaced by theme colours, whatever the theme. A colour scale whose stops
are written as such a string (Magma and Inferno start at #000004) is drawn with a theme colour there,
which a Plotly render outside Streamlit never shows: only the browser sees it.
"""
import io

import numpy as np
import pytest
from PIL import Image
from plotly.colors import sample_colorscale

from tests.test_browser import CHROMIUM, PLOT, browser, new_page, no_exception, serve, settle, shots  # noqa: F401

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (CI installs it: apt-get install chromium)"),
]

# bbELS with k = 3 on 150 digits, 6 steps: at the last step (the one the player opens on) one pixel has
# settled (entropy 0.00 nats) and others are still undecided (up to 8.7 of the scale's 10.6 nats)
LINK = "/?set=digits&limit=150&machine=bbels&loc=k&k=3&steps=6&seed=3"

# the heatmap of the step player (its third trace): the values, the top of the scale, and where every
# cell's centre is on the page (Plotly's own axis transforms)
CELLS = """s => {
    const gd = document.querySelector(s);
    const tr = gd._fullData.find(t => t.type === 'heatmap');
    const xa = gd._fullLayout[tr.xaxis === 'x' ? 'xaxis' : 'xaxis' + tr.xaxis.slice(1)];
    const ya = gd._fullLayout[tr.yaxis === 'y' ? 'yaxis' : 'yaxis' + tr.yaxis.slice(1)];
    const box = gd.getBoundingClientRect();
    const z = tr.z.map(row => Array.from(row));
    const xs = z[0].map((_, c) => box.left + xa._offset + xa.l2p(c));
    const ys = z.map((_, r) => box.top + ya._offset + ya.l2p(r));
    return {z: z, zmin: tr.zmin, zmax: tr.zmax, xs: xs, ys: ys};
}"""


def luminance(rgb) -> float:
    r, g, b = (float(v) for v in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_the_entropy_map_is_dark_where_settled_and_bright_where_undecided(browser, shots):
    with serve() as url:
        pg = new_page(browser, url + LINK)
        pg.set_viewport_size({"width": 1440, "height": 1600})  # the whole player on screen
        pg.wait_for_selector(PLOT + " .gtitle")
        settle(pg)
        no_exception(pg)
        pg.locator(PLOT).scroll_into_view_if_needed()
        pg.mouse.move(1, 1)  # no hover label over the map
        pg.wait_for_timeout(500)
        cells = pg.evaluate(CELLS, PLOT)
        shot = Image.open(io.BytesIO(pg.screenshot())).convert("RGB")
        shot.save(shots / "entropy_map_colours.png")
        pg.close()

    z = np.array(cells["z"], dtype=np.float64)
    top = float(cells["zmax"])
    assert cells["zmin"] == 0.0 and top > 5  # the fixed scale: 0 to log of the keys (150 x 16 x 16)
    rendered = np.array([[shot.getpixel((round(x), round(y))) for x in cells["xs"]] for y in cells["ys"]], np.float64)
    expected = np.array([[tuple(c) for c in sample_colorscale("Magma", list(np.clip(row / top, 0, 1)),
                                                              colortype="tuple")] for row in z]) * 255

    settled = np.unravel_index(np.argmin(z), z.shape)
    undecided = np.unravel_index(np.argmax(z), z.shape)
    assert z[settled] < 0.05 * top and z[undecided] > 0.6 * top, (z[settled], z[undecided], top)
    dark, bright = luminance(rendered[settled]), luminance(rendered[undecided])
    # the caption: dark = settled on one patch, bright = many patches still in play
    assert dark < 30, f"the settled pixel {settled} ({z[settled]:.2f} nats) is drawn {rendered[settled]}, not dark"
    assert bright > 120, f"the undecided pixel {undecided} ({z[undecided]:.2f} nats) is drawn {rendered[undecided]}"
    # and every pixel in the colour the scale gives its entropy (Plotly's Magma, linear between stops)
    err = np.abs(rendered - expected).max(-1)
    assert np.percentile(err, 95) <= 12 and err.max() <= 40, (
        f"{int((err > 12).sum())} of {err.size} pixels off their colour, worst {err.max():.0f} at "
        f"{np.unravel_index(np.argmax(err), err.shape)}")
    # darker where more settled: luminance follows entropy (up to rounding of the drawn colours)
    order = np.argsort(z.ravel())
    lum = np.array([luminance(c) for c in rendered.reshape(-1, 3)])[order]
    assert np.mean(lum[: z.size // 4]) + 40 < np.mean(lum[-z.size // 4:])
