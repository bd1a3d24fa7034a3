"""The lesson page through AppTest: seven sections in order, each a live picture, and the claims its text makes.

On a subset of the digits with few steps (as tests/test_app.py), so it stays quick.
"""
import io
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.test_app import navigation_as_served  # noqa: F401 - autouse: the app as `streamlit run` serves it

ROOT = Path(__file__).resolve().parents[1]
PAGE = "pages/lesson.py"
SECTIONS = ["1. Noise, then the reverse process", "2. The ideal model memorises",
            "3. Locality alone copies from the same place", "4. Locality plus equivariance creates",
            "5. The border: bbELS", "6. The patch mosaic", "7. What k does"]


@pytest.fixture
def media(monkeypatch):
    """{file id: (file name or None, bytes)} of every file the app hands the browser (images, downloads);
    a download made when it is clicked (st.download_button with a function) as (file name, that function)."""
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    store = {}
    load, defer = MemoryMediaFileStorage.load_and_get_id, MediaFileManager.add_deferred

    def keep(self, path_or_data, mimetype, kind, filename=None):
        file_id = load(self, path_or_data, mimetype, kind, filename)
        store[file_id] = (filename, self.get_file(file_id).content)
        return file_id

    def keep_deferred(self, data_callable, mimetype, coordinates, file_name=None, **kwargs):
        file_id = defer(self, data_callable, mimetype, coordinates, file_name, **kwargs)
        store[file_id] = (file_name, data_callable)
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", keep)
    monkeypatch.setattr(MediaFileManager, "add_deferred", keep_deferred)
    return store


def downloads(at: AppTest, media: dict) -> dict[str, tuple[str, bytes]]:
    """{download button's key: (file name the user gets, bytes)} of the buttons one can click; a download
    made on click is made here, on another thread as Streamlit makes it (after the page has run)."""
    out = {}
    for button in at.get("download_button"):
        if button.proto.disabled:
            continue
        key = button.proto.id.split("-", 2)[-1]
        if button.proto.deferred_file_id:
            name, make = media[button.proto.deferred_file_id]
            with ThreadPoolExecutor(1) as pool:
                out[key] = (name, pool.submit(make).result())
        else:
            out[key] = media[button.proto.url.rsplit("/", 1)[-1].split(".")[0]]
    return out


def image_bytes(at: AppTest, media: dict) -> list[bytes]:
    """The bytes of every picture on the page (st.image), in order."""
    return [media[url.rsplit("/", 1)[-1].split(".")[0]][1] for im in at.get("image") for url in im.value]


def lesson(**state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.session_state["limit"] = 150
    at.session_state["steps"] = 6
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_lesson_is_first_in_the_navigation_and_the_app_still_opens_on_reverse_diffusion():
    from elsviz.ui.nav import DEFAULT, PAGES

    assert PAGES[0][0] == PAGE
    assert DEFAULT == "pages/reverse_diffusion.py"


def test_seven_sections_in_order_each_with_a_large_picture(media):
    at = lesson()
    headers = [h.value for h in at.header]
    assert headers == SECTIONS
    pictures = [Image.open(io.BytesIO(b)) for b in image_bytes(at, media)]
    assert len(pictures) == len(SECTIONS)
    assert all(p.height >= 170 for p in pictures), [p.size for p in pictures]  # projector-sized
    pngs = [data for name, data in downloads(at, media).values() if name.endswith(".png")]
    assert len(pngs) == len(SECTIONS)
    assert all(Image.open(io.BytesIO(b)).format == "PNG" for b in pngs)


def test_what_the_text_claims_is_what_the_runs_show():
    at = lesson()
    body = "\n".join(m.value for m in at.markdown)
    ideal = re.search(r"returned training digit \*\*#(\d+)\*\*: the distance between the two is \*\*([\d.]+)\*\*", body)
    assert ideal and float(ideal.group(2)) < 0.05  # IS gives back a training image
    assert re.search(r"\*\*100%\*\* of its pixels copy a patch centred exactly where they sit", body)  # LS
    new = re.search(r"the closest training image \(#\d+\) is \*\*([\d.]+)\*\* away", body)
    assert new and float(new.group(1)) > 0.2  # ELS makes a new digit
    border = re.search(r"\*\*(\d+)%\*\* of its border pixels keep their row or column, against \*\*(\d+)%\*\*", body)
    assert border and border.group(1) == "100" and int(border.group(2)) < 100  # bbELS keeps the border, ELS not
    assert re.search(r"a mosaic of pieces from \*\*\d+ training images\*\*", body)


@pytest.mark.slow
def test_the_lesson_runs_on_digits_whatever_the_sidebar_set():
    """With another set in the sidebar the lesson runs on all the digits (not the subset): slow."""
    at = lesson(dataset="photos")
    assert not at.error
    assert "The lesson always runs on the **digits**" in [i.value for i in at.info][0]
    assert [h.value for h in at.header] == SECTIONS
