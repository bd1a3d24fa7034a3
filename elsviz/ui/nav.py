"""The app's pages, declared once for st.navigation (app.py). They live in app_pages/, not pages/, so
that Streamlit's legacy multipage mode never takes a deep link past app.py and its sidebar."""
import streamlit as st

PAGES = (
    ("app_pages/lesson.py", "Lesson", ":material/school:"),  # first in the list, and the page a first visit opens on
    ("app_pages/reverse_diffusion.py", "Reverse diffusion", ":material/animation:"),
    ("app_pages/provenance.py", "Patch provenance", ":material/grid_view:"),
    ("app_pages/locality.py", "Locality explorer", ":material/tune:"),
    ("app_pages/network.py", "Network vs machine", ":material/compare:"),
    ("app_pages/extra_fingers.py", "Extra fingers", ":material/back_hand:"),
)


DEFAULT = "app_pages/lesson.py"  # what the app opens on: a newcomer starts with the lesson's first step


def navigation(position: str = "sidebar"):
    """st.navigation over the pages (DEFAULT is the one the app opens on)."""
    return st.navigation([st.Page(path, title=title, icon=icon, default=path == DEFAULT)
                          for path, title, icon in PAGES], position=position)
