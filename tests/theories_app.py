"""app.py with "Theories side by side" in its navigation, for tests/test_browser_theories.py: the page is
not in elsviz/ui/nav.py's list yet (when it is, this runs app.py as it stands).

    streamlit run tests/theories_app.py     # from the repository's root
"""
from pathlib import Path

import elsviz.ui.nav as nav

ROOT = Path(__file__).resolve().parents[1]
PAGE = "app_pages/theories.py"

if PAGE not in [Path(p).relative_to(ROOT).as_posix() if Path(p).is_absolute() else p for p, *_ in nav.PAGES]:
    nav.PAGES = (*nav.PAGES, (PAGE, "Theories side by side", ":material/view_comfy:"))
# the pages' paths are relative to the main script, here tests/: made absolute (once; the module stays loaded)
absolute = lambda p: p if Path(p).is_absolute() else str(ROOT / p)  # noqa: E731
nav.PAGES = tuple((absolute(p), title, icon) for p, title, icon in nav.PAGES)
nav.DEFAULT, nav.LINKED = absolute(nav.DEFAULT), absolute(nav.LINKED)
exec(compile((ROOT / "app.py").read_text(), str(ROOT / "app.py"), "exec"), {"__name__": "__main__"})
