"""Download MNIST, Fashion-MNIST and CIFAR-10 from their canonical places, checksums verified.

Each file is streamed into a temporary file beside its final place, its size and SHA-256 are
checked, and only then is it renamed into place (an atomic rename). An interrupted or corrupt
download leaves no final file; leftovers of a killed run are removed when the next run starts,
and the next run downloads the file again from the start. Files already in place with the right
checksum are not downloaded again.

The table REMOTES is data: tests (and mirrors) swap the base URL and the checksums.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from ..errors import ElsvizError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    title: str
    base_url: str
    files: dict[str, tuple[int | None, str]]  # file name -> (size in bytes or None, sha256 hex)


# Sizes and SHA-256 sums of the canonical files (the same sums are published by torchvision,
# tensorflow-datasets and keras; MD5 sums, for reference: see docs/DATASETS.md).
REMOTES: dict[str, Remote] = {
    "mnist": Remote(
        "MNIST",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # PyTorch's mirror of yann.lecun.com/exdb/mnist
        {
            "train-images-idx3-ubyte.gz": (
                9_912_422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            "train-labels-idx1-ubyte.gz": (
                28_881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            "t10k-images-idx3-ubyte.gz": (
                1_648_877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            "t10k-labels-idx1-ubyte.gz": (
                4_542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        },
    ),
    "fashion-mnist": Remote(
        "Fashion-MNIST",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        {
            "train-images-idx3-ubyte.gz": (
                26_421_880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            "train-labels-idx1-ubyte.gz": (
                29_515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            "t10k-images-idx3-ubyte.gz": (
                4_422_102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            "t10k-labels-idx1-ubyte.gz": (
                5_148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        },
    ),
    "cifar10": Remote(
        "CIFAR-10",
        "https://www.cs.toronto.edu/~kriz/",
        {
            "cifar-10-python.tar.gz": (
                170_498_071, "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),
        },
    ),
}
ALIASES = {"mnist-full": "mnist",  # load_dataset's name for the fetched MNIST ("mnist" alone is the built-in subset)
           "fashion": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
           "cifar-10": "cifar10", "cifar": "cifar10"}


def canonical(name: str) -> str | None:
    """'mnist', 'fashion-mnist' or 'cifar10' for a name or alias (any case), else None."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in REMOTES else None


def default_data_dir() -> Path:
    """Where fetched sets live: $ELSVIZ_DATA, else ~/.cache/elsviz/datasets (or $XDG_CACHE_HOME/elsviz/datasets)."""
    if os.environ.get("ELSVIZ_DATA"):
        return Path(os.environ["ELSVIZ_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "elsviz" / "datasets"


def dataset_dir(name: str, data_dir: str | Path | None = None) -> Path:
    key = canonical(name)
    if key is None:
        raise ElsvizError(f"Unknown dataset {name!r} to fetch; choose one of {sorted(REMOTES)}.")
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise ElsvizError(f"data_dir must be a folder (a path), got {data_dir!r}.")
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir() / key


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, final: Path, size: int | None, sha256: str, timeout: float) -> None:
    """Stream url into a temporary file beside `final`, verify, then rename it into place."""
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest, got = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    announced = resp.headers.get("Content-Length")
                    while block := resp.read(CHUNK):
                        out.write(block)
                        digest.update(block)
                        got += len(block)
            except (urllib.error.URLError, HTTPException, OSError) as exc:
                raise ElsvizError(
                    f"Could not download {url} ({exc}). Check the connection (or --base-url) and run the "
                    "same command again: it starts that file over cleanly."
                ) from exc
        if announced is not None and got != int(announced):
            raise ElsvizError(f"The download of {url} was cut off after {got:,} of {int(announced):,} bytes; "
                              "run the same command again: it starts that file over cleanly.")
        if size is not None and got != size:
            raise ElsvizError(f"{url} gave {got:,} bytes, but {final.name} has {size:,}: the download is "
                              "incomplete or the server's file changed. Run the command again; nothing was kept.")
        if digest.hexdigest() != sha256:
            raise ElsvizError(f"{url}: checksum mismatch (sha256 {digest.hexdigest()}, expected {sha256}): the "
                              "download is corrupt. Nothing was kept; run the command again.")
        os.replace(tmp, final)  # atomic: the final name only ever holds a verified file
    finally:
        tmp.unlink(missing_ok=True)


def fetch(name: str, data_dir: str | Path | None = None, *, base_url: str | None = None,
          checksums: dict[str, str] | None = None, timeout: float = 60.0,
          progress: Callable[[str], None] | None = None) -> Path:
    """Download the canonical files of `name` ('mnist', 'fashion-mnist', 'cifar10') into a folder; return it.

    data_dir: the folder for this set's files (default: default_data_dir() / name, where
    load_dataset(name) looks). base_url: another server holding the same file names.
    checksums: {file name: sha256} to use instead of the built-in table (sizes are then not checked).
    """
    key = canonical(name)
    if key is None:
        raise ElsvizError(f"Unknown dataset {name!r} to fetch; choose one of {sorted(REMOTES)}.")
    remote = REMOTES[key]
    folder = dataset_dir(key, data_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ElsvizError(f"Cannot create the folder {folder} ({exc}); pick another with --dir.") from exc
    files = remote.files if checksums is None else {f: (None, checksums[f]) for f in checksums}
    base = (base_url or remote.base_url).rstrip("/") + "/"
    say = progress or (lambda msg: None)
    for filename, (size, sha256) in files.items():
        final = folder / filename
        for stale in folder.glob(f".{filename}.*.part"):  # left by a run that was killed
            stale.unlink(missing_ok=True)
        if final.is_file():
            if sha256_of(final) == sha256:
                say(f"{filename}: already there, checksum ok")
                continue
            say(f"{filename}: present but its checksum is wrong; downloading it again")
        say(f"{filename}: downloading{f' {size / 1e6:.1f} MB' if size else ''} from {base}")
        _download(base + filename, final, size, sha256, timeout)
        say(f"{filename}: ok (sha256 verified)")
    return folder
