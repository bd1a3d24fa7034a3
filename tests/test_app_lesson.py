"""The lesson page through AppTest: eight sections in order, each a live picture, and the claims its text makes.

On a subset of the digits with few steps (as tests/test_app.py), so it stays quick.
"""
import io
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest


ROOT = Path(__file__).resolve().parents[1]
PAGE = "app_pages/lesson.py"
SECTIONS = ["1. Noise, then the reverse process", "2. The ideal model memorises",
            "3. Locality alone copies from the same place", "4. Locality plus equivariance creates",
            "5. The border: bbELS", "6. The patch mosaic", "7. What k does",
            "8. Three theories, one noise: linear blurs, ideal memorises, local creates"]


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


def lesson(page: str | None = PAGE, **state) -> AppTest:
    """The app on a subset of the digits with few steps, on the lesson (page=None: no page chosen, as a
    first visit)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.session_state["limit"] = 150
    at.session_state["steps"] = 6
    for key, value in state.items():
        at.session_state[key] = value
    if page is not None:
        at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_first_visit_opens_on_the_lesson_and_its_first_step():
    from elsviz.ui.nav import DEFAULT, PAGES

    assert PAGES[0][0] == PAGE == DEFAULT  # first in the navigation, and where the app opens
    at = lesson(page=None)  # no page and no link: what a newcomer sees
    assert [t.value for t in at.title] == ["Lesson: how a diffusion model makes something new"]
    assert [h.value for h in at.header][0] == SECTIONS[0]
    assert at.get("image")  # the first step's picture
    # the sidebar's "Copy link", drawn after that picture (elsviz/ui/sidebar.py), is there, with the lesson's page
    assert "page=lesson" in at.sidebar.get("code")[0].value


def test_eight_sections_in_order_each_with_a_large_picture(media):
    at = lesson()
    headers = [h.value for h in at.header]
    assert headers == SECTIONS
    pictures = [Image.open(io.BytesIO(b)) for b in image_bytes(at, media)]
    assert len(pictures) == len(SECTIONS)
    assert all(p.height >= 170 for p in pictures), [p.size for p in pictures]  # projector-sized
    pngs = [data for name, data in downloads(at, media).values() if name.endswith(".png")]
    assert len(pngs) == len(SECTIONS)
    assert all(Image.open(io.BytesIO(b)).format == "PNG" for b in pngs)


def lesson_run(at: AppTest, machine: str, k):
    """The lesson's run of this machine and k, from the app's run cache (the one the page drew)."""
    from elsviz.app.runs import RunSpec
    from elsviz.ui.runs import runs_cache

    s = at.session_state["_settings"]
    return runs_cache().get((s.dataset_key, RunSpec(machine=machine, k=k, steps=s.spec.steps, seed=s.spec.seed)))


def test_what_the_text_claims_is_what_the_runs_show():
    from elsviz.analysis.claims import COPY_RMS, EQUAL_TOL
    from elsviz.analysis.lesson import LESSON_K
    from elsviz.analysis.provenance import mosaic

    at = lesson()
    body = "\n".join(m.value for m in at.markdown)
    train = at.session_state["_settings"].train
    ideal = re.search(r"a copy of training digit \*\*#(\d+)\*\* \(RMS distance \*\*([\d.]+)\*\*", body)
    out = lesson_run(at, "is", LESSON_K).traj.final[0]
    assert ideal and float(ideal.group(2)) <= COPY_RMS  # IS gives back a training image ...
    assert float((out - train.images[int(ideal.group(1))]).pow(2).mean().sqrt()) <= COPY_RMS  # ... the one named
    assert re.search(r"the heaviest patch of \*\*100%\*\* of its pixels is centred exactly where the pixel sits", body)
    new = re.search(r"The result is new, not a copy of any training digit "
                    r"\(the closest, #(\d+), is \*\*([\d.]+)\*\* away", body)
    out = lesson_run(at, "els", LESSON_K).traj.final[0]
    rms = (train.images - out).flatten(1).pow(2).mean(1).sqrt()
    assert new and int(new.group(1)) == int(rms.argmin())
    assert float(new.group(2)) == pytest.approx(float(rms.min()), abs=0.005)
    border = re.search(r"\*\*(\d+)%\*\* of its border pixels keep their row or column, against \*\*(\d+)%\*\*", body)
    assert border and border.group(1) == "100" and int(border.group(2)) < 100  # bbELS keeps the border, ELS not
    # the mosaic: the picture rebuilt from its heaviest patches against the output, as measured
    main = lesson_run(at, "bbels", "mnist-resnet").traj
    f = main.frames[-1]
    gap = (mosaic(train.images, f.source_index, f.source_pos)[0] - main.final[0]).abs()
    if float(gap.max()) > EQUAL_TOL:
        assert "gives back the output" not in body and "gives it back exactly" not in body
        said = re.search(r"differs from the output by up to \*\*([\d.]+)\*\*", body)
        assert said and float(said.group(1)) == pytest.approx(float(gap.max()), abs=0.005)
    assert re.search(r"the heaviest patches of its pixels come from \*\*\d+ training digits\*\*", body)


def page_texts(block) -> list[str]:
    """The text of every element under block, in page order (markdown, captions, headers, info; a metric's
    label and help)."""
    out = []
    for node in block.children.values():
        value = getattr(node, "value", None)
        if node.type == "metric":
            out += [node.label, node.proto.help]
        elif isinstance(value, str):
            out.append(value)
        if hasattr(node, "children"):
            out += page_texts(node)
    return out


JARGON_WORDS = {"k": r"\bk\b", "entropy": r"\bentropy\b", "nats": r"\bnats\b", "posterior": r"\bposterior\b",
                "score": r"\bscore\b"}


def unexplained_jargon(texts: list[str]) -> list[str]:
    """The words of elsviz.analysis.claims.JARGON whose first mention on a page is not explained by its plain sentence
    in the same element or the next one."""
    from elsviz.analysis.claims import JARGON

    missing = []
    for word, pattern in JARGON_WORDS.items():
        first = next((i for i, t in enumerate(texts) if re.search(pattern, t, re.IGNORECASE)), None)
        if first is None:
            continue
        sentence = JARGON["entropy" if word == "nats" else word]
        if not any(sentence in t for t in texts[first:first + 2]):
            missing.append(f"{word} (first in: {texts[first][:80]!r})")
    return missing


def test_the_jargon_is_explained_where_it_first_appears_on_each_page():
    at = lesson()
    seen = {}
    for page in (PAGE, "app_pages/reverse_diffusion.py", "app_pages/provenance.py", "app_pages/locality.py"):
        at.switch_page(page)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        texts = page_texts(at.main)
        assert not unexplained_jargon(texts), (page, unexplained_jargon(texts))
        seen[page] = {w for w, p in JARGON_WORDS.items() if any(re.search(p, t, re.IGNORECASE) for t in texts)}
    assert {"k", "entropy", "score"} <= seen[PAGE]
    assert {"k", "entropy", "nats", "posterior"} <= seen["app_pages/reverse_diffusion.py"]
    # the check can fail: a page that names entropy without explaining it
    assert unexplained_jargon(["The entropy map shows 4.5 nats.", "k = 5"]) == [
        "k (first in: 'k = 5')", "entropy (first in: 'The entropy map shows 4.5 nats.')",
        "nats (first in: 'The entropy map shows 4.5 nats.')"]


@pytest.mark.slow
def test_the_lesson_runs_on_handwritten_digits_whatever_the_sidebar_set():
    """With another set in the sidebar the lesson runs on its own set of handwritten digits (MNIST where
    it is built in, at the subset the sidebar starts it with): slow."""
    from elsviz.analysis.lesson import lesson_set
    from elsviz.datasets import BUILTINS

    at = lesson(dataset="photos")
    assert not at.error
    assert f"The lesson always runs on the **{lesson_set(BUILTINS)}**" in [i.value for i in at.info][0]
    assert [h.value for h in at.header] == SECTIONS


def test_a_link_without_a_page_opens_reverse_diffusion_not_the_lesson():
    """A link shared from "/" when Reverse diffusion was there carries only settings: it opens that page
    with them. A link copied on the lesson says page=lesson and opens the lesson."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.query_params.update({"set": "digits", "limit": "150", "machine": "els", "loc": "k", "k": "7", "steps": "6",
                            "seed": "3"})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] != ["Lesson: how a diffusion model makes something new"]
    shown = [c.value for c in at.caption] + [m.value for m in at.markdown] + [h.value for h in at.subheader]
    assert any("ELS, k=7, 6 steps, seed 3" in v for v in shown), shown

    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    again.query_params.update({"set": "digits", "limit": "150", "page": "lesson"})
    again.run()
    assert [t.value for t in again.title] == ["Lesson: how a diffusion model makes something new"]
    assert not again.warning  # `page` is not an unknown setting
