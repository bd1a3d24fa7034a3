"""Putting pictures on the page: always as PNG (Streamlit would pick JPEG and blur the pixel edges)."""
import streamlit as st


def show(picture, caption: str | None = None, where=None) -> None:
    """st.image of a PIL picture (from elsviz.figures), losslessly, at its own size or the column's."""
    (where or st).image(picture, caption=caption, output_format="PNG")
