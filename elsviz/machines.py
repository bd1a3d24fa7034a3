"""The machines' one vocabulary: names, display names, what each assumes, and which k each takes."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ElsvizError


@dataclass(frozen=True)
class Machine:
    key: str  # what the API, the CLI and links take
    name: str  # what pages and figures print
    summary: str  # one sentence: how a pixel is computed (API docs, `elsviz --help`)
    assumes: str  # one sentence for a reader: what the machine assumes and what follows
    local: bool  # takes a window size k


_ALL = (
    Machine("is", "IS",
            "Ideal score: the whole image is compared with whole training images; it can only reproduce them.",
            "Ideal score: assumes nothing about images, so it can only give back a whole training image "
            "(it memorises).", False),
    Machine("ls", "LS",
            "Local score: each pixel sees only its k x k neighbourhood, compared with the same place in every "
            "training image.",
            "Local score: each pixel sees only its k x k neighbourhood and copies from the same place in "
            "the training images.", True),
    Machine("els", "ELS",
            "Equivariant local score: each pixel's k x k neighbourhood is matched against every patch of every "
            "training image, wherever it lies.",
            "Equivariant local score: each pixel sees only its k x k neighbourhood and may copy a patch "
            "from anywhere in any training image (edges wrap around).", True),
    Machine("bbels", "bbELS",
            "Boundary-broken ELS: like ELS, but a patch at the border only matches patches at the same place "
            "relative to the border (zero padding).",
            "Boundary-broken ELS: like ELS, but a window that sticks out of the image border may only "
            "copy patches from the same border position, as zero-padded CNNs do.", True),
)
BY_KEY: dict[str, Machine] = {m.key: m for m in _ALL}

# the public mapping (elsviz.MACHINES): machine key -> what it computes
MACHINES: dict[str, str] = {m.key: m.summary for m in _ALL}
MACHINE_NAMES: dict[str, str] = {m.key: m.name for m in _ALL}
MACHINE_SENTENCES: dict[str, str] = {m.key: m.assumes for m in _ALL}


def odd_floor(v: int) -> int:
    """The largest odd number <= v."""
    return v if v % 2 else v - 1


def k_limit(machine: str, train_hw: tuple[int, int], out_hw: tuple[int, int] | None = None) -> int | None:
    """The largest k worth offering (odd): ELS needs windows inside the training images; bbELS at
    another size needs k no larger than either size; LS and bbELS at the training size take any k
    but change nothing beyond 2 * max(H, W) - 1 (every window then covers the image). IS: None."""
    h, w = train_hw
    out_hw = out_hw or train_hw
    if machine == "is":
        return None
    if machine == "els":
        lim = min(h, w)
    elif machine == "bbels" and tuple(out_hw) != tuple(train_hw):
        lim = min(h, w, *out_hw)
    else:
        lim = 2 * max(h, w) - 1
    return odd_floor(lim)


def check_k_fits(machine: str, k: int, train_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    """Raise ElsvizError where no k x k window of the output can be matched (the hard limits behind
    k_limit: ELS's windows must lie inside the training images; bbELS at another size must find
    every boundary pattern of the output in the training images)."""
    h, w = train_hw
    if machine == "els" and k > min(h, w):
        raise ElsvizError(
            f"ELS needs k <= {min(h, w)} (no {k}x{k} window lies inside the {h}x{w} training images); "
            f"pick an odd k <= {odd_floor(min(h, w))} or use bbELS."
        )
    if machine == "bbels":
        for name, q, tr in (("height", out_hw[0], h), ("width", out_hw[1], w)):
            if q != tr and k > min(q, tr):
                raise ElsvizError(
                    f"bbELS at an output {name} of {q} (training {tr}) needs k <= {min(q, tr)}, got k={k}: "
                    "some boundary patterns of the output occur nowhere in the training images. "
                    f"Pick an odd k <= {odd_floor(min(q, tr))} or the training size."
                )


def k_sweep(machine: str, train_hw: tuple[int, int], out_hw: tuple[int, int] | None = None) -> list[int]:
    """k = 1, 3, 5, ... up to the image size (the first odd k >= the output's larger side), within k_limit."""
    out_hw = out_hw or train_hw
    lim = k_limit(machine, train_hw, out_hw)
    top = max(out_hw) if max(out_hw) % 2 else max(out_hw) + 1
    if lim is not None:
        top = min(top, lim)
    return list(range(1, top + 1, 2))
