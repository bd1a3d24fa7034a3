"""The app's pages, declared once: app.py navigates with them, and a page reached before app.py ran does too."""
import streamlit as st

PAGES = (
    ("pages/lesson.py", "Lesson", ":material/school:"),  # first in the list, and the page a first visit opens on
    ("pages/reverse_diffusion.py", "Reverse diffusion", ":material/animation:"),
    ("pages/provenance.py", "Patch provenance", ":material/grid_view:"),
    ("pages/locality.py", "Locality explorer", ":material/tune:"),
    ("pages/network.py", "Network vs machine", ":material/compare:"),
    ("pages/extra_fingers.py", "Extra fingers", ":material/back_hand:"),
)


DEFAULT = "pages/lesson.py"  # what the app opens on: a newcomer starts with the lesson's first step


def navigation(position: str = "sidebar"):
    """st.navigation over the pages (DEFAULT is the one the app opens on)."""
    return st.navigation([st.Page(path, title=title, icon=icon, default=path == DEFAULT)
                          for path, title, icon in PAGES], position=position)


def through_app() -> None:
    """Rerun through app.py when a page runs without it.

    On a fresh server, a deep link (/provenance) reaches the page through Streamlit's legacy mode
    for apps with a pages/ folder, which skips app.py and so the shared sidebar. Declaring the
    navigation switches that mode off for good; the rerun then goes through app.py to the same page.
    """
    navigation(position="hidden")
    st.rerun()
