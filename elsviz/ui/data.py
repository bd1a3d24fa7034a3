"""Training sets and engines for the app, cached per dataset (st.cache_resource).

A dataset is named by a hashable key: ("builtin", name, size, limit[, options]), ("path", path, mtime, size, limit)
or ("upload", sha256, size, limit); engines are cached per (key, machine).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import streamlit as st
import torch

from ..datasets import BUILTINS, DOWNLOADABLE, load_dataset
from ..engine import Engine
from ..errors import ElsvizError
from ..app.runs import app_threads
from ..cluster import ENV as RAY_ENV

MAX_UPLOAD_BYTES = 200 * 2**20  # Streamlit's own upload limit is 200 MB too
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
ARCHIVE_SUFFIXES = {".zip", ".npz", ".npy", ".gz", ".tar"}


# The app opens on real handwriting: MNIST, area-averaged to 16x16, a subset of 1,000 of its 5,000 digits
# (drawn with seed 0, about 100 of each). Measured on the 2-core CPU, one thread, a fresh engine, the default
# run (bbELS, schedule mnist-resnet, 20 steps, seed 0): 1,000 images 1.0-1.7 s, 1,500 1.5-1.9 s, 2,000
# 2.5-2.7 s, all 5,000 7.5-8.1 s (the 1,797 8x8 digits blown up to 16x16: 2.0-3.0 s, and a blur); seed 0
# gives a 2 with each of these subsets (docs/APP.md, "The first picture").
DEFAULT_SET = "mnist"
APP_SUBSETS = {"mnist": (16, 1000)}  # set -> (resize, limit) the sidebar starts from; others load as they are


def builtin_names() -> tuple[str, ...]:
    """The sets known by name, default first: the built-ins, then those `elsviz fetch` downloads."""
    return (DEFAULT_SET, *(n for n in BUILTINS if n != DEFAULT_SET), *DOWNLOADABLE)


def app_subset(name: str) -> tuple[int, int]:
    """(resize, limit) the sidebar shows when `name` is chosen (0 = as the set loads, all of it)."""
    return APP_SUBSETS.get(name, (0, 0))


def is_downloadable(name: str) -> bool:
    return name in DOWNLOADABLE


def _options(size: int | None, limit: int | None) -> dict:
    opts = {}
    if size:
        opts["size"] = int(size)
    if limit:
        opts["limit"], opts["seed"] = int(limit), 0
    return opts


@st.cache_resource(max_entries=6, show_spinner="Loading the training set ...")
def _load(source: str, size: int | None, limit: int | None, stamp=None, extra: tuple = ()):
    return load_dataset(source, **_options(size, limit), **{k: list(v) if isinstance(v, tuple) else v for k, v in extra})


def builtin(name: str, size: int | None = None, limit: int | None = None, fingers=None):
    """(key, ImageSet) of a built-in set; fingers (hands only): the counts to mix, e.g. (4, 5, 6).

    The key is ("builtin", name, size, limit), with (("fingers", counts),) appended for hands
    whose counts are not the default five.
    """
    extra = ()
    if name == "hands" and fingers and tuple(sorted(set(fingers))) != (5,):
        extra = (("fingers", tuple(sorted(set(int(f) for f in fingers)))),)
    return ("builtin", name, size, limit, *([extra] if extra else [])), _load(name, size, limit, None, extra)


def from_path(path: str, size: int | None = None, limit: int | None = None):
    """(key, ImageSet) of a local file or folder; the key changes when the file does."""
    p = Path(path).expanduser()
    if not str(path).strip():
        raise ElsvizError("Type the path of a folder of images, a .zip, an .npz/.npy file or MNIST/CIFAR files.")
    if not p.exists():
        raise ElsvizError(f"{p} does not exist on this machine. Check the path (it is read by the app's server).")
    stamp = p.stat().st_mtime_ns
    return ("path", str(p.resolve()), stamp, size, limit), _load(str(p.resolve()), size, limit, stamp)


def from_upload(files, size: int | None = None, limit: int | None = None):
    """(key, ImageSet) of uploaded files: several images, or one .zip / .npz / .npy.

    The bytes are written to a private temporary folder that load_dataset reads (it checks
    formats, sizes, zip bombs and paths); the key is the files' content hash.
    """
    files = list(files or [])
    if not files:
        raise ElsvizError("Choose some images, or one .zip / .npz file, to upload.")
    total = sum(f.size for f in files)
    if total > MAX_UPLOAD_BYTES:
        raise ElsvizError(f"The upload is {total / 2**20:.0f} MB; the app takes at most "
                          f"{MAX_UPLOAD_BYTES // 2**20} MB. Upload a subset, or load the files by local path.")
    suffixes = {Path(f.name).suffix.lower() for f in files}
    archives = suffixes & ARCHIVE_SUFFIXES
    if archives and len(files) > 1:
        raise ElsvizError("Upload either images or a single .zip / .npz / .npy file, not both or several archives.")
    if not archives and not suffixes <= IMAGE_SUFFIXES:
        bad = sorted(s or "(none)" for s in suffixes - IMAGE_SUFFIXES)
        raise ElsvizError(f"Files of type {', '.join(bad)} are not images. Upload .png or .jpg images, "
                          "a .zip of them, or an .npz / .npy array.")
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.name):
        digest.update(f.name.encode())
        digest.update(f.getvalue())
    sha = digest.hexdigest()
    return ("upload", sha, size, limit), _load_upload(sha, tuple(files), size, limit)


@st.cache_resource(max_entries=4, show_spinner="Reading the upload ...")
def _load_upload(sha: str, _files, size, limit):
    """Write the files to a temporary folder, load them, and remove the folder again.

    Images go into a folder called "upload" (the set's name); one archive keeps its own name.
    Messages and descriptions speak of the upload, not of the temporary folder.
    """
    with tempfile.TemporaryDirectory(prefix="elsviz-") as tmp:
        folder = Path(tmp) / "upload"
        folder.mkdir()
        for f in _files:
            (folder / Path(f.name).name).write_bytes(f.getvalue())
        single = len(_files) == 1 and Path(_files[0].name).suffix.lower() in ARCHIVE_SUFFIXES
        target = folder / Path(_files[0].name).name if single else folder
        hide = (f"{folder}/", f"{folder}")
        try:
            train = load_dataset(str(target), **_options(size, limit))
        except ElsvizError as err:
            raise ElsvizError(_speak_of_upload(str(err), hide)) from None
    return replace(train, description=_speak_of_upload(train.description, hide),
                   source=_speak_of_upload(train.source, hide) or "your upload")


def _speak_of_upload(text: str, paths: tuple[str, str]) -> str:
    """A loader's message about a temporary folder, rewritten for someone who uploaded files."""
    text = text.replace(paths[0], "").replace(paths[1], "the upload")
    if "size=" in text:
        text += " In the app: set *Resize to* under *Resize / subset* in the sidebar."
    return text


@st.cache_resource(max_entries=8, show_spinner="Building the engine ...")
def engine(dataset_key, machine: str, _train):
    """The Engine of a training set and machine (its key tables stay cached inside it); on the Ray
    cluster that $ELSVIZ_RAY_ADDRESS names, the set in shards (docs/SCALING.md), as `elsviz sample`."""
    _threads()
    address = os.environ.get(RAY_ENV, "").strip()
    if address:
        return Engine(_train, machine=machine, device="ray", address=address)
    return Engine(_train, machine=machine, device="auto")


@st.cache_resource(show_spinner=False)
def _threads() -> int:
    """Once per server: torch's threads as runs.app_threads says (a core left for the browser)."""
    n = app_threads(os.cpu_count(), os.environ)
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()
