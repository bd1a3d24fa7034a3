"""Readers for datasets on disk: MNIST-style IDX, CIFAR-10 python batches, image folders, zips, .npz/.npy.

Each reader checks what it reads and raises ElsvizError naming the file and what to do. Nothing is
ever written: archives (zip, tar.gz) are read in memory, entry by entry, under caps on the
number of entries and their total uncompressed size.
"""
from __future__ import annotations

import gzip
import io
import pickle
import re
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import ElsvizError
from ..imageset import ImageSet
from ._common import Options, check_memory, choose, finish, fit, quantise

MNIST_NAMES = tuple(str(i) for i in range(10))
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MNIST_SOURCE = ("MNIST (Y. LeCun, C. Cortes, C. J. C. Burges), http://yann.lecun.com/exdb/mnist/; "
                "licence CC BY-SA 3.0.")
FASHION_SOURCE = ("Fashion-MNIST (H. Xiao, K. Rasul, R. Vollgraf, Zalando Research, 2017), "
                  "https://github.com/zalandoresearch/fashion-mnist; licence MIT.")
CIFAR10_SOURCE = ("CIFAR-10 (A. Krizhevsky, 2009, 'Learning Multiple Layers of Features from Tiny Images'), "
                  "https://www.cs.toronto.edu/~kriz/cifar.html.")
IDX_PREFIX = {"train": "train", "test": "t10k"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}


# -- small helpers -----------------------------------------------------------------------------
def check_split(split: str, where) -> str:
    if split not in ("train", "test"):
        raise ElsvizError(f"{where}: split must be 'train' or 'test', got {split!r}.")
    return split


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _read_exact(fh, n: int, path: Path, what: str) -> bytes:
    """Exactly n bytes, read in chunks (a corrupt header claiming terabytes allocates nothing)."""
    buf = bytearray()
    try:
        while len(buf) < n:
            block = fh.read(min(n - len(buf), 1 << 24))
            if not block:
                break
            buf += block
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ElsvizError(f"{path}: the file is corrupt or truncated ({exc}); download it again.") from exc
    if len(buf) != n:
        raise ElsvizError(
            f"{path}: the file is truncated: its {what} needs {n:,} bytes but only {len(buf):,} are there; "
            "download it again (elsviz fetch ...)."
        )
    return bytes(buf)


# -- IDX (MNIST, Fashion-MNIST) -----------------------------------------------------------------
def read_idx(path: Path, *, expect_ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (raw or gzipped), checked: magic number, header, exact length."""
    path = Path(path)
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rb") as fh:
        head = _read_exact(fh, 4, path, "header")
        if head[0] != 0 or head[1] != 0 or head[3] not in (1, 2, 3, 4):
            raise ElsvizError(
                f"{path}: wrong magic number 0x{head.hex()}: this is not an IDX file (MNIST images start with "
                "0x00000803, labels with 0x00000801). Check that you picked the right file."
            )
        if head[2] != 0x08:
            raise ElsvizError(f"{path}: IDX element type 0x{head[2]:02x} is not unsigned bytes (0x08); "
                              "only 8-bit IDX files are supported.")
        if head[3] != expect_ndim:
            kind = "an image file ([N, H, W], magic 0x00000803)" if expect_ndim == 3 else \
                "a label file ([N], magic 0x00000801)"
            raise ElsvizError(f"{path}: wrong magic number 0x{head.hex()}: expected {kind}. "
                              "Did you swap the images and labels files?")
        dims = struct.unpack(f">{expect_ndim}I", _read_exact(fh, 4 * expect_ndim, path, "header"))
        count = int(np.prod(dims, dtype=np.int64))
        data = _read_exact(fh, count, path, f"{'x'.join(map(str, dims))} values")
        try:
            extra = fh.read(1)
        except (OSError, EOFError, zlib.error) as exc:
            raise ElsvizError(f"{path}: the file is corrupt ({exc}); download it again.") from exc
        if extra:
            raise ElsvizError(f"{path}: the file is longer than its header says ({dims}); it is corrupt or not "
                              "an IDX file. Download it again.")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _idx_pair(path: Path, split: str) -> tuple[Path, Path | None]:
    """(images file, labels file or None) for a file or a folder holding the canonical names."""
    if path.is_dir():
        prefix = IDX_PREFIX[split]
        for suffix in ("", ".gz"):
            images = path / f"{prefix}-images-idx3-ubyte{suffix}"
            if images.is_file():
                break
        else:
            raise ElsvizError(f"{path}: no {prefix}-images-idx3-ubyte(.gz) in this folder; "
                              "give the images file itself, or fetch the set (elsviz fetch mnist).")
    else:
        images = path
    name = images.name
    if "images" not in name:
        return images, None
    stem = name.replace("images", "labels").replace("idx3", "idx1")
    for cand in (stem, stem.removesuffix(".gz"), stem + ".gz" if not stem.endswith(".gz") else stem):
        if (images.parent / cand).is_file():
            return images, images.parent / cand
    return images, None


def _guess_family(path: Path) -> str:
    text = str(path.resolve()).lower()
    return "fashion-mnist" if "fashion" in text else "mnist"


def load_idx(path: Path, opts: Options, *, split: str = "train", labels: str | Path | None = None,
             family: str | None = None) -> ImageSet:
    """MNIST / Fashion-MNIST IDX images (+ labels found beside them, or given by `labels=`)."""
    split = check_split(split, path)
    images_path, labels_path = _idx_pair(Path(path), split)
    if labels is not None:
        labels_path = Path(labels)
        if not labels_path.is_file():
            raise ElsvizError(f"{labels_path}: no such labels file.")
    images = read_idx(images_path, expect_ndim=3)  # [N, H, W]
    lab = None
    if labels_path is not None:
        lab = read_idx(labels_path, expect_ndim=1).astype(np.int64)  # [N]
        if len(lab) != len(images):
            raise ElsvizError(f"{labels_path}: {len(lab):,} labels for {len(images):,} images in {images_path}; "
                              "the two files do not belong together.")
    family = family or _guess_family(images_path)
    names = FASHION_NAMES if family == "fashion-mnist" else MNIST_NAMES
    if lab is not None and lab.max() >= len(names):
        names = tuple(str(i) for i in range(int(lab.max()) + 1))
    idx = choose(lab, len(images), opts, str(images_path), names if lab is not None else None)
    n, h, w = len(idx), images.shape[1], images.shape[2]
    size = opts.size or (h, w)
    check_memory(n, opts.channels or 1, *size, opts, str(images_path))
    source = FASHION_SOURCE if family == "fashion-mnist" else MNIST_SOURCE
    title = "Fashion-MNIST" if family == "fashion-mnist" else "MNIST"
    return finish(images[idx][:, None], None if lab is None else lab[idx], opts, where=str(images_path),
                  name=family, description=f"{title} {split} split: {n:,} grayscale {size[0]}x{size[1]} images"
                  + ("" if lab is not None else " (no labels file found)"),
                  source=source if family in ("mnist", "fashion-mnist") else str(images_path),
                  class_names=names if lab is not None else None, meta={"path": str(images_path)})


# -- CIFAR-10 python batches ----------------------------------------------------------------------
class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts of bytes, lists and numpy arrays) and nothing that runs code."""

    ALLOWED = {
        ("_codecs", "encode"), ("builtins", "bytearray"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        module = module.replace("numpy.core.", "numpy._core.") if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle is a corrupt or foreign file
        raise ElsvizError(f"{where}: not a readable CIFAR-10 python batch ({type(exc).__name__}: {exc}); "
                          "the file is corrupt or truncated: download it again (elsviz fetch cifar10).") from exc
    if not isinstance(obj, dict):
        raise ElsvizError(f"{where}: not a CIFAR-10 python batch (a {type(obj).__name__}, not a dict).")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch_arrays(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get("data"), batch.get("labels", batch.get("fine_labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise ElsvizError(f"{where}: 'data' must be uint8 [N, 3072] (32x32x3), found {type(data).__name__} "
                          f"{shape}; the file is corrupt or not a CIFAR-10 batch.")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise ElsvizError(f"{where}: {labels.size} labels for {data.shape[0]} images; the file is corrupt.")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_members(path: Path, opts: Options) -> tuple[dict[str, Callable[[], bytes]], str]:
    """{file name: reader} for a batches folder, its parent, a single batch file or the .tar.gz."""
    if path.is_dir():
        inner = path / "cifar-10-batches-py"
        folder = inner if inner.is_dir() else path
        return {p.name: p.read_bytes for p in folder.iterdir() if p.is_file()}, str(folder)
    if path.is_file() and tarfile.is_tarfile(path):
        try:
            members = {}
            total = 0
            with tarfile.open(path, "r:*") as tar:
                for m in tar.getmembers():
                    if not m.isfile():
                        continue
                    base = PurePosixPath(m.name).name
                    if not (base.startswith("data_batch_") or base in ("test_batch", "batches.meta")):
                        continue
                    total += m.size
                    if total > opts.max_total_bytes:
                        raise ElsvizError(f"{path}: the archive unpacks to more than max_total_bytes="
                                          f"{opts.max_total_bytes:,} bytes; refused. Raise max_total_bytes if "
                                          "you trust it.")
                    data = tar.extractfile(m).read()  # in memory: nothing is written to disk
                    members[base] = (lambda d=data: d)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise ElsvizError(f"{path}: the archive is corrupt or truncated ({exc}); download it again "
                              "(elsviz fetch cifar10).") from exc
        return members, str(path)
    return {path.name: path.read_bytes}, str(path.parent)


def load_cifar10(path: Path, opts: Options, *, split: str = "train") -> ImageSet:
    """CIFAR-10 python batches: the cifar-10-batches-py folder, the .tar.gz, or one batch file."""
    path = Path(path)
    split = check_split(split, path)
    members, where = _cifar_members(path, opts)
    if path.is_file() and not tarfile.is_tarfile(path):
        wanted = [path.name]
    elif split == "train":
        wanted = sorted((m for m in members if re.fullmatch(r"data_batch_\d+", m)), key=lambda m: int(m[11:]))
    else:
        wanted = [m for m in members if m == "test_batch"]
    if not wanted:
        raise ElsvizError(f"{where}: no CIFAR-10 {split} batches here (expected "
                          f"{'data_batch_1 .. data_batch_5' if split == 'train' else 'test_batch'}); point at the "
                          "cifar-10-batches-py folder or cifar-10-python.tar.gz.")
    parts = [_batch_arrays(_unpickle(members[m](), f"{where}/{m}"), f"{where}/{m}") for m in wanted]
    images = np.concatenate([p[0] for p in parts])  # [N, 3, 32, 32]
    labels = np.concatenate([p[1] for p in parts])  # [N]
    names = CIFAR10_NAMES
    if "batches.meta" in members:
        meta = _unpickle(members["batches.meta"](), f"{where}/batches.meta")
        raw = meta.get("label_names")
        if isinstance(raw, list) and raw:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw)
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise ElsvizError(f"{where}: labels outside 0..{len(names) - 1}; the batches are corrupt.")
    idx = choose(labels, len(images), opts, where, names)
    size = opts.size or (32, 32)
    return finish(images[idx], labels[idx], opts, where=where, name="cifar10",
                  description=f"CIFAR-10 {split} split: {len(idx):,} colour {size[0]}x{size[1]} images, "
                  f"{len(names)} classes", source=CIFAR10_SOURCE, class_names=names, meta={"path": str(path)})


# -- folders and zips of images ------------------------------------------------------------------
@dataclass
class _Entry:
    rel: PurePosixPath  # path inside the folder or zip
    open: Callable[[], io.BufferedIOBase]  # a fresh binary stream each call
    shown: str  # how to name it in messages


_READABLE = "PNG, JPEG, GIF, BMP, TIFF or WebP"
_REPR = re.compile(r"<[A-Za-z_][\w.]*(?: [^<>]*)?>")  # a Python object's repr: <_io.BufferedReader name='...'>


def _undecodable(entry: _Entry, exc: Exception) -> ElsvizError:
    """The message for an image Pillow cannot read: the file named as the user knows it, the reason in words
    (Pillow's own messages name the open file by its Python repr)."""
    if isinstance(exc, UnidentifiedImageError):
        why = f"its bytes are not a {_READABLE} image"
    else:
        why = " ".join(_REPR.sub("the file", str(exc)).split()) or type(exc).__name__
    return ElsvizError(f"{entry.shown}: this image does not decode ({why}); remove or replace the file.")


def _decode(entry: _Entry) -> Image.Image:
    try:
        with entry.open() as fh:
            im = Image.open(fh)
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _undecodable(entry, exc) from exc
    return im


def _header(entry: _Entry) -> tuple[tuple[int, int], bool]:
    """((height, width), is_gray) from the image header, without decoding the pixels."""
    try:
        with entry.open() as fh:
            im = Image.open(fh)
            gray = im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") or (
                im.mode == "P" and _palette_is_gray(im))
            return (im.height, im.width), gray
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _undecodable(entry, exc) from exc


def _palette_is_gray(im: Image.Image) -> bool:
    pal = im.getpalette() or []
    rgb = np.asarray(pal[: len(pal) // 3 * 3]).reshape(-1, 3)
    return bool(len(rgb)) and bool((rgb == rgb[:, :1]).all())


def _pixels(im: Image.Image, channels: int) -> np.ndarray:
    """Decoded image -> uint8 [channels, H, W]; transparency is composited onto black."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        a = a / 257.0 if a.max() > 255 else a
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if a.max() <= 1.0 else a
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if "A" in im.mode or "transparency" in im.info:
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im)
    arr = np.array(im.convert("L" if channels == 1 else "RGB"))  # a writable copy
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _organise(entries: list[_Entry], where: str, strip_wrapper: bool) -> tuple[list[_Entry], np.ndarray | None,
                                                                               list[str] | None]:
    """Images at the top level: unlabelled; in sub-folders: one class per top-level sub-folder."""
    if not entries:
        raise ElsvizError(f"{where}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}).")
    if strip_wrapper:  # a zip of a folder holds one wrapping folder: look inside it
        while all(len(e.rel.parts) > 1 for e in entries) and len({e.rel.parts[0] for e in entries}) == 1:
            entries = [_Entry(PurePosixPath(*e.rel.parts[1:]), e.open, e.shown) for e in entries]
    top = [e for e in entries if len(e.rel.parts) == 1]
    nested = [e for e in entries if len(e.rel.parts) > 1]
    if top and nested:
        raise ElsvizError(
            f"{where}: has images both at the top level (e.g. {top[0].rel}) and in class sub-folders "
            f"(e.g. {nested[0].rel}). Put every image in a sub-folder named after its class, or none."
        )
    entries = sorted(entries, key=lambda e: str(e.rel))
    if top:
        return entries, None, None
    names = sorted({e.rel.parts[0] for e in entries})
    labels = np.asarray([names.index(e.rel.parts[0]) for e in entries], dtype=np.int64)
    return entries, labels, names


def _is_image_name(rel: PurePosixPath) -> bool:
    if any(p.startswith(".") or p == "__MACOSX" for p in rel.parts):
        return False
    return rel.suffix.lower() in IMAGE_SUFFIXES


def _load_entries(entries: list[_Entry], opts: Options, *, where: str, name: str, strip_wrapper: bool,
                  source: str) -> ImageSet:
    if len(entries) > opts.max_files:
        raise ElsvizError(f"{where}: {len(entries):,} images, more than max_files={opts.max_files:,}; "
                          "raise max_files if you mean it.")
    entries, labels, names = _organise(entries, where, strip_wrapper)
    idx = choose(labels, len(entries), opts, where, names)
    chosen = [entries[i] for i in idx]
    heads = [_header(e) for e in chosen]  # [(size, gray)]
    if opts.size is None:
        sizes = {}
        for e, (hw, _) in zip(chosen, heads):
            sizes.setdefault(hw, e)
        if len(sizes) > 1:
            (s1, e1), (s2, e2) = list(sizes.items())[:2]
            raise ElsvizError(
                f"{where}: the images have different sizes ({e1.shown} is {s1[0]}x{s1[1]}, {e2.shown} is "
                f"{s2[0]}x{s2[1]}, {len(sizes)} sizes in all). Pass size=32 (or size=(H, W)) to resize them all."
            )
    size = opts.size or heads[0][0]
    channels = opts.channels or (1 if all(g for _, g in heads) else 3)
    check_memory(len(chosen), channels, *size, opts, where)
    out = np.empty((len(chosen), channels, *size), dtype=np.uint8)  # [N, C, H, W]
    for j, e in enumerate(chosen):
        pix = _pixels(_decode(e), channels)  # [C, h, w] uint8
        if pix.shape[1:] != tuple(size):
            t = torch.from_numpy(pix)[None].to(torch.float32)  # [1, C, h, w]
            pix = ((quantise(fit(t, size))[0] + 1.0) * 127.5).round().to(torch.uint8).numpy()
        out[j] = pix
    kind = f"{len(names)} classes" if names else "unlabelled"
    return finish(out, labels[idx] if labels is not None else None, opts, where=where, name=name,
                  description=f"{len(chosen):,} images from {where} ({kind}), {size[0]}x{size[1]}, "
                  f"{'grayscale' if channels == 1 else 'colour'}",
                  source=source, class_names=names, meta={"path": where})


def load_folder(path: Path, opts: Options) -> ImageSet:
    """A folder of images: one sub-folder per class (labelled), or images directly inside (unlabelled)."""
    path = Path(path)
    entries = []
    for p in sorted(path.rglob("*")):
        rel = PurePosixPath(*p.relative_to(path).parts)
        if p.is_file() and _is_image_name(rel):
            entries.append(_Entry(rel, (lambda p=p: open(p, "rb")), str(p)))
            if len(entries) > opts.max_files:
                break
    return _load_entries(entries, opts, where=str(path), name=path.name or "folder", strip_wrapper=False,
                         source=f"Images from the folder {path}.")


def load_image(path: Path, opts: Options) -> ImageSet:
    """One image file as a set of one (the ELS machines can draw on a single picture)."""
    path = Path(path)
    entry = _Entry(PurePosixPath(path.name), (lambda: open(path, "rb")), str(path))
    return _load_entries([entry], opts, where=str(path), name=path.stem, strip_wrapper=False,
                         source=f"The image {path}.")


def _unsafe_member(name: str) -> bool:
    """True for an absolute path, a drive letter or any '..' step: such an entry could write outside."""
    norm = name.replace("\\", "/")
    return norm.startswith("/") or bool(re.match(r"^[A-Za-z]:", norm)) or ".." in norm.split("/")


def load_zip(path: Path, opts: Options) -> ImageSet:
    """A .zip of an image folder, read in memory (nothing extracted), under max_files and max_total_bytes."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ElsvizError(f"{path}: not a readable zip file ({exc}); check the file or zip the folder again.") \
            from exc
    with zf:
        infos = zf.infolist()
        bad = [i.filename for i in infos if _unsafe_member(i.filename)]
        if bad:
            raise ElsvizError(f"{path}: refused: entry {bad[0]!r} has an absolute path or '..' and could write "
                              "outside its folder. Nothing was extracted; re-create the zip from inside the folder.")
        files = [i for i in infos if not i.is_dir()]
        if len(files) > opts.max_files:
            raise ElsvizError(f"{path}: refused: {len(files):,} entries, more than max_files={opts.max_files:,} "
                              "(a zip bomb guard). Raise max_files if you trust this zip.")
        total = sum(i.file_size for i in files)
        if total > opts.max_total_bytes:
            raise ElsvizError(f"{path}: refused: it unpacks to {total:,} bytes, more than max_total_bytes="
                              f"{opts.max_total_bytes:,} (a zip bomb guard). Raise max_total_bytes if you trust it.")

        def opener(info):
            def read():
                try:  # zipfile stops at the declared size and checks the CRC
                    return io.BytesIO(zf.read(info))
                except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as exc:
                    raise ElsvizError(f"{path}: entry {info.filename!r} is corrupt ({exc}); zip the folder "
                                      "again.") from exc
            return read

        entries = [_Entry(PurePosixPath(i.filename), opener(i), f"{path}:{i.filename}") for i in files
                   if _is_image_name(PurePosixPath(i.filename))]
        return _load_entries(entries, opts, where=str(path), name=path.stem, strip_wrapper=True,
                             source=f"Images from the zip {path}.")


# -- .npz / .npy arrays ------------------------------------------------------------------------------
IMAGE_KEYS = {"train": ("images", "x", "x_train", "X", "X_train", "data"), "test": ("images_test", "x_test", "X_test")}
LABEL_KEYS = {"train": ("labels", "y", "y_train", "Y", "Y_train", "targets"), "test": ("labels_test", "y_test",
                                                                                          "Y_test")}


def _npy_header(fh, where: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(fh)
    except Exception as exc:  # noqa: BLE001
        raise ElsvizError(f"{where}: not a readable .npy array ({exc}); save it again with numpy.save.") from exc
    return shape, dtype


def _layout(shape: tuple[int, ...], layout: str | None, where: str) -> str:
    if layout is not None:
        layout = layout.upper()
        want = {"NHW": 3, "NHWC": 4, "NCHW": 4}
        if layout not in want or len(shape) != want[layout]:
            raise ElsvizError(f"{where}: layout={layout!r} does not fit shape {shape}; use 'NHW', 'NHWC' or 'NCHW'.")
        return layout
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        raise ElsvizError(f"{where}: images must be [N, H, W], [N, H, W, C] or [N, C, H, W], got shape {shape}.")
    last, second = shape[3] in (1, 3, 4), shape[1] in (1, 3, 4)
    if last and not second:
        return "NHWC"
    if second and not last:
        return "NCHW"
    raise ElsvizError(f"{where}: cannot tell channels from shape {shape}; pass layout='NHWC' or layout='NCHW'.")


def _pixels_from_array(x: np.ndarray, layout: str, value_range, where: str) -> tuple[np.ndarray, str]:
    """Any accepted array -> ([N, C, H, W] uint8 or float32 in [-1, 1], what was inferred)."""
    if layout == "NHW":
        x = x[:, None]
    elif layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    if x.shape[1] == 4:
        x = x[:, :3]  # drop alpha
    if x.shape[1] not in (1, 3):
        raise ElsvizError(f"{where}: {x.shape[1]} channels; images need 1 (gray), 3 (RGB) or 4 (RGBA).")
    if x.dtype == np.bool_:
        return x.astype(np.uint8) * 255, "bool -> 0 / 255"
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise ElsvizError(f"value_range must be (low, high) with high > low, got {value_range!r}.")
        y = (x.astype(np.float32) - lo) / (hi - lo) * 2.0 - 1.0
        return np.clip(y, -1.0, 1.0), f"values mapped from [{lo:g}, {hi:g}]"
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ElsvizError(f"{where}: integer pixels must be 8-bit (0..255), found {lo}..{hi}. Convert them, "
                              "or pass value_range=(low, high).")
        return x.astype(np.uint8), "8-bit 0..255"
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ElsvizError(f"{where}: the images contain NaN or inf; clean them first.")
        lo, hi = float(x.min()), float(x.max())
        if lo >= 0.0 and hi <= 1.0:
            return x * 2.0 - 1.0, "float in [0, 1]"
        if lo >= -1.0 and hi <= 1.0:
            return x, "float in [-1, 1]"
        if lo >= 0.0 and hi <= 255.0:
            return x / 127.5 - 1.0, "float in [0, 255]"
        raise ElsvizError(f"{where}: float pixels in [{lo:.3g}, {hi:.3g}]; expected [0, 1], [-1, 1] or [0, 255]. "
                          "Rescale them, or pass value_range=(low, high).")
    raise ElsvizError(f"{where}: pixels of type {x.dtype} are not numbers; save uint8 or float images.")


def load_array(path: Path, opts: Options, *, split: str = "train", layout: str | None = None,
               value_range=None) -> ImageSet:
    """A .npy of images, or a .npz with images (+ labels, class_names) under the keys in docs/DATASETS.md."""
    path = Path(path)
    split = check_split(split, path)
    where = str(path)
    labels = class_names = None
    try:
        if path.suffix.lower() == ".npy":
            with open(path, "rb") as fh:
                shape, dtype = _npy_header(fh, where)
            key = None
        else:
            try:
                zf = zipfile.ZipFile(path)
            except zipfile.BadZipFile as exc:
                raise ElsvizError(f"{where}: not a readable .npz (zip) file; save it again with numpy.savez.") \
                    from exc
            with zf:
                keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
                key = next((k for k in IMAGE_KEYS[split] if k in keys), None)
                if key is None and len(keys) == 1 and split == "train":
                    key = keys[0]
                if key is None:
                    raise ElsvizError(f"{where}: no images array; expected one of the keys "
                                      f"{list(IMAGE_KEYS[split])}, found {keys}. Save it as np.savez(path, "
                                      "images=..., labels=...).")
                with zf.open(key + ".npy") as fh:
                    shape, dtype = _npy_header(fh, where)
                lab_key = next((k for k in LABEL_KEYS[split] if k in keys), None)
                has_names = "class_names" in keys
        if dtype.hasobject:
            raise ElsvizError(f"{where}: holds Python objects, which are not loaded (they could run code); "
                              "save plain numeric arrays with numpy.savez(path, images=..., labels=...).")
        kind = _layout(tuple(shape), layout, where)
        n = shape[0]
        h, w = (shape[1], shape[2]) if kind in ("NHW", "NHWC") else (shape[2], shape[3])
        c = 1 if kind == "NHW" else (shape[3] if kind == "NHWC" else shape[1])
        check_memory(min(n, opts.limit or n), opts.channels or (1 if c == 1 else 3), *(opts.size or (h, w)),
                     opts, where)
        if key is None:
            x = np.load(path, allow_pickle=False, mmap_mode="r")
        else:
            with np.load(path, allow_pickle=False) as z:
                x = z[key]
                if lab_key is not None:
                    labels = np.asarray(z[lab_key])
                if has_names:
                    class_names = [str(s) for s in np.asarray(z["class_names"]).tolist()]
    except ElsvizError:
        raise
    except ValueError as exc:  # object arrays: allow_pickle=False
        raise ElsvizError(f"{where}: holds Python objects or is damaged ({exc}); save plain numeric arrays "
                          "with numpy.savez(path, images=..., labels=...).") from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ElsvizError(f"{where}: the file is corrupt or truncated ({exc}); save it again.") from exc
    if labels is not None:
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.shape != (n,) or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
            raise ElsvizError(f"{where}: labels must be integers of shape [{n}], got {labels.dtype} {labels.shape}.")
        labels = labels.astype(np.int64)
        if labels.min() < 0:
            raise ElsvizError(f"{where}: labels must be non-negative class indices.")
    idx = choose(labels, n, opts, where, class_names)
    pixels, inferred = _pixels_from_array(np.asarray(x[idx]), kind, value_range, where)
    inferred = f"{inferred}, layout {kind}"
    size = opts.size or (h, w)
    return finish(pixels, None if labels is None else labels[idx], opts, where=where, name=path.stem,
                  description=f"{len(idx):,} images from {path.name}, {size[0]}x{size[1]} (read as {inferred})",
                  source=f"Arrays from {path}.", class_names=class_names,
                  meta={"path": where, "inferred": inferred})
