"""The app's pages, declared once: app.py navigates with them, and a page reached before app.py ran does too."""
import streamlit as st

PAGES = (
    ("pages/reverse_diffusion.py", "Reverse diffusion", ":material/animation:"),
    ("pages/provenance.py", "Patch provenance", ":material/grid_view:"),
    ("pages/locality.py", "Locality explorer", ":material/tune:"),
    ("pages/network.py", "Network vs machine", ":material/compare:"),
)


def navigation(position: str = "sidebar"):
    """st.navigation over the three pages (the first is the default)."""
    return st.navigation([st.Page(path, title=title, icon=icon, default=n == 0)
                          for n, (path, title, icon) in enumerate(PAGES)], position=position)


def through_app() -> None:
    """Rerun through app.py when a page runs without it.

    On a fresh server, a deep link (/provenance) reaches the page through Streamlit's legacy mode
    for apps with a pages/ folder, which skips app.py and so the shared sidebar. Declaring the
    navigation switches that mode off for good; the rerun then goes through app.py to the same page.
    """
    navigation(position="hidden")
    st.rerun()
