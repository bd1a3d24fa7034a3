"""Every picture elsviz draws: Plotly figures and Pillow images, for the app, exports and the README.

Pixel images are always enlarged by nearest neighbour (each pixel a sharp square), never smoothed.
No Streamlit here: a figure is data; the pages decide where it goes.
"""
from __future__ import annotations

import colorsys
import io
import re

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image, ImageDraw, ImageFont
from plotly.colors import get_colorscale, hex_to_rgb, sample_colorscale
from plotly.subplots import make_subplots

from .errors import ElsvizError
from .analysis.provenance import patch, seams, shared_mask
from .validate import as_bool, as_float, as_int, as_pixel

MAX_PICTURE = 4096  # pixels on a side


def check_image(img, name: str = "img") -> None:
    """An image [C, H, W] (or [1, C, H, W]) of real numbers, C = 1 or 3: a tensor or an array."""
    if not isinstance(img, (torch.Tensor, np.ndarray)):
        raise ElsvizError(f"{name} must be an image [C, H, W] (a tensor or array with C = 1 or 3), got {type(img).__name__}.")
    shape = tuple(img.shape)
    if isinstance(img, torch.Tensor):
        real = not img.is_complex()
    else:
        real = np.issubdtype(img.dtype, np.number) and not np.iscomplexobj(img)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if not real or len(shape) != 3 or shape[0] not in (1, 3) or not 1 <= min(shape[1:]) <= max(shape[1:]) <= MAX_PICTURE:
        raise ElsvizError(f"{name} must be an image [C, H, W] of real numbers with C = 1 or 3, got "
                          f"{getattr(img, 'dtype', '?')} of shape {tuple(img.shape)}.")


def check_run(traj, batch: int) -> int:
    """A run with frames (a Trajectory) and a batch index into it."""
    frames = getattr(traj, "frames", None)
    if not isinstance(frames, list) or not frames or not all(hasattr(f, "mean") and hasattr(f, "x") for f in frames):
        raise ElsvizError(f"Expected a run returned by sample() (a Trajectory with frames), got {type(traj).__name__}.")
    return as_int("batch", batch, 0, frames[0].x.shape[0] - 1, " (which image of the batch)")

ENTROPY_SCALE = "Magma"
STREAMLIT_PLACEHOLDERS = re.compile(r"#0000[0-3][0-9]|#000040")  # colour strings Streamlit swaps for theme colours
SEAM_RGB = (255, 255, 255)
SHARED_RGB = (128, 128, 128)
OUTLINE_RGB = (255, 255, 255)  # a silhouette's outline (drawn just outside it) over a provenance picture
BACKGROUND_RGB = (255, 255, 255)  # the app's light theme, so strips sit well on the page
TEXT_RGB = (49, 51, 63)


# -- pixels ---------------------------------------------------------------------------------------
def to_rgb(img) -> np.ndarray:
    """One image [C, H, W] (tensor or array, C = 1 or 3) in [-1, 1] -> uint8 [H, W, 3]."""
    x = img.detach().cpu().float().numpy() if isinstance(img, torch.Tensor) else np.asarray(img, np.float32)
    if x.ndim == 4:
        x = x[0]
    u8 = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)  # [C, H, W]
    if u8.shape[0] == 1:
        u8 = np.repeat(u8, 3, axis=0)
    return np.ascontiguousarray(u8.transpose(1, 2, 0))  # [H, W, 3]


def colormap(values, vmax: float | None = None, vmin: float = 0.0, scale: str = ENTROPY_SCALE) -> np.ndarray:
    """A scalar map [H, W] -> uint8 [H, W, 3] through a Plotly colour scale (vmax: top of the scale)."""
    v = values.detach().cpu().float().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, np.float32)
    top = float(v.max()) if vmax is None else float(vmax)
    u = np.clip((v - vmin) / max(top - vmin, 1e-12), 0.0, 1.0)
    lut = _lut(scale)  # [256, 3]
    return lut[np.rint(u * 255).astype(np.int64)]


_LUTS: dict[str, np.ndarray] = {}


def _lut(scale: str) -> np.ndarray:
    if scale not in _LUTS:
        cols = sample_colorscale(scale, list(np.linspace(0.0, 1.0, 256)), colortype="tuple")
        _LUTS[scale] = np.array([[round(255 * c) for c in rgb] for rgb in cols], dtype=np.uint8)
    return _LUTS[scale]


def plotly_scale(name: str) -> list[list]:
    """A Plotly colour scale by name as [[position, "rgb(r, g, b)"], ...], drawn the same everywhere.

    Streamlit rewrites a figure's JSON before the browser draws it: the strings #000001 .. #000040 are
    its theme's placeholders and become theme colours, whatever the chart's theme. Plotly's own scales
    are written in hex, and Magma and Inferno start at #000004: by name, the lowest entropy (settled,
    black) would be drawn in a theme colour (light pink). As rgb() strings the stops are left alone.
    """
    return [[float(pos), "rgb({}, {}, {})".format(*hex_to_rgb(c)) if c.startswith("#") else c]
            for pos, c in get_colorscale(name)]


def enlarge(rgb: np.ndarray, scale: int) -> Image.Image:
    """uint8 [H, W, 3] -> a PIL image `scale` times larger, each pixel a sharp square (NEAREST)."""
    im = Image.fromarray(rgb)
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST)


def fit_scale(shape: tuple[int, int], target: int = 320) -> int:
    """The integer zoom that makes an H x W image about `target` pixels on its larger side."""
    return max(1, round(target / max(shape)))


def picture(img, target: int = 320) -> Image.Image:
    """An image [C, H, W] in [-1, 1] as a large, sharp PIL image (about `target` pixels on its larger side)."""
    check_image(img)
    target = as_int("target", target, 1, MAX_PICTURE, " (pixels on the larger side)")
    rgb = to_rgb(img)
    return enlarge(rgb, fit_scale(rgb.shape[:2], target))


# -- provenance -----------------------------------------------------------------------------------
def source_colour(index: int) -> tuple[int, int, int]:
    """A colour per training image: hues spread by the golden ratio, so neighbours in index differ."""
    hue = (index * 0.6180339887) % 1.0
    light = 0.55 if index % 2 else 0.45
    r, g, b = colorsys.hls_to_rgb(hue, light, 0.85)
    return round(255 * r), round(255 * g), round(255 * b)


def provenance_picture(img, source_index, source_pos, source_count, *, target: int = 384, alpha: float = 0.7,
                       colour: bool = True, draw_seams: bool = True, mark: tuple[int, int] | None = None,
                       outline: bool = False, style: str = "tint", within=None) -> Image.Image:
    """The image with each pixel tinted by the training image it is copied from and the seams drawn.

    img [C, H, W]; source_index, source_count [H, W]; source_pos [H, W, 2]. Shared pixels (window
    matched by many identical keys) stay uncoloured grey with a hatch; seams are white lines
    between pieces; `mark` outlines one pixel (row, col). outline: draw the silhouette's outline
    (where the picture crosses mid grey) just outside it, so a small picture stays readable.
    style "edges": the picture is left untinted and each copied piece is outlined, inside its
    border, in the colour of its training image (alpha then sets how strongly). within: bool [H, W]
    (the hand, say): sources and seams are drawn there only, the rest is left as it is.
    """
    check_image(img)
    h, w = img.shape[-2:]
    for name, value, shape in (("source_index", source_index, (h, w)), ("source_pos", source_pos, (h, w, 2)),
                               ("source_count", source_count, (h, w))):
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape or value.is_floating_point():
            raise ElsvizError(f"{name} must be an integer tensor of shape {list(shape)} (from a Posterior or Frame), "
                              f"got {getattr(value, 'dtype', type(value).__name__)} of shape {tuple(getattr(value, 'shape', ()))}.")
    target = as_int("target", target, 1, MAX_PICTURE, " (pixels on the larger side)")
    alpha = as_float("alpha", alpha, 0.0, 1.0, hint=" (how strong the tint is)")
    colour, draw_seams = as_bool("colour", colour), as_bool("draw_seams", draw_seams)
    mark = None if mark is None else as_pixel(mark, h, w, "mark")
    if style not in ("tint", "edges"):
        raise ElsvizError(f"style must be 'tint' (pixels tinted by source) or 'edges' (pieces outlined), got {style!r}.")
    rgb = to_rgb(img).astype(np.float32)  # [H, W, 3]
    h, w = rgb.shape[:2]
    src = source_index.detach().cpu()
    shared = shared_mask(source_count.detach().cpu()).numpy()  # [H, W]
    inside = np.ones((h, w), bool) if within is None else np.asarray(within, bool)
    if inside.shape != (h, w):
        raise ElsvizError(f"within must be a bool mask [H, W] = [{h}, {w}], got shape {inside.shape}.")
    if colour and style == "tint":
        tint = np.array([[source_colour(int(s)) for s in row] for row in src.tolist()], np.float32)  # [H, W, 3]
        light = rgb.mean(-1, keepdims=True) / 255.0  # [H, W, 1]: the picture stays readable under the tint
        # the tint is darker on dark pixels, lighter on light ones; / 0.675 keeps mid-grey at the plain tint
        mixed = (1 - alpha) * rgb + alpha * tint * (0.35 + 0.65 * light) / 0.675
        grey = rgb.mean(-1, keepdims=True) * 0.5 + 0.5 * np.array(SHARED_RGB, np.float32)
        rgb = np.where(inside[..., None], np.where(shared[..., None], grey, mixed), rgb)
    s = fit_scale((h, w), target)
    im = enlarge(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), s)
    draw = ImageDraw.Draw(im)
    if colour and style == "tint" and s >= 6:
        for i, j in zip(*np.nonzero(shared & inside)):  # a diagonal hatch marks "shared"
            draw.line([(j * s + 1, (i + 1) * s - 2), ((j + 1) * s - 2, i * s + 1)], fill=(90, 90, 90), width=1)
    if colour and style == "edges":
        _piece_edges(im, src, source_pos.detach().cpu(), source_count.detach().cpu(), s, alpha, inside)
    if draw_seams:
        vertical, horizontal = seams(src, source_pos.detach().cpu(), source_count.detach().cpu())
        width = max(1, s // 12)
        for i, j in zip(*np.nonzero(vertical.numpy() & inside[:, :-1] & inside[:, 1:])):
            x = (j + 1) * s
            draw.line([(x, i * s), (x, (i + 1) * s)], fill=SEAM_RGB, width=width)
        for i, j in zip(*np.nonzero(horizontal.numpy() & inside[:-1] & inside[1:])):
            y = (i + 1) * s
            draw.line([(j * s, y), ((j + 1) * s, y)], fill=SEAM_RGB, width=width)
    if outline:  # last, over the tint and the seams
        _halo(draw, to_rgb(img).mean(-1) > 127.5, s, OUTLINE_RGB, max(2, s // 4))
    if mark is not None:
        _outline(draw, mark[0] * s, mark[1] * s, s, s, (255, 60, 60), max(2, s // 6))
    return im


def _piece_edges(im: Image.Image, src, pos, cnt, s: int, alpha: float, inside: np.ndarray) -> None:
    """Outline each copied piece inside its border in its source's colour (provenance_picture, style "edges").

    A pixel side is a piece border where a seam runs, where the neighbour is shared, or at the frame.
    """
    vertical, horizontal = (m.numpy() for m in seams(src, pos, cnt))  # [H, W-1], [H-1, W]
    own = ~shared_mask(cnt).numpy()  # [H, W]
    h, w = own.shape
    left, right, top, bottom = (np.zeros((h, w), bool) for _ in range(4))
    right[:, :-1] = vertical | ~own[:, 1:]
    left[:, 1:] = vertical | ~own[:, :-1]
    bottom[:-1] = horizontal | ~own[1:]
    top[1:] = horizontal | ~own[:-1]
    right[:, -1] = left[:, 0] = bottom[-1] = top[0] = True
    layer = Image.new("RGB", im.size)
    mask = Image.new("L", im.size, 0)
    draw, dmask = ImageDraw.Draw(layer), ImageDraw.Draw(mask)
    line = max(2, s // 5)
    opacity = round(255 * (0.35 + 0.65 * alpha))
    for i, j in zip(*np.nonzero(own & inside)):
        rgb = source_colour(int(src[i, j]))
        x0, y0, x1, y1 = j * s, i * s, (j + 1) * s - 1, (i + 1) * s - 1
        for side, box in ((top, (x0, y0, x1, y0 + line - 1)), (bottom, (x0, y1 - line + 1, x1, y1)),
                          (left, (x0, y0, x0 + line - 1, y1)), (right, (x1 - line + 1, y0, x1, y1))):
            if side[i, j]:
                draw.rectangle(box, fill=rgb)
                dmask.rectangle(box, fill=opacity)
    im.paste(layer, (0, 0), mask)


def _outline(draw: ImageDraw.ImageDraw, top: int, left: int, height: int, width: int, rgb, line: int) -> None:
    draw.rectangle([left, top, left + width - 1, top + height - 1], outline=rgb, width=line)


def key_in_image(image, row: int, col: int, k: int | None, *, target: int = 160) -> Image.Image:
    """A training image [C, H, W] with the k x k window centred on (row, col) outlined (and its centre).

    A window sticking out of the image (LS, bbELS zero padding) is drawn clipped at the border
    (ELS keys always lie inside). k=None (IS: the key is the whole image) marks only the pixel.
    """
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    s = fit_scale((h, w), target)
    im = enlarge(rgb, s)
    draw = ImageDraw.Draw(im)
    line = max(2, s // 4)
    if k is None:
        _outline(draw, row * s, col * s, s, s, (255, 60, 60), max(1, line // 2))
        return im
    d = k // 2
    top, left = max(row - d, 0), max(col - d, 0)
    bottom, right = min(row + d + 1, h), min(col + d + 1, w)
    _outline(draw, top * s, left * s, (bottom - top) * s, (right - left) * s, (255, 200, 0), line)
    _outline(draw, row * s, col * s, s, s, (255, 60, 60), max(1, line // 2))
    return im


def box_in_image(image, box: tuple[int, int, int, int], *, target: int = 96) -> Image.Image:
    """A training image [C, H, W] with the pixels top..bottom, left..right (inclusive) outlined: the part
    a copied piece came from (fingers_view.piece_patches' box)."""
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    s = fit_scale((h, w), target)
    im = enlarge(rgb, s)
    top, left, bottom, right = (int(v) for v in box)
    top, left, bottom, right = max(top, 0), max(left, 0), min(bottom, h - 1), min(right, w - 1)
    _outline(ImageDraw.Draw(im), top * s, left * s, (bottom - top + 1) * s, (right - left + 1) * s, (255, 200, 0),
             max(2, s // 3))
    return im


def key_card(image, row: int, col: int, k: int | None, *, target: int = 150, gap: int = 6) -> Image.Image:
    """One key: its k x k patch (zero-padded where it sticks out) beside its training image with the
    patch outlined, both the same height. k=None (IS): the training image alone, pixel marked."""
    im = key_in_image(image, row, col, k, target=target)
    if k is None:
        return im
    p = to_rgb(patch(torch.as_tensor(image), row, col, k))
    tile = enlarge(p, max(1, im.height // k))
    return _hstack([tile, im], gap=gap)


# -- a strip of labelled pictures -------------------------------------------------------------------
def strip(images, captions: list[str], *, target: int = 160, gap: int = 10, font_size: int = 15) -> Image.Image:
    """Pictures side by side with a caption under each (wrapped to the picture's width).

    images: [C, H, W] tensors in [-1, 1] or PIL images.
    """
    tiles = [im if isinstance(im, Image.Image) else picture(im, target) for im in images]
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [_wrap(cap, font, tile.width, measure) for tile, cap in zip(tiles, captions)]
    line_h = font_size + 4
    text_h = max(len(ls) for ls in lines) * line_h + 4
    width = sum(t.width for t in tiles) + gap * (len(tiles) + 1)
    height = max(t.height for t in tiles) + text_h + 2 * gap
    out = Image.new("RGB", (width, height), BACKGROUND_RGB)
    draw = ImageDraw.Draw(out)
    x = gap
    for tile, cap_lines in zip(tiles, lines):
        out.paste(tile, (x, gap))
        for n, line in enumerate(cap_lines):
            tw = draw.textlength(line, font=font)
            draw.text((x + (tile.width - tw) / 2, gap + tile.height + 4 + n * line_h), line, fill=TEXT_RGB, font=font)
        x += tile.width + gap
    return out


def _wrap(text: str, font, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    """Words of text in lines no wider than width (a single long word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _font(size: int) -> ImageFont.FreeTypeFont:
    """A scalable font at `size` pixels: Pillow's own (Aileron, inside every Pillow >= 10.1 wheel with
    FreeType), so a fresh machine needs no font file. Without a size Pillow gives a fixed 11-pixel bitmap."""
    return ImageFont.load_default(size=size)


def difference_picture(a, b, target: int = 160) -> Image.Image:
    """|a - b| of two images [C, H, W] (max over channels) as a heat map, 0 = black."""
    diff = (torch.as_tensor(a) - torch.as_tensor(b)).abs().amax(0) / 2  # [H, W] in [0, 1]
    rgb = colormap(diff, vmax=1.0, scale="Inferno")
    return enlarge(rgb, fit_scale(rgb.shape[:2], target))


# -- the run as an animation -----------------------------------------------------------------------
def step_title(frame, show_k: bool = True) -> str:
    k = "-" if frame.k is None else frame.k
    return f"step {frame.i}   t = {frame.t:.2f}" + (f"   k = {k}" if show_k else "")


ANIMATION_TITLES = ("noisy image<br>x_t", "denoised estimate<br>(posterior mean)", "entropy: how<br>undecided")


def animation_figure(traj, *, height: int = 460, frame_ms: int = 350, batch: int = 0,
                     entropy_max: float | None = None, show_k: bool = True) -> go.Figure:
    """The run as a Plotly animation: noisy image x_t | posterior mean | entropy map, per step.

    Play / pause buttons and a step slider run in the browser (no server round trip per frame).
    It opens on the last step, whose posterior mean is the output; Play runs from the noisiest step.
    entropy_max: the top of the entropy colour scale in nats (export.max_entropy: log of the number
    of keys, the same for every run of a machine on a set, so runs compare); None: this run's largest.
    show_k: False for IS, which has no window.
    """
    batch = check_run(traj, batch)
    height = as_int("height", height, 100, MAX_PICTURE, " (pixels)")
    frame_ms = as_int("frame_ms", frame_ms, 1, 60_000, " (milliseconds per step)")
    frames = traj.frames
    ent_top = max(float(f.entropy[batch].max()) for f in frames if f.entropy is not None) if frames[0].entropy is not None else 1.0
    if entropy_max is not None:
        ent_top = as_float("entropy_max", entropy_max, 1e-6, 1e6, hint=" (nats)")
    # titles in short lines: on a phone (390 px) each panel is about 95 px wide, and longer ones overprint
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.04, subplot_titles=ANIMATION_TITLES)
    fig.update_annotations(font=dict(size=13))

    def traces(f):
        ent = f.entropy[batch] if f.entropy is not None else torch.zeros(f.x.shape[-2:])
        return [
            go.Image(z=to_rgb(f.x[batch].clamp(-1, 1)), hovertemplate="row %{y}, col %{x}<extra>x_t</extra>"),
            go.Image(z=to_rgb(f.mean[batch]), hovertemplate="row %{y}, col %{x}<extra>mean</extra>"),
            go.Heatmap(z=ent.detach().cpu().numpy(), zmin=0.0, zmax=max(ent_top, 1e-6),
                       colorscale=plotly_scale(ENTROPY_SCALE),
                       colorbar=dict(title="nats", thickness=12, len=0.8), zsmooth=False,
                       hovertemplate="row %{y}, col %{x}<br>entropy %{z:.2f} nats<extra></extra>"),
        ]

    for tr, col in zip(traces(frames[-1]), (1, 2, 3)):  # the output first
        fig.add_trace(tr, row=1, col=col)
    fig.frames = [go.Frame(data=traces(f), traces=[0, 1, 2], name=str(f.i),
                           layout=go.Layout(title_text=step_title(f, show_k))) for f in frames]
    h, w = frames[0].x.shape[-2:]
    for n in (1, 2, 3):
        fig.update_xaxes(showticklabels=False, ticks="", showgrid=False, zeroline=False, range=[-0.5, w - 0.5],
                         constrain="domain", row=1, col=n)
        fig.update_yaxes(showticklabels=False, ticks="", showgrid=False, zeroline=False, range=[h - 0.5, -0.5],
                         scaleanchor=f"x{'' if n == 1 else n}", constrain="domain", row=1, col=n)
    play = dict(frame=dict(duration=frame_ms, redraw=True), fromcurrent=False, transition=dict(duration=0),
                mode="immediate")
    pause = dict(frame=dict(duration=0, redraw=False), mode="immediate", transition=dict(duration=0))
    # under the pictures: the buttons, then the slider in a row of its own, the whole width (beside the
    # buttons it overlapped them on a phone); the title says the step, so the slider shows no value
    fig.update_layout(
        height=height, margin=dict(l=10, r=10, t=80, b=105),
        title=dict(text=step_title(frames[-1], show_k), x=0.01, y=0.98),
        updatemenus=[dict(type="buttons", direction="left", x=0.0, y=0.0, xanchor="left", yanchor="top",
                          pad=dict(t=10, r=8), showactive=False,
                          buttons=[dict(label="▶ Play", method="animate", args=[[str(f.i) for f in frames], play]),
                                   dict(label="❚❚ Pause", method="animate", args=[[None], pause])])],
        sliders=[dict(active=len(frames) - 1, x=0.0, len=1.0, y=0.0, yanchor="top", pad=dict(t=50, l=8, r=8),
                      currentvalue=dict(visible=False),
                      steps=[dict(label=str(f.i), method="animate",
                                  args=[[str(f.i)], dict(frame=dict(duration=0, redraw=True), mode="immediate",
                                                         transition=dict(duration=0))]) for f in frames])],
    )
    return fig


FRAME_MS = 220  # how long each step of an exported run is shown (GIF and video)
HOLD_MS = 1500  # ... and the last step, the output


def animation_frames(traj, *, target: int = 200, batch: int = 0):
    """The pictures of an exported run, one per step from the noise to the output: x_t beside the posterior
    mean, the step, its time t and window k written above them (no k for IS, or a network: they have no
    window), what each picture is written below.

    The GIF (animation_gif) and the video (export.run_mp4) are made of these same pictures. A generator:
    a long run is never in memory all at once.
    """
    batch = check_run(traj, batch)
    target = as_int("target", target, 1, MAX_PICTURE, " (pixels on the larger side of each picture)")
    show_k = getattr(traj.denoiser, "machine", None) != "is"
    last = traj.frames[-1].i
    for f in traj.frames:
        pair = _hstack([picture(f.x[batch].clamp(-1, 1), target), picture(f.mean[batch], target)], gap=8)
        title = step_title(f, show_k and f.k is not None)
        yield labelled_pair(pair, title, ("noisy image x_t", "the output" if f.i == last else "estimate"))


def frame_font_size(width: int) -> int:
    """The size of an exported frame's labels for pictures `width` pixels wide in all: 20 px on a slide's
    GIF (2 x 320 pixels), 30 px in the video (2 x 480), never under 12 px."""
    return max(12, round(width / 32))


def frame_band(width: int) -> int:
    """The height of the band of text above (and below) an exported frame `width` pixels wide."""
    size = frame_font_size(width)
    return size + 2 * max(4, size // 3)


def labelled_pair(pair: Image.Image, title: str, names: tuple[str, str]) -> Image.Image:
    """Two pictures side by side (one image, 8 pixels apart) with `title` above and a name under each."""
    font = _font(frame_font_size(pair.width))
    band = frame_band(pair.width)
    out = Image.new("RGB", (pair.width, pair.height + 2 * band), BACKGROUND_RGB)
    out.paste(pair, (0, band))
    draw = ImageDraw.Draw(out)
    draw.text((pair.width / 2, band / 2), title, fill=TEXT_RGB, font=font, anchor="mm")
    half = (pair.width - 8) / 2
    for n, name in enumerate(names):
        draw.text((n * (half + 8) + half / 2, band + pair.height + band / 2), name, fill=TEXT_RGB, font=font,
                  anchor="mm")
    return out


def animation_gif(traj, *, target: int = 200, frame_ms: int = FRAME_MS, hold_ms: int = HOLD_MS,
                  batch: int = 0) -> bytes:
    """The run as a looping GIF: x_t and the posterior mean side by side, the last frame held longer."""
    check_run(traj, batch)
    frame_ms = as_int("frame_ms", frame_ms, 1, 60_000, " (milliseconds per step)")
    hold_ms = as_int("hold_ms", hold_ms, 1, 60_000, " (milliseconds on the last step)")
    tiles = list(animation_frames(traj, target=target, batch=batch))
    durations = [frame_ms] * (len(tiles) - 1) + [hold_ms]
    buf = io.BytesIO()
    tiles[0].save(buf, format="GIF", save_all=True, append_images=tiles[1:], duration=durations, loop=0,
                  optimize=False, disposal=1)
    return buf.getvalue()


def _hstack(tiles: list[Image.Image], gap: int) -> Image.Image:
    out = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), max(t.height for t in tiles)),
                    BACKGROUND_RGB)
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width + gap
    return out


# -- locality schedules ---------------------------------------------------------------------------
def schedule_svg(ks: list[int], *, width: int = 220, height: int = 120) -> str:
    """k against step for a locality schedule k[0..S-1] (step S-1, most noise, on the left; k[0] unused), as a
    small SVG drawing that scales to its column (the sidebar's; a browser shows a point's step and k on hover).
    An SVG, not a Plotly figure: a page without other Plotly figures (the lesson) loads no Plotly (4.7 MB of
    script, which held the browser's main thread for seconds while the lesson's first picture waited)."""
    steps = list(range(len(ks) - 1, 0, -1))
    if not steps:
        raise ElsvizError("A schedule needs at least two steps (k[1] is the last step's window).")
    top = max(ks[i] for i in steps)
    left, right, up, down = 24, 6, 6, 30  # (the sidebar is about 220 pixels wide: drawn at about its own size)
    x = lambda n: left + (width - left - right) * (n / max(len(steps) - 1, 1))  # noqa: E731 (n: position in steps)
    y = lambda k: up + (height - up - down) * (1 - k / top)  # noqa: E731 (k from 0 at the bottom)
    colour, grid = "#1f77b4", "rgba(128,128,128,0.25)"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'font-size="11" fill="currentColor"><title>k against step, from step {steps[0]} (noisy) to step 1 '
             f'(clean)</title>']
    ticks = sorted({0, top // 2, top}) if top > 1 else [0, top]
    for k in ticks:
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(k):.1f}" y2="{y(k):.1f}" stroke="{grid}"/>'
                     f'<text x="{left - 4}" y="{y(k) + 4:.1f}" text-anchor="end">{k}</text>')
    for n in sorted({0, len(steps) // 2, len(steps) - 1}):
        parts.append(f'<text x="{x(n):.1f}" y="{height - down + 14}" text-anchor="middle">{steps[n]}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.1f}" y="{height - 4}" text-anchor="middle">'
                 f'step (noisy \u2192 clean)</text><text x="10" y="{(up + height - down) / 2:.1f}" '
                 f'text-anchor="middle" transform="rotate(-90 10 {(up + height - down) / 2:.1f})">k</text>')
    path = [f"M{x(0):.1f},{y(ks[steps[0]]):.1f}"]  # a step line: k holds until the next step's
    for n in range(1, len(steps)):
        path.append(f"H{x(n):.1f}V{y(ks[steps[n]]):.1f}")
    parts.append(f'<path d="{"".join(path)}" fill="none" stroke="{colour}" stroke-width="2"/>')
    for n, i in enumerate(steps):
        parts.append(f'<circle cx="{x(n):.1f}" cy="{y(ks[i]):.1f}" r="3" fill="{colour}">'
                     f'<title>step {i}: k = {ks[i]}</title></circle>')
    return "".join(parts) + "</svg>"


# legends in rows above the plot, wrapping: beside it (Plotly's default) they took half of a phone's width
LEGEND_ABOVE = dict(orientation="h", x=0.0, xanchor="left", y=1.02, yanchor="bottom", font=dict(size=11))


def weight_text(w: float) -> str:
    """A key's weight for a caption: three decimals, and '< 0.001' rather than a misleading 0.000."""
    return f"{w:.3f}" if w >= 0.0005 else "< 0.001"


# -- a trained network against the machines (elsviz.analysis.compare) ----------------------------------------
def grid(rows, col_titles: list[str], row_titles: list[str], captions=None, *, target: int = 96, gap: int = 8,
         font_size: int = 14) -> Image.Image:
    """Pictures in rows and columns: titles above the columns, at the left of the rows, and an optional
    caption under each picture. rows[r][c]: an image [C, H, W] in [-1, 1] or a PIL image."""
    tiles = [[im if isinstance(im, Image.Image) else picture(im, target) for im in row] for row in rows]
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    tw, th = max(t.width for row in tiles for t in row), max(t.height for row in tiles for t in row)
    left = int(max(measure.textlength(r, font=font) for r in row_titles)) + 2 * gap if row_titles else gap
    line = font_size + 4
    head = line + gap
    cap = line if captions else 0
    out = Image.new("RGB", (left + len(col_titles) * (tw + gap), head + len(rows) * (th + cap + gap) + gap),
                    BACKGROUND_RGB)
    draw = ImageDraw.Draw(out)
    for c, title in enumerate(col_titles):
        x = left + c * (tw + gap)
        draw.text((x + (tw - draw.textlength(title, font=font)) / 2, gap // 2), title, fill=TEXT_RGB, font=font)
    for r, row in enumerate(tiles):
        y = head + r * (th + cap + gap)
        if row_titles:
            draw.text((gap, y + (th - font_size) / 2), row_titles[r], fill=TEXT_RGB, font=font)
        for c, tile in enumerate(row):
            x = left + c * (tw + gap)
            out.paste(tile, (x, y))
            text = captions[r][c] if captions else ""
            if text:
                draw.text((x + (tw - draw.textlength(text, font=font)) / 2, y + th + 2), text, fill=TEXT_RGB, font=font)
    return out


def network_grid(result, columns=None, *, rows: int | None = None, target: int = 96) -> Image.Image:
    """Seeds x [network | machines] of an elsviz.analysis.compare.Comparison, each machine's picture captioned
    with its agreement with the network (the network run with the most steps, unless columns name another)."""
    from .analysis.compare import NAMES

    net = result.main_network
    columns = list(columns or [net, "bbels", "els", "is"])
    columns = [net if c == "network" else c for c in columns]
    nets = [c for c in columns if c.startswith("network")]
    ref = nets[0] if nets else net
    n = len(result.seeds) if rows is None else min(rows, len(result.seeds))

    def title(c):
        if c.startswith("network"):
            steps = result.steps if c == "network" else int(c.split("-")[1])
            return f"network ({steps} steps)"
        return NAMES.get(c, c)

    pics = [[result.outputs[c][s] for c in columns] for s in range(n)]
    caps = [["" if c.startswith("network") else f"{result.agreement[ref][c][s]:.2f}" for c in columns] for s in range(n)]
    return grid(pics, [title(c) for c in columns], [f"seed {result.seeds[s]}" for s in range(n)], caps, target=target)


def agreement_scatter(x_vals, y_vals, seeds, *, x_name: str = "IS", y_name: str = "bbELS", height: int = 420,
                      title: str | None = None) -> go.Figure:
    """Per-seed agreement with the network: one machine (x) against another (y), with the diagonal.
    Points above the diagonal are seeds where the y machine predicts the network better."""
    vals = [v for v in list(x_vals) + list(y_vals) if v == v]
    lo = min(0.0, min(vals, default=0.0))
    above = sum(y > x for x, y in zip(x_vals, y_vals))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[lo, 1], y=[lo, 1], mode="lines", line=dict(color="#ff7f0e", dash="dash"),
                             name="equal agreement", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=list(x_vals), y=list(y_vals), mode="markers", name="one seed",
                             marker=dict(size=9, color="#1f77b4", line=dict(width=1, color="white")),
                             customdata=list(seeds),
                             hovertemplate=f"seed %{{customdata}}<br>{x_name} %{{x:.3f}}<br>{y_name} %{{y:.3f}}<extra></extra>"))
    fig.update_xaxes(title_text=f"agreement of {x_name} with the network", range=[lo - 0.02, 1.02], constrain="domain")
    fig.update_yaxes(title_text=f"agreement of {y_name} with the network", range=[lo - 0.02, 1.02], scaleanchor="x")
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), showlegend=False,
                      title=title or f"{y_name} beats {x_name} on {above} of {len(seeds)} seeds")
    return fig


def schedules_figure(schedules: dict, *, highlight=(), height: int = 320, title: str | None = None,
                     rest: str = "the paper's schedules") -> go.Figure:
    """Several locality schedules k[0..S-1] against step; those named in `highlight` drawn bold, the rest thin
    and grey (the paper's presets, say), one entry of the legend (`rest`) for all of them; each line's
    name shows where the pointer rests on it."""
    fig = go.Figure()
    palette = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
    grey = 0
    for name, ks in schedules.items():
        steps = list(range(len(ks) - 1, 0, -1))
        bold = name in highlight
        colour = palette[list(highlight).index(name) % len(palette)] if bold else "rgba(120,120,120,0.45)"
        grey += not bold
        fig.add_trace(go.Scatter(x=steps, y=[ks[i] for i in steps], mode="lines+markers" if bold else "lines",
                                 line_shape="hv", name=name if bold else rest,
                                 line=dict(color=colour, width=3 if bold else 1),
                                 legendgroup=None if bold else "rest", showlegend=bold or grey == 1,
                                 hovertemplate=f"{name}<br>step %{{x}}: k = %{{y}}<extra></extra>"))
    fig.update_xaxes(title_text="step (noisy → clean)", autorange="reversed")
    fig.update_yaxes(title_text="k", rangemode="tozero")
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30 if title else 8, b=10), title=title,
                      legend=LEGEND_ABOVE)
    return fig


def trajectory_pair(result, machine: str = "bbels", seed_index: int = 0, *, every: int = 1,
                    target: int = 64) -> Image.Image:
    """One seed of an elsviz.analysis.compare.Comparison, step by step: the network's posterior means in the top row,
    the machine's below (a column per step, or per `every` steps, always ending with step 1; both runs
    with the same number of steps), and the agreement of the two at each step under the second row."""
    from .analysis.compare import NAMES

    net = result.means["network"]
    steps = sorted(net, reverse=True)
    steps = [i for i in steps if (i - steps[-1]) % every == 0]
    rows = [[net[i][seed_index].clamp(-1, 1) for i in steps], [result.means[machine][i][seed_index].clamp(-1, 1) for i in steps]]
    agree = result.step_agreement.get(machine, {})
    caps = [[""] * len(steps), [f"{agree[i][seed_index]:.2f}" if i in agree else "" for i in steps]]
    return grid(rows, [f"step {i}" for i in steps], ["network", NAMES.get(machine, machine)], caps, target=target,
                gap=6, font_size=13)


def step_agreement_figure(lines: dict, *, height: int = 300, title: str | None = None) -> go.Figure:
    """Agreement of posterior means against step: lines = {name: [(step, value), ...]}."""
    fig = go.Figure()
    for name, pts in lines.items():
        fig.add_trace(go.Scatter(x=[s for s, _ in pts], y=[v for _, v in pts], mode="lines+markers", name=name,
                                 hovertemplate=f"{name}<br>step %{{x}}: %{{y:.3f}}<extra></extra>"))
    fig.update_xaxes(title_text="step (noisy → clean)", autorange="reversed")
    fig.update_yaxes(title_text="agreement of the posterior means", range=[-0.05, 1.05])
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30 if title else 8, b=10), title=title,
                      legend=LEGEND_ABOVE)
    return fig


# -- extra fingers (elsviz.analysis.fingers, elsviz.app.fingers; the "Extra fingers" page) -------------------
FINGER_RGB = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
              (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]  # one colour per finger label
FLAG_RGB = (214, 39, 40)  # an odd hand (not five fingers)
FLAG_RGB_CSS = "rgb(214,39,40)"
PICK_RGB = (31, 119, 180)  # the hand that is open below the gallery


def finger_colour(label: int) -> tuple[int, int, int]:
    """The colour of finger `label` (1, 2, ...) in every picture of the page."""
    return FINGER_RGB[(int(label) - 1) % len(FINGER_RGB)]


def _edges(draw: ImageDraw.ImageDraw, mask: np.ndarray, s: int, rgb, width: int) -> None:
    """Lines along the pixel sides where bool mask [H, W] meets what is not in it (the frame not counted)."""
    h, w = mask.shape
    right = mask[:, :-1] != mask[:, 1:]  # [H, W-1]
    below = mask[:-1] != mask[1:]  # [H-1, W]
    for i, j in zip(*np.nonzero(right)):
        draw.line([((j + 1) * s, i * s), ((j + 1) * s, (i + 1) * s)], fill=rgb, width=width)
    for i, j in zip(*np.nonzero(below)):
        draw.line([(j * s, (i + 1) * s), ((j + 1) * s, (i + 1) * s)], fill=rgb, width=width)


def _halo(draw: ImageDraw.ImageDraw, mask: np.ndarray, s: int, rgb, width: int) -> None:
    """A line just outside bool mask [H, W]: along each side where it meets what is not in it, drawn on
    the outer pixel, so whatever colours the inside stay whole."""
    right = mask[:, :-1] & ~mask[:, 1:]  # [H, W-1] the outside is to the right
    left = ~mask[:, :-1] & mask[:, 1:]  # the outside is to the left
    below = mask[:-1] & ~mask[1:]  # [H-1, W]
    above = ~mask[:-1] & mask[1:]
    for i, j in zip(*np.nonzero(right)):
        draw.rectangle([(j + 1) * s, i * s, (j + 1) * s + width - 1, (i + 1) * s - 1], fill=rgb)
    for i, j in zip(*np.nonzero(left)):
        draw.rectangle([(j + 1) * s - width, i * s, (j + 1) * s - 1, (i + 1) * s - 1], fill=rgb)
    for i, j in zip(*np.nonzero(below)):
        draw.rectangle([j * s, (i + 1) * s, (j + 1) * s - 1, (i + 1) * s + width - 1], fill=rgb)
    for i, j in zip(*np.nonzero(above)):
        draw.rectangle([j * s, (i + 1) * s - width, (j + 1) * s - 1, (i + 1) * s - 1], fill=rgb)


def _label(draw: ImageDraw.ImageDraw, xy, text: str, size: int, rgb=(255, 255, 255)) -> None:
    """Text centred on xy, with a dark outline so it reads on any colour."""
    font = _font(size)
    draw.text(xy, text, fill=rgb, font=font, anchor="mm", stroke_width=max(1, size // 7), stroke_fill=(0, 0, 0))


def fingers_picture(img, regions, tips=None, *, target: int = 256, highlight: int | None = None) -> Image.Image:
    """A hand with each finger found in its own colour and numbered at its tip.

    img [1, H, W] in [-1, 1]; regions int [H, W] (0 = not a finger, 1..n the fingers: FingerCount.regions);
    tips float [n, 2] (row, col) per finger, or None; highlight: a finger label to outline in white.
    """
    check_image(img)
    reg = np.asarray(regions.cpu() if isinstance(regions, torch.Tensor) else regions)
    rgb = to_rgb(img).astype(np.float32) * 0.45  # the hand dimmed to grey: the fingers stand out
    for lab in np.unique(reg[reg > 0]):
        rgb[reg == lab] = finger_colour(lab)
    s = fit_scale(reg.shape, target)
    im = enlarge(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), s)
    draw = ImageDraw.Draw(im)
    if highlight:
        _edges(draw, reg == highlight, s, (255, 255, 255), max(2, s // 4))
    if tips is not None:
        h, w = reg.shape
        for lab, (r, c) in enumerate(np.asarray(tips, dtype=np.float64), start=1):
            y, x = min(max(r, 1), h - 2), min(max(c, 1), w - 2)  # inside the frame, so the number shows whole
            _label(draw, ((x + 0.5) * s, (y + 0.5) * s), str(lab), max(14, int(2.2 * s)))
    return im


def gallery(images, captions: list[str], flagged, *, columns: int = 8, target: int = 96, selected: int | None = None,
            font_size: int = 13) -> Image.Image:
    """Many small pictures in a grid of equal cells (so a click maps to a cell: fingers_view.cell_at),
    each captioned; flagged ones framed and captioned in red, `selected` framed in blue."""
    tiles = [im if isinstance(im, Image.Image) else picture(im, target) for im in images]
    if not tiles:
        raise ElsvizError("gallery() needs at least one picture.")
    pad, frame = 6, 3
    tw, th = max(t.width for t in tiles), max(t.height for t in tiles)
    cw, ch = tw + 2 * pad, th + 2 * pad + font_size + 4
    rows = -(-len(tiles) // columns)
    out = Image.new("RGB", (columns * cw, rows * ch), BACKGROUND_RGB)
    draw = ImageDraw.Draw(out)
    font = _font(font_size)
    for n, (tile, cap) in enumerate(zip(tiles, captions)):
        x, y = (n % columns) * cw + pad, (n // columns) * ch + pad
        out.paste(tile, (x, y))
        odd = bool(flagged[n])
        if n == selected:
            _outline(draw, y - frame, x - frame, th + 2 * frame, tw + 2 * frame, PICK_RGB, frame + 1)
        elif odd:
            _outline(draw, y - frame + 1, x - frame + 1, th + 2 * frame - 2, tw + 2 * frame - 2, FLAG_RGB, frame)
        width = draw.textlength(cap, font=font)
        draw.text((x + (tw - width) / 2, y + th + 3), cap, fill=FLAG_RGB if odd else TEXT_RGB, font=font)
    return out


def finger_histogram(distributions: dict, *, normal: int = 5, height: int = 320) -> go.Figure:
    """Finger counts per study setting: distributions = {name: {fingers: seeds}} (0 fingers = not a hand),
    as grouped bars of the share of seeds; the normal count is marked."""
    counts = sorted({c for d in distributions.values() for c in d} | {normal})
    names = list(distributions)
    colours = sample_colorscale("Viridis", [0.1 + 0.8 * n / max(len(names) - 1, 1) for n in range(len(names))])
    fig = go.Figure()
    for name, colour in zip(names, colours):
        d = distributions[name]
        total = max(sum(d.values()), 1)
        fig.add_trace(go.Bar(x=[str(c) if c else "no hand" for c in counts], y=[d.get(c, 0) / total for c in counts],
                             name=name, marker_color="rgb(150,150,150)" if name.startswith("IS") else colour,
                             customdata=[d.get(c, 0) for c in counts],
                             hovertemplate=f"{name}<br>%{{x}} fingers: %{{customdata}} seeds (%{{y:.0%}})<extra></extra>"))
    fig.update_xaxes(title_text="fingers counted", type="category")
    fig.update_yaxes(title_text="share of the seeds", tickformat=".0%", rangemode="tozero")
    fig.update_layout(height=height, barmode="group", margin=dict(l=10, r=10, t=10, b=10), legend=LEGEND_ABOVE)
    return fig


def extra_rate_figure(points: list, *, reference: float | None = None, reference_name: str = "IS",
                      height: int = 320) -> go.Figure:
    """The extra-finger rate (share of hands with more than five fingers) against the locality:
    points = [(k or a schedule's name, rate, seeds), ...]; `reference` draws IS's rate as a dashed line."""
    numeric = all(isinstance(p[0], int) for p in points)
    xs = [p[0] if numeric else str(p[0]) for p in points]
    fig = go.Figure(go.Scatter(x=xs, y=[p[1] for p in points], mode="lines+markers", name="extra-finger rate",
                               customdata=[p[2] for p in points], marker=dict(size=10), line=dict(width=3),
                               hovertemplate="k = %{x}: %{y:.0%} of %{customdata} seeds<extra></extra>"))
    if reference is not None:
        fig.add_hline(y=reference, line=dict(color="rgb(120,120,120)", dash="dash", width=2),
                      annotation_text=f"{reference_name}: {reference:.0%} (it memorises whole hands)",
                      annotation_position="top right")
    fig.update_xaxes(title_text="k (window size)" if numeric else "locality", type="linear" if numeric else "category",
                     tickvals=xs if numeric else None)
    top = max([p[1] for p in points] + [reference or 0.0, 0.1])
    fig.update_yaxes(title_text="hands with an extra finger", tickformat=".0%", range=[-0.02, min(1.05, top * 1.15 + 0.02)])
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), showlegend=False)
    return fig


def birth_figure(points: list, *, born: tuple[int, int] | None = None, normal: int = 5, height: int = 300) -> go.Figure:
    """The branch test: the fingers counted when the run is finished from step s with a larger window,
    points = [(s, fingers), ...]; `born` = (first, last) step of the window where the extra finger appears."""
    pts = sorted(points, reverse=True)
    fig = go.Figure(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", line_shape="hv",
                               marker=dict(size=10, color=[FLAG_RGB_CSS if p[1] != normal else "rgb(44,160,44)"
                                                           for p in pts]),
                               line=dict(color="rgb(120,120,120)"),
                               hovertemplate="finished from step %{x}: %{y} fingers<extra></extra>"))
    fig.add_hline(y=normal, line=dict(color="rgb(44,160,44)", dash="dot"), annotation_text=f"{normal}: a normal hand",
                  annotation_position="bottom left")
    if born is not None:
        hi, lo = max(born), min(born)
        fig.add_vrect(x0=hi + 0.5, x1=lo - 0.5, fillcolor=FLAG_RGB_CSS, opacity=0.15, line_width=0,
                      annotation_text=f"born at step{'s' if hi != lo else ''} {hi}{f'-{lo}' if hi != lo else ''}",
                      annotation_position="top left")
    fig.update_xaxes(title_text="larger window from step s on (noisy → clean)", autorange="reversed", dtick=1)
    fig.update_yaxes(title_text="fingers counted", dtick=1)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), showlegend=False)
    return fig



def timeline_figure(rows: list[dict], *, height: int = 300) -> go.Figure:
    """A region's provenance across the steps (fingers_view.timeline): winning weight and entropy per step,
    each point labelled with the training image the region leans towards; dashed lines where it switches."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    steps = [r["step"] for r in rows]
    names = ["shared" if r["image"] is None else f"#{r['image']}" for r in rows]
    fig.add_trace(go.Scatter(x=steps, y=[r["weight"] for r in rows], mode="lines+markers+text", name="weight",
                             text=names, textposition="top center", textfont=dict(size=10),
                             customdata=[[n, r["share"]] for n, r in zip(names, rows)],
                             hovertemplate="step %{x}: weight %{y:.3f}<br>leans towards %{customdata[0]} "
                                           "(%{customdata[1]:.0%} of the pixels)<extra></extra>"), secondary_y=False)
    fig.add_trace(go.Scatter(x=steps, y=[r["entropy"] for r in rows], mode="lines", name="entropy (nats)",
                             line=dict(dash="dot"), hovertemplate="step %{x}: entropy %{y:.2f} nats<extra></extra>"),
                  secondary_y=True)
    for r in rows:
        if r["switched"]:
            fig.add_vline(x=r["step"], line=dict(color="rgb(150,150,150)", dash="dash", width=1))
    fig.update_xaxes(title_text="step (noisy → clean)", autorange="reversed", dtick=1)
    fig.update_yaxes(title_text="winning weight", range=[0, 1.15], secondary_y=False)
    fig.update_yaxes(title_text="entropy (nats)", rangemode="tozero", secondary_y=True, showgrid=False)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), legend=dict(orientation="h", y=-0.3))
    return fig


def seam_picture(img, source_index, source_pos, source_count, *, target: int = 256, within=None,
                 rgb=(230, 30, 30)) -> Image.Image:
    """The seams of a mosaic as red lines between pixels, over the picture dimmed: where neighbours are
    copied from different training images or from one at other offsets (elsviz.analysis.provenance.seams). within:
    bool [H, W] (the hand, say): only seams with both pixels inside are drawn."""
    check_image(img)
    h, w = img.shape[-2:]
    inside = np.ones((h, w), bool) if within is None else np.asarray(within, bool)
    base = to_rgb(img).astype(np.float32) * 0.55
    s = fit_scale((h, w), target)
    im = enlarge(np.clip(np.rint(base), 0, 255).astype(np.uint8), s)
    draw = ImageDraw.Draw(im)
    vertical, horizontal = (m.numpy() for m in seams(source_index.detach().cpu(), source_pos.detach().cpu(),
                                                      source_count.detach().cpu()))
    line = max(2, s // 5)
    for i, j in zip(*np.nonzero(vertical & inside[:, :-1] & inside[:, 1:])):
        draw.line([((j + 1) * s, i * s), ((j + 1) * s, (i + 1) * s)], fill=rgb, width=line)
    for i, j in zip(*np.nonzero(horizontal & inside[:-1] & inside[1:])):
        draw.line([(j * s, (i + 1) * s), ((j + 1) * s, (i + 1) * s)], fill=rgb, width=line)
    return im


NEVER_RGB = (150, 150, 150)  # a pixel that never decided (commitment map)


def commitment_picture(steps_map, img, steps: int, *, target: int = 256, font_size: int = 14) -> Image.Image:
    """When each pixel decided (fingers.commitment_map: its step, -1 = never) in colour, the hand's outline
    in white over it, and a key below: one box per step, early (noisy) dark to late bright, grey = never."""
    check_image(img)
    z = steps_map.detach().cpu().numpy() if isinstance(steps_map, torch.Tensor) else np.asarray(steps_map)
    top = max(steps - 1, 2)
    lut = _lut("Viridis")
    late = np.clip((top - z) / max(top - 1, 1), 0.0, 1.0)  # step top -> 0 (dark), step 1 -> 1 (bright)
    rgb = np.where((z < 1)[..., None], np.array(NEVER_RGB, np.uint8), lut[np.rint(late * 255).astype(np.int64)])
    s = fit_scale(z.shape, target)
    pic = enlarge(np.ascontiguousarray(rgb, dtype=np.uint8), s)
    _halo(ImageDraw.Draw(pic), to_rgb(img).mean(-1) > 127.5, s, (255, 255, 255), max(2, s // 5))
    # the key: a box per step, then "never"
    font = _font(font_size)
    labels = [str(i) for i in range(top, 0, -1)] + ["never"]
    colours = [tuple(lut[round((top - i) / max(top - 1, 1) * 255)]) for i in range(top, 0, -1)] + [NEVER_RGB]
    box = max(10, min(22, (pic.width - 50) // len(labels)))
    key_h = box + font_size + 8
    out = Image.new("RGB", (pic.width, pic.height + key_h + 4), BACKGROUND_RGB)
    out.paste(pic, (0, 0))
    draw = ImageDraw.Draw(out)
    y = pic.height + 4
    x = 0
    for n, (text, colour) in enumerate(zip(labels, colours)):
        wide = box if n < len(labels) - 1 else max(box, int(draw.textlength(text, font=font)) + 4)
        draw.rectangle([x, y, x + wide - 2, y + box - 1], fill=tuple(int(c) for c in colour))
        if n in (0, len(labels) - 2, len(labels) - 1) or top <= 12:
            draw.text((x + wide / 2, y + box + 2), text, fill=TEXT_RGB, font=font, anchor="mt")
        x += wide
    return out


def framed(pic: Image.Image, rgb, width: int = 4) -> Image.Image:
    """pic with a border of `width` pixels in colour rgb around it."""
    out = Image.new("RGB", (pic.width + 2 * width, pic.height + 2 * width), tuple(rgb))
    out.paste(pic, (width, width))
    return out


def finger_sources_grid(images_per_finger: list[list], captions: list[list[str]], *, target: int = 72) -> Image.Image:
    """The training hands each finger was copied from: a row per finger (its label at the left), its
    sources' training images framed in the finger's colour, captioned (e.g. '#412: 9 px')."""
    rows = [[framed(picture(im, target), finger_colour(n)) for im in ims] for n, ims in enumerate(images_per_finger, 1)]
    width = max(len(r) for r in rows)
    blank = Image.new("RGB", rows[0][0].size if rows and rows[0] else (target, target), BACKGROUND_RGB)
    rows = [r + [blank] * (width - len(r)) for r in rows]
    caps = [c + [""] * (width - len(c)) for c in captions]
    ordinal = ["most pixels", "2nd", "3rd", "4th", "5th", "6th", "7th", "8th"]
    return grid(rows, ordinal[:width] + [f"{n}th" for n in range(len(ordinal) + 1, width + 1)],
                [f"finger {n}" for n in range(1, len(rows) + 1)], caps, target=target, font_size=13)


# -- added for issue 18 (Network vs machine, Extra fingers): agreement beside its baselines; the branch
#    test with its steps in words -------------------------------------------------------------------------
def agreement_spread_figure(rows: dict, seeds, *, baselines=(), height: int | None = None) -> go.Figure:
    """Agreement with the network, one row per machine or baseline (rows = {name: [value per seed]}, top
    row first): each seed a dot (hover: the seed), the middle half of the seeds a thick bar from the
    lower to the upper quartile, the median a white diamond (elsviz.analysis.compare.spread: the numbers the
    page states). Names in `baselines` grey, the machines blue."""
    from .analysis.compare import spread

    names = list(rows)
    fig = go.Figure()
    for name in names:
        vals = [float(v) for v in rows[name]]
        q1, med, q3 = spread(vals)
        colour = "rgb(140,140,140)" if name in baselines else "rgb(31,119,180)"
        if med == med:  # not NaN
            fig.add_trace(go.Scatter(x=[q1, q3], y=[name, name], mode="lines", line=dict(color=colour, width=10),
                                     opacity=0.35, hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(x=vals, y=[name] * len(vals), mode="markers", showlegend=False,
                                 marker=dict(size=8, color=colour, line=dict(width=1, color="white")),
                                 customdata=list(seeds),
                                 hovertemplate=f"{name}<br>seed %{{customdata}}: %{{x:.3f}}<extra></extra>"))
        if med == med:
            fig.add_trace(go.Scatter(x=[med], y=[name], mode="markers", showlegend=False,
                                     marker=dict(symbol="diamond", size=13, color="white",
                                                 line=dict(width=2, color=colour)),
                                     hovertemplate=(f"{name}<br>median {med:.3f}<br>middle half of the seeds "
                                                    f"{q1:.3f} .. {q3:.3f}<extra></extra>")))
    finite = [v for vals in rows.values() for v in vals if v == v]
    lo = min(0.0, min(finite, default=0.0))
    fig.update_xaxes(title_text="agreement with the network (1 = the same picture)", range=[lo - 0.03, 1.03])
    fig.update_yaxes(autorange="reversed", categoryorder="array", categoryarray=names)
    fig.update_layout(height=height or 70 + 38 * len(names), margin=dict(l=10, r=10, t=10, b=10))
    return fig


def birth_steps_figure(points: list, steps: int, *, born: tuple[int, int] | None = None, normal: int = 5,
                       height: int = 300) -> go.Figure:
    """birth_figure with its steps in words: each tick names the step and where it falls in the run
    (steps count down: step steps-1 runs first), and the shaded window says early, midway or late."""
    from .analysis.fingers import run_phase

    fig = birth_figure(points, born=born, normal=normal, height=height)
    shown = sorted({p[0] for p in points}, reverse=True)
    fig.update_xaxes(tickmode="array", tickvals=shown,
                     ticktext=[f"{s}<br>({steps - s}/{steps - 1})" for s in shown],
                     title_text=f"finished with the larger window from step s (s counts down: {steps - 1} runs "
                                f"first, 1 last; (n/{steps - 1}): the n-th step of the run)")
    if born is not None:
        hi, lo = max(born), min(born)
        phases = [run_phase(hi, steps), run_phase(lo, steps)]
        when = phases[0] if phases[0] == phases[1] else f"{phases[0]} to {phases[1]}"
        for note in fig.layout.annotations:
            if note.text and note.text.startswith("born at"):
                note.text = f"{note.text} ({when} in the run)"
    return fig


# -- theories side by side (elsviz.app.theories; the "Theories side by side" page and the lesson) ------------
# One colour per machine, the same in every figure (rgb() strings: Streamlit leaves them alone); Kamb &
# Ganguli's four drawn solid, the rival theories dashed.
MACHINE_RGB = {"is": "rgb(31,119,180)", "ls": "rgb(255,127,14)", "els": "rgb(44,160,44)", "bbels": "rgb(214,39,40)",
               "nearest": "rgb(148,103,189)", "wiener": "rgb(140,86,75)", "pca": "rgb(227,119,194)",
               "pspc": "rgb(127,127,127)", "cfdm": "rgb(188,189,34)"}
PANEL_TITLE_LINES = 2  # a panel's title wraps to at most this many lines ("Smoothed CFDM" over a 96-pixel tile)
PANEL_GAP = 10  # pixels between panels (and around them)


def _panel_layout(n: int, tile: tuple[int, int], columns: int, *, captions: int, font_size: int, gap: int) -> dict:
    """Where the panels of panels() lie: n tiles of tile = (width, height) in rows of `columns`, each with a
    title of PANEL_TITLE_LINES lines above it and `captions` lines under it."""
    columns = max(1, min(columns, n))
    line = font_size + 4
    head, cap = PANEL_TITLE_LINES * line + 2, captions * line + (2 if captions else 0)
    tw, th = tile
    pitch_x, pitch_y = tw + gap, head + th + cap + gap
    rows = -(-n // columns)
    return {"columns": columns, "rows": rows, "tile": (tw, th), "gap": gap, "head": head, "line": line,
            "pitch": (pitch_x, pitch_y), "size": (gap + columns * pitch_x, gap + rows * pitch_y)}


def _fit_lines(text: str, font, width: int, draw: ImageDraw.ImageDraw, most: int) -> list[str]:
    """text wrapped to width in at most `most` lines; a line (or a single word) too long for it ends in an
    ellipsis, and so does the last line when words are left over."""
    def cut(line: str, more: bool) -> str:
        if not more and draw.textlength(line, font=font) <= width:
            return line
        while len(line) > 1 and draw.textlength(line + "…", font=font) > width:
            line = line[:-1]
        return line.rstrip() + "…"

    lines = _wrap(text, font, width, draw)
    return [cut(line, n == most - 1 and len(lines) > most) for n, line in enumerate(lines[:most])]


def panels(tiles, titles: list[str], captions: list[str] | None = None, *, columns: int = 5, gap: int = PANEL_GAP,
           font_size: int = 13, caption_lines: int = 1) -> Image.Image:
    """Pictures (PIL, from picture() or key_in_image()) in rows of `columns`, each with its title above
    (wrapped to PANEL_TITLE_LINES lines) and an optional caption under it (wrapped to caption_lines); a
    text too long for its picture's width ends in an ellipsis, never runs over its neighbour."""
    tiles = list(tiles)
    if not tiles or len(titles) != len(tiles) or (captions is not None and len(captions) != len(tiles)):
        raise ElsvizError(f"panels needs one title (and caption) per picture: {len(tiles)} pictures, "
                          f"{len(titles)} titles, {0 if captions is None else len(captions)} captions.")
    tw, th = max(t.width for t in tiles), max(t.height for t in tiles)
    lay = _panel_layout(len(tiles), (tw, th), columns, captions=caption_lines if captions is not None else 0,
                        font_size=font_size, gap=gap)
    font = _font(font_size)
    out = Image.new("RGB", lay["size"], BACKGROUND_RGB)
    draw = ImageDraw.Draw(out)
    px, py = lay["pitch"]
    for n, tile in enumerate(tiles):
        x = gap + (n % lay["columns"]) * px
        y = gap + (n // lay["columns"]) * py
        lines = _fit_lines(titles[n], font, tw, draw, PANEL_TITLE_LINES)
        top = y + (PANEL_TITLE_LINES - len(lines)) * lay["line"]  # titles sit on the picture
        for j, text in enumerate(lines):
            draw.text((x + (tw - draw.textlength(text, font=font)) / 2, top + j * lay["line"]), text, fill=TEXT_RGB,
                      font=font)
        out.paste(tile, (x + (tw - tile.width) // 2, y + lay["head"]))
        for j, text in enumerate(_fit_lines(captions[n], font, tw, draw, caption_lines) if captions else []):
            draw.text((x + (tw - draw.textlength(text, font=font)) / 2, y + lay["head"] + th + 2 + j * lay["line"]),
                      text, fill=TEXT_RGB, font=font)
    return out


def theories_grid(images, titles: list[str], captions: list[str] | None = None, *, columns: int = 5,
                  target: int = 96, mark: tuple[int, int] | None = None, font_size: int = 13) -> Image.Image:
    """The outputs of the network and the machines from the same noise, one panel each, titled (the
    machines by elsviz.machines.MACHINE_NAMES). One colour scale for all: -1 black, 1 white, values
    beyond clipped (no picture is stretched to its own range, so a paler output looks paler). mark:
    the same pixel (row, col) outlined in every panel."""
    images = list(images)
    if not images:
        raise ElsvizError("theories_grid needs at least one image.")
    for n, img in enumerate(images):
        check_image(img, f"images[{n}]")
    h, w = images[0].shape[-2:]
    if any(tuple(img.shape[-2:]) != (h, w) for img in images):
        raise ElsvizError("theories_grid draws outputs of one size; got images of different sizes.")
    mark = None if mark is None else as_pixel(mark, h, w, "mark")
    tiles = [picture(img, target) for img in images]
    if mark is not None:
        s = tiles[0].width // w
        for tile in tiles:
            _outline(ImageDraw.Draw(tile), mark[0] * s, mark[1] * s, s, s, (255, 60, 60), max(2, s // 6))
    return panels(tiles, titles, captions, columns=columns, font_size=font_size)


def theories_grid_cell(click: dict | None, n: int, hw: tuple[int, int], *, columns: int = 5, target: int = 96,
                       captions: bool = False, font_size: int = 13) -> tuple[int, tuple[int, int]] | None:
    """(panel, (row, col)) under a click {x, y, width, height} on a drawing of theories_grid(n images of
    size hw, with these columns, target, captions or not); None for a click beside every picture."""
    if not click or "x" not in click:
        return None
    h, w = hw
    s = fit_scale((h, w), target)
    lay = _panel_layout(n, (w * s, h * s), columns, captions=int(bool(captions)), font_size=font_size,
                        gap=PANEL_GAP)
    width, height = lay["size"]
    x = click["x"] * width / (click.get("width") or width)
    y = click["y"] * height / (click.get("height") or height)
    px, py = lay["pitch"]
    col, dx = divmod(x - lay["gap"], px)
    row, dy = divmod(y - lay["gap"], py)
    dy -= lay["head"]
    panel = int(row) * lay["columns"] + int(col)
    if not (0 <= col < lay["columns"] and 0 <= panel < n and 0 <= dx < w * s and 0 <= dy < h * s):
        return None
    return panel, (int(dy // s), int(dx // s))


def pixel_sources_strip(images, sources, *, component=None, columns: int = 4, target: int = 96) -> Image.Image:
    """What each machine weighs most at one pixel (elsviz.app.theories.PixelSource, one per machine): the
    training image of its heaviest key with the k x k patch (or crop) outlined and its centre marked, or,
    for a whole training image, the pixel marked; titled with the machine's name, captioned with the
    image's index and the key's weight. A machine that copies nothing (wiener: image -1, weight NaN)
    gets `component` (its first principal component [C, H, W], elsviz.app.theories.principal_component)
    captioned so, or a blank tile."""
    from .analysis.claims import amount
    from .machines import MACHINE_NAMES

    sources = list(sources)
    if not sources:
        raise ElsvizError("pixel_sources_strip needs at least one source.")
    h, w = images.shape[-2:]
    tiles, titles, caps = [], [], []
    for src in sources:
        titles.append(MACHINE_NAMES.get(src.machine, src.machine))
        named = src.image >= 0 and src.count > 0 and src.weight == src.weight  # NaN: no weight, no source
        if not named:
            tiles.append(picture(component, target) if component is not None else
                         Image.new("RGB", (w * fit_scale((h, w), target), h * fit_scale((h, w), target)), SHARED_RGB))
            caps.append("copies nothing" + ("; 1st PC shown" if component is not None else ""))
            continue
        tiles.append(key_in_image(images[src.image], src.pos[0], src.pos[1], src.window, target=target))
        tie = f" x{src.count}" if src.count > 1 else ""
        caps.append(f"#{src.image}{tie}, weight {amount(src.weight)}")  # worded as the page's sentences
    return panels(tiles, titles, caps, columns=columns, caption_lines=2)


def theory_curves_figure(agreement: dict, r2: dict, *, title: str | None = None, height: int = 560) -> go.Figure:
    """Per-step scores of each machine's posterior mean against the network's: agreement above, r^2 below,
    each {machine: [(step, value), ...]} (elsviz.app.theories.TheoryRun.curve). One colour per machine
    (MACHINE_RGB) in both; the rival theories dashed. NaN (a constant picture) leaves a gap; r^2 below -1
    (worse than a constant guess by far) is drawn at the axis' floor, -1, and says its value on hover."""
    from .machines import MACHINE_NAMES, PAPER_MACHINES

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    for row, (metric, lines) in enumerate((("agreement", agreement), ("r²", r2)), start=1):
        for m, pts in lines.items():
            name = MACHINE_NAMES.get(m, m)
            ys = [None if v != v else float(v) for _, v in pts]
            shown = ys if row == 1 else [None if v is None else max(v, -1.0) for v in ys]
            fig.add_trace(go.Scatter(
                x=[s for s, _ in pts], y=shown, customdata=[v if v is not None else float("nan") for v in ys],
                mode="lines+markers", name=name, legendgroup=m, showlegend=row == 1,
                line=dict(color=MACHINE_RGB.get(m, "rgb(0,0,0)"), width=2,
                          dash="solid" if m in PAPER_MACHINES else "dash"),
                marker=dict(size=5), hovertemplate=f"{name}<br>step %{{x}}: {metric} %{{customdata:.3f}}<extra></extra>"),
                row=row, col=1)
    low = min([v for pts in agreement.values() for _, v in pts if v == v] + [0.0])
    fig.update_yaxes(title_text="agreement", range=[min(low, 0.0) - 0.05, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="r²", range=[-1.05, 1.05], row=2, col=1)
    fig.update_xaxes(autorange="reversed")
    fig.update_xaxes(title_text="step (noisy → clean)", row=2, col=1)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30 if title else 8, b=10), title=title,
                      legend=LEGEND_ABOVE)
    return fig
