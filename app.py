"""elsviz: watch the Equivariant Local Score machine (Kamb & Ganguli, ICML 2025) make images.

    streamlit run app.py

`streamlit run` first imports this file to serve it: it finds an st.App, whose lifespan gives the new
server a head start on its first visit (torch, the default set, its engine and run: elsviz/ui/warm.py).
Then every visit runs the file as its script: the sidebar (training set, machine, locality, steps, seed),
shared by every page (elsviz/ui/nav.py lists them), and the page.
"""
import streamlit as st

if __name__ != "__main__":  # imported by `streamlit run` to serve the app: no visit yet
    import importlib
    import signal
    import threading
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def head_start(_app):
        """The server's lifespan: the first visit's work begins in a thread (the server answers at once; importing
        elsviz imports torch, 2 s of a core). uvicorn, which serves it, raises the signal it stopped on (Ctrl-C)
        once more after stopping, so `streamlit run` would end with "Aborted!" and exit code 1: forgotten, it ends
        with 0, as for a plain script."""
        threading.Thread(target=lambda: importlib.import_module("elsviz.ui.warm").warm_up(), name="elsviz-warm-up",
                         daemon=True).start()
        server = getattr(signal.getsignal(signal.SIGINT), "__self__", None)  # uvicorn's Server: its handler
        yield
        if isinstance(getattr(server, "_captured_signals", None), list):
            server._captured_signals.clear()

    app = st.App(__file__, lifespan=head_start)

else:  # a visit's run
    from elsviz.kernels import cpu as cpu_kernel
    from elsviz.ui import navigation, sidebar, start_live_k
    from elsviz.ui.nav import picture_first
    from elsviz.ui.sidebar import draw_later

    cpu_kernel.build_in_background()  # a fresh machine compiles the engine's kernel while the page starts

    st.set_page_config(page_title="elsviz: patch mosaics, step by step", page_icon=":material/grid_view:",
                       layout="wide")

    # Pictures come enlarged from the server, each pixel a sharp square, and are shown at their own width or
    # shrunk to the column. Nearest neighbour keeps the squares sharp where the browser enlarges them (screens
    # of 1.5 device pixels per CSS pixel and more); where it shrinks them it drops whole rows of pixels (the
    # bar of the 7 in a caption: "k = 7" read "k = /"), so there the browser's smoothing stays.
    st.html("<style>@media (min-resolution: 1.5dppx) {[data-testid='stImage'] img {image-rendering: pixelated;}}"
            "</style>")

    pages = navigation()
    sidebar(later=picture_first(pages))  # the lesson's first picture before the sidebar's "Copy link"
    pages.run()
    draw_later()  # (if the page did not)
    start_live_k()  # the neighbouring k of a run with one k, in the background (after the page is drawn)
