"""Every decision about how a call runs, in one place: per group of classes, which path, which
kernel and which key table (docs/ENGINE.md, "Which path runs where"; `Engine.plan` prints it)."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch

from ..errors import ElsvizError
from ..kernels import cpu as cpu_kernel
from ..machines import THEORIES
from .geometry import classes

# Relative cost of reading one float of a key table, in multiply-adds; chooses between the table
# path and the embedded one. Tuned with elsviz.bench on torch's products. The compiled CPU kernel
# reads a table in chunks that stay in the processor's cache, far cheaper, where the table stays in
# the engine's cache (a KEPT_SHARE-th of it at most) and a call brings at least KERNEL_MIN_ROWS
# query rows per class to pay for building it: the default finger study 38.0-41.1 s -> 34.7-36.7 s
# with the lower cost; without the first condition the 2,000 photos at k = 17 took 107 s instead of
# 72-88 s, without the second the digits' first trajectory 1.7-1.8 s instead of 1.2-1.4 s
# (docs/ENGINE.md, "Two ways to get <Q, K>").
TABLE_READ_COST = 16.0
TABLE_READ_COST_KERNEL = 2.0
KEPT_SHARE = 4
KERNEL_MIN_ROWS = 32
# A class with at least PRUNE_MIN_LOGITS logits per step (query pixels x keys) takes the pruned path
# of distinct keys (keyset.py), where a call also brings at least PRUNE_MIN_WORK multiply-adds per
# key (images x the class's query pixels x window size). A KeySet's set-up costs about 1 us per key;
# a step costs each key about a nanosecond per 10-20 multiply-adds, and the KeySet saves a share of
# that. Measured: bbELS on one 16x16 digit brings at most 5,184 per key, and a first trajectory took
# 3.2 s through KeySets and 1.7 s through plain tables on one core; one hand at k = 7 brings 33,000
# per key and took 4.5 s against 7.1 s.
PRUNE_MIN_LOGITS = 2**21
PRUNE_MIN_WORK = 2**14
# A KeySet may take at most this share of the cache (else the plain table serves); a table that
# does not fit the cache is built in pieces of this share of it, merged piece after piece.
KEYSET_SHARE = 2
PIECE_SHARE = 8
# The Triton kernel reads the keys' windows from the training images itself (path "gather", no key
# table) where GATHER is on; off, it reads key tables (path "table"; gpu_check's "table" variant
# times the two). Tables had to be rebuilt in every 60,000-image trajectory (up to 133 GB for the
# seven k of mnist-resnet against a 56 GB cache): about 0.9 s of 3.2 s on an H200.
GATHER = True
# A group of one class gathers only its distinct windows (by key id, with log counts) where they are
# at most this share of its keys: listed ids cost a load per key and read the images less
# contiguously than the dense order. Not yet timed on a GPU (gpu_check's "dense" variant turns it off):
# a table of distinct keys gave hands (64% distinct at k = 7) 5.70 s -> 3.93 s on an H200, and the
# 60,000 MNIST-like images (47-100% distinct) 3.29 s -> 3.24 s.
GATHER_DISTINCT_SHARE = 0.75


@dataclass(frozen=True)
class Step:
    """One group of G classes of equal size (P query pixels and S key positions each) and how a call
    computes it. pix [G, P] query pixels (row * W' + col); pos [G, S] training positions (row * W + col).

    path:   ideal (whole images), embedded (<X_n, E(Q, s)>, no table), pruned (distinct keys in
            blocks with bounds), table (a key table and one product per chunk), gather (the Triton
            kernel reads each key's window from the images, no table); a rival theory's name
            (nearest, wiener, pca, pspc, cfdm: engine/theories.py, one way each)
    kernel: torch, cpu (the compiled C++ kernel) or triton (the fused GPU kernel)
    table:  none, cached (built once, kept), pieces (too large for the cache: built at every call,
            piece after piece), distinct (one key per distinct window, with its count)
    """

    index: int
    pix: torch.Tensor
    pos: torch.Tensor
    path: str
    kernel: str
    table: str
    why: str

    @property
    def classes(self) -> int:
        return self.pix.shape[0]

    def line(self) -> str:
        g, p = self.pix.shape
        return (f"{self.index:>3}  {g:>5} x {p:>5} px x {self.pos.shape[1]:>5} pos  "
                f"{self.path:<8} {self.kernel:<6} {self.table:<8} {self.why}")


@dataclass(frozen=True)
class Plan:
    """What one call of `Engine.denoise` does: its steps, one per class group, in order."""

    machine: str
    k: int | None
    batch: int
    keys: int  # training images in play
    steps: tuple[Step, ...]

    def __str__(self) -> str:
        head = (f"plan: {self.machine}, k = {self.k}, batch {self.batch}, {self.keys} training images, "
                f"{len(self.steps)} group(s)\n  #  classes   pixels    positions   path     kernel table    why")
        return "\n".join([head, *(s.line() for s in self.steps)])

    def paths(self) -> set[tuple[str, str]]:
        """The (path, kernel) pairs this call takes."""
        return {(s.path, s.kernel) for s in self.steps}


def table_bytes(kernel: str, classes_: int, keys: int, dim: int, c: int) -> int:
    """Bytes of a group's key table in the layout `kernel` reads: per key its window (dim), |K|^2 and
    its centre (c), plus for the kernels its id and log count."""
    extra = 1 + c if kernel == "torch" else 1 + c + 2
    return classes_ * keys * (dim + extra) * 4


def piece_keys(cache_bytes: int, bytes_per_key: int, multiple: int) -> int:
    """Keys per piece of a table too large for the cache: a PIECE_SHARE-th of the cache, a whole
    number of `multiple` keys."""
    return max(multiple, cache_bytes // PIECE_SHARE // max(bytes_per_key, 1) // multiple * multiple)


def decide(machine: str, k: int | None, query_hw: tuple[int, int], train_shape: tuple[int, int, int, int],
           batch: int, slice_batch: int, device: torch.device, kernel: str, cache_bytes: int,
           distinct=None, tensor_device=None, options: dict | None = None, gather: bool = True) -> Plan:
    """The plan of a call on `batch` images of size query_hw (in slices of slice_batch) against
    train_shape [N, C, H, W]. kernel: the engine's kernel for this call (torch, cpu, triton);
    distinct(index, pos) -> the number of distinct windows of a one-class group (asked only where
    the pruned path or a gather of distinct keys is a candidate; None: not asked, the keys taken
    as distinct). gather: whether the Triton kernel may gather windows (else it reads key tables).
    tensor_device: where the steps' index tensors go (default: device).
    options: the machine's own settings (machines.Option; cfdm's samples and sigma)."""
    from ..kernels import triton as triton_kernel

    n, c, h, w = train_shape
    on = device if tensor_device is None else tensor_device
    if machine in THEORIES:
        return Plan(machine, k, batch, n, (theory_step(machine, k, train_shape, on, options or {}),))
    if machine == "is":
        everything = torch.arange(h * w, device=on).view(1, -1)
        return Plan(machine, None, batch, n, (Step(0, everything, everything, "ideal", "torch", "none",
                                                   "whole images are the keys"),))
    hq, wq = query_hw
    sizes: dict[tuple[int, int], list] = {}
    for pix, pos in classes(machine, k, hq, wq, h, w):
        sizes.setdefault((len(pix), len(pos)), []).append((pix, pos))
    d_win, d_img = c * k * k, c * h * w
    kept = cache_bytes // KEPT_SHARE if kernel == "cpu" else 0
    many = min(batch, KERNEL_MIN_ROWS)
    steps = []
    for index, ((p, s), members) in enumerate(sorted(sizes.items())):
        pix = torch.tensor([m[0] for m in members], dtype=torch.int64, device=on)
        pos = torch.tensor([m[1] for m in members], dtype=torch.int64, device=on)
        ng = len(members)
        # per (training image, class): the table costs P*S*D multiply-adds + reading S*D floats of
        # key table; embedded costs P*S*(C*H*W) multiply-adds and needs no table
        cheap = many * p >= KERNEL_MIN_ROWS and ng * s * n * (d_win + 1 + c + 2) * 4 <= kept
        table_cost = p * s * d_win + (TABLE_READ_COST_KERNEL if cheap else TABLE_READ_COST) * s * d_win
        if p * s * d_img <= table_cost:
            steps.append(Step(index, pix, pos, "embedded", "torch", "none",
                              f"cheaper without a table: {p * s * d_img:.3g} <= {table_cost:.3g} multiply-adds per image"))
            continue
        if kernel == "triton" and gather and c in triton_kernel.CHANNELS:  # (others: key tables refuse them too)
            steps.append(_gather_step(index, pix, pos, n, distinct))
            continue
        steps.append(_table_step(index, pix, pos, k, n, c, slice_batch, device, kernel, cache_bytes, distinct))
    return Plan(machine, k, batch, n, tuple(steps))


def theory_step(machine: str, k: int | None, train_shape, on, options: dict) -> Step:
    """The one step of a rival theory (engine/theories.py): its path is its name, its work in
    multiply-adds per image of the batch."""
    n, c, h, w = train_shape
    dim = c * h * w
    everything = torch.arange(h * w, device=on).view(1, -1)
    if machine == "pspc":
        d, hc, wc = k // 2, h - k + 1, w - k + 1
        centres = torch.tensor([(u + d) * w + v + d for u in range(hc) for v in range(wc)], dtype=torch.int64,
                               device=on).view(1, -1)
        return Step(0, everything, centres, "pspc", "torch", "none",
                    f"{hc * wc} crops of {k}x{k}: box sums of x * X_i, two passes over {n} images "
                    f"(softmax statistics, then weights), about {2 * n * dim * (2 * k + 2):.3g} operations per image")
    if machine == "nearest":
        return Step(0, everything, everything, "nearest", "torch", "none",
                    f"whole images: one distance each, the closest kept ({n * dim:.3g} multiply-adds per image)")
    if machine == "wiener":
        return Step(0, everything, everything, "wiener", "torch", "cached",
                    f"the {dim} x {dim} covariance's eigendecomposition, once per set (cached); "
                    f"two products ({2 * dim * dim:.3g} multiply-adds per image)")
    if machine == "pca":
        return Step(0, everything, everything, "pca", "torch", "cached",
                    f"a {dim} x {dim} mask per t from the covariance's eigendecomposition (both cached); "
                    f"one softmax over {n} images per entry ({n * dim * dim:.3g} multiply-adds per image)")
    if machine == "cfdm":
        copies = 1 if options["sigma"] == 0 else options["samples"]
        return Step(0, everything, everything, "cfdm", "torch", "none",
                    f"{copies} perturbed cop{'y' if copies == 1 else 'ies'} against whole images, two passes "
                    f"(softmax statistics, then averaged weights; {2 * copies * n * dim:.3g} multiply-adds per image)")
    raise ValueError(machine)


def _gather_step(index, pix, pos, n, distinct) -> Step:
    """A group whose windows the Triton kernel gathers from the images: every key, or (a group of
    one class with enough repeated windows) one key per distinct window."""
    ng, s = pos.shape
    why = "windows gathered from the images inside the kernel, no key table"
    if ng == 1 and distinct is not None:
        kd = distinct(index, pos[0])
        if kd <= GATHER_DISTINCT_SHARE * s * n:
            return Step(index, pix, pos, "gather", "triton", "distinct",
                        f"{why}: {kd} distinct windows of {s * n} keys, by key id, with counts")
        why += f" ({kd} distinct windows of {s * n} keys: every key)"
    return Step(index, pix, pos, "gather", "triton", "none", why)


def _table_step(index, pix, pos, k, n, c, slice_batch, device, kernel, cache_bytes, distinct) -> Step:
    """How a group that takes a key table computes: pruned distinct keys, or a table whole or in pieces."""
    from .keyset import KeySet

    ng, p = pix.shape
    s = pos.shape[1]
    dim = c * k * k
    big = ng == 1 and p * s * n >= PRUNE_MIN_LOGITS
    no_bounds = ""
    if big and slice_batch * p * dim < PRUNE_MIN_WORK:
        no_bounds = f"; too little work per key for bounds ({slice_batch * p * dim} < {PRUNE_MIN_WORK})"
    elif big and (device.type != "cpu" or kernel == "triton"):
        no_bounds = "; on a GPU every key of a block is computed anyway"
    elif big:
        kd = distinct(index, pos[0])
        if KeySet.bytes_needed(kd, dim, c) <= cache_bytes // KEYSET_SHARE:
            return Step(index, pix, pos, "pruned", kernel, "distinct",
                        f"one class of {p * s * n:.3g} logits per image: {kd} distinct keys in blocks with bounds")
        no_bounds = f"; {kd} distinct keys would take more than 1/{KEYSET_SHARE} of the cache"
    size = table_bytes(kernel, ng, s * n, dim, c)
    if size > cache_bytes:
        return Step(index, pix, pos, "table", kernel, "pieces",
                    f"table of {size / 2**20:.0f} MB > cache {cache_bytes / 2**20:.0f} MB: built at every call{no_bounds}")
    if kernel == "triton" and ng == 1:
        return Step(index, pix, pos, "table", kernel, "distinct", f"one class: one key per distinct window{no_bounds}")
    return Step(index, pix, pos, "table", kernel, "cached", f"table of {size / 2**20:.1f} MB, kept in the cache{no_bounds}")


def kernel_for(device: torch.device) -> tuple[str, ...]:
    """The kernels an Engine on `device` may use, best first, as ELSVIZ_KERNEL says (read once, when
    the Engine is made): 'auto' (the default) takes the fused Triton kernel on a CUDA GPU where
    triton is installed and the compiled C++ kernel on the CPU; 'torch' neither; 'triton' the Triton
    kernel also on the CPU under TRITON_INTERPRET=1 (the tests). With the Triton kernel comes
    'gather' (its windows read from the images, not from key tables) where GATHER is on."""
    from ..kernels import triton as triton_kernel

    choice = os.environ.get("ELSVIZ_KERNEL", "auto").strip().lower() or "auto"
    if choice not in ("auto", "torch", "triton"):
        raise ElsvizError(f"ELSVIZ_KERNEL must be 'auto' (default: the compiled kernel on the CPU, the Triton "
                          f"kernel on a CUDA GPU where triton is installed), 'torch' or 'triton', got {choice!r}.")
    cpu = ("cpu",) if device.type == "cpu" and cpu_kernel.enabled() else ()
    if choice == "torch" or (choice == "auto" and device.type != "cuda"):
        return cpu
    gather = ("gather",) if GATHER else ()
    if choice == "auto":  # a CUDA GPU: the kernel where triton is there, quietly torch where not
        return ("triton", *gather) if triton_kernel.available() else ()
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        warnings.warn("elsviz: ELSVIZ_KERNEL=triton runs on CUDA devices only (or on the CPU under "
                      "TRITON_INTERPRET=1); using the torch path.", stacklevel=3)
        return cpu
    if not triton_kernel.available():
        warnings.warn("elsviz: ELSVIZ_KERNEL=triton but triton is not installed (pip install triton); "
                      "using the torch path.", stacklevel=3)
        return cpu
    return ("triton", *gather, *cpu)
