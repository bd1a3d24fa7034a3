"""A picture the user clicks on (the provenance picture, the finger gallery), for the pages.

    click = clickable_image(picture, key="prov_click", cursor="crosshair")
    if click:  # {x, y, width, height, unix_time}: where on the picture as drawn, and its drawn size
        row, col = elsviz.app.runs.pixel_from_click(click, (h, w))

The picture is drawn at its own size but never wider than its column: on a narrow screen (a phone,
390 px) it is shrunk to fit and stays whole, where a picture of fixed width in the component's frame
lost its right part (448 px of picture in a 358 px frame). The frame follows the picture's drawn
height whenever it changes. Its page is elsviz/ui/clickable_frontend/index.html (no build step).
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

import streamlit.components.v1 as components

FRONTEND = Path(__file__).with_name("clickable_frontend")
_component = components.declare_component("clickable", path=str(FRONTEND))


def clickable_image(picture, *, key: str, cursor: str = "crosshair", alt: str = "") -> dict | None:
    """Show a PIL picture (losslessly, as PNG); the last click on it as {x, y, width, height, unix_time}
    (x, y on the picture as drawn, width x height its drawn size), or None before the first click."""
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    src = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return _component(src=src, cursor=cursor, alt=alt, key=key, default=None)
