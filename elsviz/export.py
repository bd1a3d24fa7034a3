"""What leaves elsviz for slides and notebooks: the run as a GIF and an MP4, pictures as PNG, the numbers as .npz.

The app's download buttons and the command line (`elsviz sample ... --mp4 --npz`) call these same
functions, so a file saved from either is the same file. No Streamlit here.

The MP4 (run_mp4) is H.264 in yuv420p, the video every slide program and browser plays; PyAV
(`pip install av`, FFmpeg's libraries in its wheel) encodes it. Without PyAV everything else here
still works and run_mp4 says how to get it.

The .npz holds plain arrays only (np.load(..., allow_pickle=False) reads it); its `README` entry
describes every array, so the file explains itself:

    data = np.load("run.npz")
    print(data["README"])
"""
from __future__ import annotations

import io
import math
import os
import secrets
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from . import figures
from .errors import ElsvizError
from .validate import as_int

SLIDE_TARGET = 320  # pixels on the larger side of each picture in a GIF: two pictures side by side fill a slide's half
VIDEO_TARGET = 480  # ... in a video: 16x16 digits at 30x (968 x 480), sharp on a projector
VIDEO_FPS = 50  # frames a second: the GIF's 220 ms a step and 1.5 s hold are whole numbers of frames
VIDEO_CODECS = ("libx264", "mpeg4")  # H.264 where the FFmpeg build encodes it (PyAV's wheels do), else MPEG-4 part 2

NPZ_README = """\
elsviz run: the reverse process of an ELS machine, every step (Kamb & Ganguli, ICML 2025; docs/THEORY.md).
S = steps - 1 recorded steps, B = batch, C = channels, H x W = output size. Images are in [-1, 1].
Axis 0 of the per-step arrays runs from the noisiest step (steps - 1) down to step 1.

README         this text
spec           the run in words (machine, k or schedule, steps, seed, size)
dataset        the training set's name
machine        "is", "ls", "els" or "bbels"
steps          the number of steps of the run
seed           the seed of the starting noise (-1 if none was given)
label          the class the run was conditioned on (-1 for none)
step           [S] int: the step i of each record (t = i / steps)
t              [S] float: the time of each record
k              [S] int: the window size used at that step (-1 where there is none: IS)
x              [S, B, C, H, W] float32: the noisy input x_t of each step
mean           [S, B, C, H, W] float32: the posterior mean (denoised estimate) of each step;
               mean[-1] is the output
final          [B, C, H, W] float32: the output (equal to mean[-1])
x_init         [B, C, H, W] float32: the starting noise
entropy        [S, B, H, W] float32: entropy in nats of each pixel's weights over the keys
               (how undecided it is; 0 = settled on one patch)
source_index   [S, B, H, W] int64: the training image of each pixel's heaviest key
source_pos     [S, B, H, W, 2] int64: (row, col) of that key's centre in its training image
source_weight  [S, B, H, W] float32: that key's weight
source_count   [S, B, H, W] int64: how many identical keys share the heaviest window;
               > 1 means "shared": no single source (flat background, say)
The provenance arrays (entropy, source_*) are absent for a denoiser without provenance (a network).
"""

_PROVENANCE = ("entropy", "source_index", "source_pos", "source_weight", "source_count")


def run_arrays(traj, *, spec=None, dataset: str = "") -> dict[str, np.ndarray]:
    """The arrays of a run (a Trajectory from sample()) as described in NPZ_README; spec: its RunSpec."""
    figures.check_run(traj, 0)
    frames = traj.frames

    def stack(name, dtype):
        return np.stack([getattr(f, name).detach().cpu().numpy() for f in frames]).astype(dtype)

    out = {
        "README": np.array(NPZ_README),
        "spec": np.array(spec.describe() if spec is not None else ""),
        "dataset": np.array(str(dataset)),
        "machine": np.array(getattr(spec, "machine", "") or getattr(traj.denoiser, "machine", "") or ""),
        "steps": np.array(int(traj.steps)),
        "seed": np.array(-1 if traj.seed is None else int(traj.seed)),
        "label": np.array(-1 if traj.label is None else int(traj.label)),
        "step": np.array([f.i for f in frames], dtype=np.int64),
        "t": np.array([f.t for f in frames], dtype=np.float64),
        "k": np.array([-1 if f.k is None else int(f.k) for f in frames], dtype=np.int64),
        "x": stack("x", np.float32),
        "mean": stack("mean", np.float32),
        "final": traj.final.detach().cpu().numpy().astype(np.float32),
        "x_init": traj.x_init.detach().cpu().numpy().astype(np.float32),
    }
    if out["machine"].item() == "is":
        out["k"][:] = -1  # IS compares whole images: no window
    if all(getattr(f, name) is not None for f in frames for name in _PROVENANCE):
        for name in _PROVENANCE:
            out[name] = stack(name, np.int64 if name in ("source_index", "source_pos", "source_count") else np.float32)
    return out


def npz_bytes(traj, *, spec=None, dataset: str = "") -> bytes:
    """The run as a compressed .npz file (bytes), with its README entry."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **run_arrays(traj, spec=spec, dataset=dataset))
    return buf.getvalue()


def run_gif(traj, *, target: int = SLIDE_TARGET) -> bytes:
    """The run as a looping GIF for slides: x_t beside the posterior mean, one frame per step, the output held."""
    return figures.animation_gif(traj, target=target)


def _av():
    """The PyAV module, or ElsvizError saying how to install it."""
    try:
        import av
    except ImportError as exc:
        raise ElsvizError("Saving the run as a video (MP4) needs PyAV, which brings FFmpeg's libraries: "
                          "`pip install av` (requirements.txt pins it). The GIF needs nothing more.") from exc
    return av


def video_codec() -> str:
    """The encoder run_mp4 uses: the first of VIDEO_CODECS this FFmpeg has; ElsvizError without PyAV."""
    av = _av()
    for name in VIDEO_CODECS:
        try:
            av.codec.Codec(name, "w")
        except ValueError:  # UnknownCodecError: not in this build
            continue
        return name
    raise ElsvizError(f"This FFmpeg (PyAV {av.__version__}) has no MP4 video encoder ({', '.join(VIDEO_CODECS)}); "
                      "pip install --force-reinstall av gets one with its wheel.")


def _even(picture: Image.Image) -> Image.Image:
    """The picture on the background, one pixel wider or taller where needed: yuv420p needs even sides."""
    w, h = picture.width + picture.width % 2, picture.height + picture.height % 2
    if (w, h) == picture.size:
        return picture
    out = Image.new("RGB", (w, h), figures.BACKGROUND_RGB)
    out.paste(picture, (0, 0))
    return out


def _held(pictures):
    """(picture, how many video frames it is shown): figures.FRAME_MS each, the last figures.HOLD_MS."""
    step, hold = (max(1, round(ms * VIDEO_FPS / 1000)) for ms in (figures.FRAME_MS, figures.HOLD_MS))
    previous = None
    for picture in pictures:
        if previous is not None:
            yield previous, step
        previous = picture
    yield previous, hold


def _video_stream(box, codec: str, size: tuple[int, int]):
    """An H.264 (or MPEG-4) stream of `size`: yuv420p, tagged BT.709 with video levels (players get the greys right)."""
    stream = box.add_stream(codec, rate=VIDEO_FPS)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    ctx = stream.codec_context
    ctx.color_range, ctx.colorspace, ctx.color_primaries, ctx.color_trc = 1, 1, 1, 1  # MPEG (16-235); BT.709 x 3
    if codec == "libx264":
        ctx.options = {"crf": "16", "preset": "fast"}  # flat squares: near-lossless costs little
    else:
        ctx.bit_rate = 4_000_000
    return stream


def run_mp4(traj, *, target: int = VIDEO_TARGET, batch: int = 0, path=None) -> bytes:
    """The run as an MP4 video for slides: the GIF's pictures (figures.animation_frames), larger and sharp.

    x_t beside the posterior mean, one picture per step from the noise to the output, each shown
    figures.FRAME_MS (at VIDEO_FPS, as repeated frames: constant frame rate, which every player takes) and
    the output held figures.HOLD_MS. Each picture is about `target` pixels on its larger side, every image
    pixel a sharp square (nearest neighbour). H.264, yuv420p, BT.709, even sides, the index at the front
    (movflags faststart) so a browser starts playing before the whole file is there.

    path: also write the file there, all or nothing (made as a hidden file beside it, renamed into place
    when whole, removed if anything fails). Returns the bytes. ElsvizError without PyAV.
    """
    _av()
    batch = figures.check_run(traj, batch)
    target = as_int("target", target, 1, figures.MAX_PICTURE, " (pixels on the larger side of each picture)")
    if path is None:  # the muxer writes a file (faststart moves the index to the front afterwards)
        with tempfile.TemporaryDirectory(prefix="elsviz-video-") as folder:
            file = Path(folder) / "run.mp4"
            _encode_mp4(traj, target, batch, file)
            return file.read_bytes()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial{path.suffix}")
    try:
        _encode_mp4(traj, target, batch, tmp)
        data = tmp.read_bytes()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return data


def _encode_mp4(traj, target: int, batch: int, file: Path) -> None:
    av, codec = _av(), video_codec()
    with av.open(str(file), mode="w", format="mp4", options={"movflags": "+faststart"}) as box:
        stream, pts = None, 0
        for picture, times in _held(figures.animation_frames(traj, target=target, batch=batch)):
            picture = _even(picture)
            if stream is None:
                stream = _video_stream(box, codec, picture.size)
            frame = av.VideoFrame.from_ndarray(np.asarray(picture.convert("RGB")), format="rgb24").reformat(
                format="yuv420p", dst_colorspace="itu709", dst_color_range="MPEG")
            for _ in range(times):  # a repeated frame costs a few bytes
                frame.pts, pts = pts, pts + 1
                box.mux(stream.encode(frame))
        box.mux(stream.encode(None))  # what the encoder still holds


def png_bytes(picture: Image.Image) -> bytes:
    """A PIL picture (from elsviz.figures) as PNG bytes: lossless, so pixel edges stay sharp."""
    if not isinstance(picture, Image.Image):
        raise ElsvizError(f"Expected a picture from elsviz.figures (a PIL image), got {type(picture).__name__}.")
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def provenance_png(traj, step: int | None = None, *, target: int = 640, mark=None) -> bytes:
    """The provenance picture of one step of a run (default: the last, the output) as PNG bytes."""
    frame = traj.frames[-1] if step is None else traj.frame(step)
    if frame.source_index is None:
        raise ElsvizError("This run has no provenance (a network's run, say): there is no picture of sources.")
    pic = figures.provenance_picture(frame.mean[0], frame.source_index[0], frame.source_pos[0],
                                     frame.source_count[0], target=target, mark=mark)
    return png_bytes(pic)


def max_entropy(machine: str, n_images: int, shape: tuple[int, int, int]) -> float:
    """log of the number of keys a pixel weighs at most: the top of a fixed entropy scale (nats).

    IS and LS weigh one key per training image; ELS and bbELS up to one per position of every image.
    """
    _, h, w = shape
    keys = n_images if machine in ("is", "ls") else n_images * h * w
    return math.log(max(int(keys), 2))


def download_name(what: str, ext: str, *, train=None, spec=None, step: int | None = None) -> str:
    """The file name of a download, the same for the same picture of the same run and different for
    any other: what it is, the training set (its name and number of images), the run (machine, k or
    schedule, steps, seed, class, output size) and the step shown, where there is one.

        download_name("lesson-mosaic", "png", train=digits, spec=RunSpec("bbels", "mnist-resnet", 20, 3))
        -> 'lesson-mosaic_digits-n1797_bbels-mnist-resnet-20steps-seed3.png'

    train: an ImageSet (or a set's name); spec: an elsviz.app.runs.RunSpec; a table of k per step is named
    by its range and a checksum of the whole table ('k3to15-table-5d1c0e2a').
    """
    parts = [_safe(what)]
    if train is not None:
        n = len(train) if hasattr(train, "__len__") and not isinstance(train, str) else None
        parts.append(_safe(getattr(train, "name", train)) + ("" if n is None else f"-n{n}"))
    if spec is not None:
        run = [_safe(spec.machine)]
        if spec.machine != "is":  # IS has no window: k changes nothing
            if isinstance(spec.k, tuple):
                table = zlib.crc32(",".join(map(str, spec.k)).encode())
                run.append(f"k{min(spec.k)}to{max(spec.k)}-table-{table:08x}")
            elif isinstance(spec.k, str):
                run.append(_safe(spec.k))
            else:
                run.append(f"k{spec.k}")
        run += [f"{spec.steps}steps", f"seed{spec.seed}"]
        if spec.label is not None:
            run.append(f"class{spec.label}")
        if spec.size is not None:
            run.append(f"{spec.size[0]}x{spec.size[1]}")
        parts.append("-".join(run))
    if step is not None:
        parts.append(f"step{int(step)}")
    return "_".join(p for p in parts if p) + "." + _safe(ext.lstrip("."))


def _safe(text) -> str:
    """Letters, digits and single hyphens: safe in a file name on every system."""
    keep = "".join(ch.lower() if ch.isascii() and ch.isalnum() else "-" for ch in str(text))
    return "-".join(p for p in keep.split("-") if p)[:60]


def slug(text: str) -> str:
    """A file-name-safe short form of a caption ('bbELS, k=5, 20 steps' -> 'bbels-k5-20steps')."""
    keep = "".join(ch.lower() if ch.isalnum() else "-" for ch in text.replace("=", "").replace(" steps", "steps"))
    return "-".join(p for p in keep.split("-") if p)[:80] or "elsviz"



# -- tables of numbers (the finger study, a network comparison) -------------------------------------
def _plain(value):
    """A value as JSON has it: NaN and infinities become null, tuples lists, numpy numbers Python ones."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_bytes(data) -> bytes:
    """data (dicts, lists, numbers, strings) as an indented UTF-8 JSON file; NaN written as null, which
    every JSON reader takes (NaN itself is not JSON)."""
    import json

    return (json.dumps(_plain(data), indent=1, allow_nan=False, ensure_ascii=False) + "\n").encode()


def csv_bytes(rows: list[dict]) -> bytes:
    """Rows (dicts, the first one's keys as the header, later keys appended) as a UTF-8 CSV file; a list
    value is written as its numbers joined by spaces, NaN as an empty cell."""
    import csv

    if not rows:
        raise ElsvizError("There are no rows to write: run the study or the comparison first.")
    header = list(dict.fromkeys(key for row in rows for key in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        plain = _plain(row)
        writer.writerow({k: " ".join(map(str, v)) if isinstance(v, list) else ("" if v is None else v)
                         for k, v in plain.items()})
    return buf.getvalue().encode()
