"""elsviz: watch the Equivariant Local Score machine (Kamb & Ganguli, ICML 2025) make images.

    streamlit run app.py

The sidebar (training set, machine, locality, steps, seed) is shared by the three pages.
"""
import streamlit as st

from elsviz.ui import sidebar

st.set_page_config(page_title="elsviz: patch mosaics, step by step", page_icon=":material/grid_view:", layout="wide")

# pixel pictures stay sharp when the browser scales them to the column
st.html("<style>[data-testid='stImage'] img {image-rendering: pixelated;}</style>")

pages = st.navigation([
    st.Page("pages/reverse_diffusion.py", title="Reverse diffusion", icon=":material/animation:", default=True),
    st.Page("pages/provenance.py", title="Patch provenance", icon=":material/grid_view:"),
    st.Page("pages/locality.py", title="Locality explorer", icon=":material/tune:"),
])
sidebar()
pages.run()
