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
    ("app_pages/theories.py", "Theories side by side", ":material/view_comfy:"),
)


DEFAULT = "app_pages/lesson.py"  # served at "/": a newcomer starts with the lesson's first step
PICTURE_FIRST = {"Lesson"}  # pages that show their first picture before the sidebar's "Copy link" (ui.sidebar)
LINKED = "app_pages/reverse_diffusion.py"  # was at "/" before the lesson: links from then carry only settings


def navigation():
    """st.navigation over the pages. A session that opens "/" with settings in its URL but no
    `page=lesson` holds a link from before the lesson came first: it goes on to Reverse diffusion."""
    page = st.navigation([st.Page(path, title=title, icon=icon, default=path == DEFAULT)
                          for path, title, icon in PAGES])
    if not st.session_state.get("_landed"):
        st.session_state["_landed"] = True
        params = st.query_params.to_dict()
        if page.url_path == "" and params and params.get("page") != "lesson":
            st.switch_page(LINKED, query_params=params)  # the settings go along
    return page


def picture_first(page) -> bool:
    """Whether the page (of navigation()) draws the sidebar's "Copy link" after its first picture."""
    return page.title in PICTURE_FIRST
