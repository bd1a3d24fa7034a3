"""elsviz: watch the Equivariant Local Score machine (Kamb & Ganguli, ICML 2025) make images.

    streamlit run app.py

The sidebar (training set, machine, locality, steps, seed) is shared by every page (elsviz/ui/nav.py lists them).
"""
import streamlit as st

from elsviz.kernels import cpu as cpu_kernel
from elsviz.ui import navigation, sidebar, start_live_k

cpu_kernel.build_in_background()  # a fresh machine compiles the engine's kernel while the page starts

st.set_page_config(page_title="elsviz: patch mosaics, step by step", page_icon=":material/grid_view:", layout="wide")

# Pictures come enlarged from the server, each pixel a sharp square, and are shown at their own width or
# shrunk to the column. Nearest neighbour keeps the squares sharp where the browser enlarges them (screens
# of 1.5 device pixels per CSS pixel and more); where it shrinks them it drops whole rows of pixels (the
# bar of the 7 in a caption: "k = 7" read "k = /"), so there the browser's smoothing stays.
st.html("<style>@media (min-resolution: 1.5dppx) {[data-testid='stImage'] img {image-rendering: pixelated;}}</style>")

pages = navigation()
sidebar()
pages.run()
start_live_k()  # the neighbouring k of a run with one k, in the background (after the page is drawn)
