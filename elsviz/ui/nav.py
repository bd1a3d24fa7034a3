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


# Reverse diffusion is served at "/", so that a link shared from it before the lesson came first (only
# settings, no page) still opens it; a first visit to "/" without a link begins with the lesson.
DEFAULT = "app_pages/reverse_diffusion.py"
FIRST = "app_pages/lesson.py"


def navigation(position: str = "sidebar"):
    """st.navigation over the pages; a session's first visit to "/" without settings in its URL
    goes on to the lesson (a newcomer starts with the lesson's first step)."""
    page = st.navigation([st.Page(path, title=title, icon=icon, default=path == DEFAULT)
                          for path, title, icon in PAGES], position=position)
    if not st.session_state.get("_landed"):
        st.session_state["_landed"] = True
        if page.url_path == "" and not st.query_params:
            st.switch_page(FIRST)
    return page
