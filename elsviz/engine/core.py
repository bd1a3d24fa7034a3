"""The Engine: one score machine over one training set; checks a call, plans it, runs the plan's
steps and finishes the posterior (docs/ENGINE.md is the long description)."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ElsvizError
from ..imageset import ImageSet
from ..kernels import cpu as cpu_kernel
from ..machines import BY_KEY, MACHINES, THEORIES, TRAINING_SIZE_ONLY, check_k_fits, machine_options
from ..schedule import alpha_sigma, check_k, check_t
from ..validate import as_bool, as_choice, as_int, as_label, as_pixel
from . import explain as explaining
from . import paths, theories
from .cache import Cache, cpu_budget, gpu_cache_bytes
from .geometry import train_class, windows
from .keyset import KeySet
from .plan import Plan, Step, decide, kernel_for, piece_keys, table_bytes
from .softmax import Softmax, compiled_rows
from .tables import CHUNK, cpu_table, padded_images, torch_table
from .ties import distinct_keys, same_count, window_hash


@dataclass
class Posterior:
    """What a machine says about a noisy image x at time t. B = batch, H', W' = x's size.

    mean:          [B, C, H', W'] posterior mean = denoised estimate of x_0
    score:         [B, C, H', W'] -(x - a_t * mean) / b_t**2
    source_index:  [B, H', W'] int64, training image of the heaviest key of each pixel
    source_pos:    [B, H', W', 2] int64, (row, col) of that key's centre in its image
    source_weight: [B, H', W'] weight of that key (one key, not its identical copies)
    source_count:  [B, H', W'] int64, number of keys tied with it (identical windows); > 1: shared
    entropy:       [B, H', W'] entropy of the pixel's key weights, in nats
    """

    mean: torch.Tensor
    score: torch.Tensor
    source_index: torch.Tensor
    source_pos: torch.Tensor
    source_weight: torch.Tensor
    source_count: torch.Tensor
    entropy: torch.Tensor
    t: float
    k: int


def resolve_device(device) -> torch.device:
    """'auto' (or None): CUDA when present, else the CPU; else the named device, checked."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ElsvizError(f"Unknown device {device!r}: use 'auto', 'cpu' or 'cuda'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ElsvizError("device='cuda' was asked for but no CUDA GPU is available here; use device='cpu' or 'auto'.")
    if dev.type not in ("cpu", "cuda"):
        raise ElsvizError(f"Device {device!r} is not supported: use 'auto', 'cpu' or 'cuda'.")
    return dev


# wiener and pca hold a D x D covariance (D = C*H*W), its eigenvectors and a mask per t, and
# decompose it once per set: at D = 4,096 each matrix takes 134 MB in float64 and the
# eigendecomposition about a minute on two cores (torch.linalg.eigh, 2-core Xeon)
MAX_ENTRIES = 4096


class _KernelFailed(Exception):
    """The Triton kernel could not run: the call starts again on the torch path."""


class Engine:
    """One score machine over one training set.

        engine = Engine(train, machine="bbels", device="auto")
        post = engine.denoise(x, t, k)          # x [B, C, H', W']
        print(engine.plan(x, t, k))             # what that call does, and why

    cache_bytes bounds the cached key tables (default: on the CPU a sixteenth of the memory, 384 MB
    to 2 GB, shared by all CPU engines of the process that take the default; on a GPU 40% of its
    free memory); chunk_elems bounds each chunk of logits (the working memory is a few times
    chunk_elems floats).

    The rival theories take settings of their own (docs/THEORIES.md; None: the default):
    threshold (pca, 0.02), samples (cfdm, 10), sigma (cfdm, 0.1) and seed (cfdm, 0). A setting of
    another machine raises ElsvizError.
    """

    def __init__(self, train: ImageSet, machine: str = "bbels", device="auto", *,
                 cache_bytes: int | None = None, chunk_elems: int | None = None, compile: bool = False,
                 threshold: float | None = None, samples: int | None = None, sigma: float | None = None,
                 seed: int | None = None):
        if not isinstance(train, ImageSet):
            raise ElsvizError(f"Engine needs an ImageSet, got {type(train).__name__}; wrap your images in ImageSet(images, labels).")
        machine = as_choice("machine", machine, tuple(MACHINES))
        if device is not None and not isinstance(device, (str, torch.device)):
            raise ElsvizError(f"device must be 'auto', 'cpu', 'cuda' (or a torch.device), got {device!r}.")
        cache_bytes = None if cache_bytes is None else as_int("cache_bytes", cache_bytes, 0)
        chunk_elems = None if chunk_elems is None else as_int("chunk_elems", chunk_elems, 1)
        compile = as_bool("compile", compile)
        # the machine's own settings, complete (defaults filled in)
        self.options = machine_options(machine, {"threshold": threshold, "samples": samples, "sigma": sigma,
                                                 "seed": seed})
        if machine in ("wiener", "pca") and train.images[0].numel() > MAX_ENTRIES:
            c, h, w = train.images.shape[1:]
            raise ElsvizError(
                f"{BY_KEY[machine].name} needs the covariance of all {c * h * w:,} entries of the {c}x{h}x{w} images "
                f"(a {c * h * w:,} x {c * h * w:,} matrix and its eigendecomposition); it takes images of at most "
                f"{MAX_ENTRIES:,} entries (64x64 grey, 32x32 colour): load the set at a smaller size.")
        self.train = train
        self.machine = machine
        self.device = resolve_device(device)
        self.images = train.images.to(self.device)  # [N, C, H, W]
        shared = None
        if cache_bytes is None and self.device.type == "cpu":
            shared = cpu_budget()  # one for all such engines of the process
            cache_bytes = shared.max_bytes
        elif cache_bytes is None:
            cache_bytes = gpu_cache_bytes(self.device)
        self.chunk_elems = int(chunk_elems or (2**20 if self.device.type == "cpu" else 2**27))
        # queries per tile of the pruned path: small tiles prune more, large ones cost fewer calls
        self._tile = 32
        self._cache = Cache(int(cache_bytes), shared)
        # torch.compile fuses the per-chunk softmax statistics into one pass. Opt-in: on an H100 it
        # halves ELS on 60,000 images but slows bbELS (many small class shapes, recompiles), and on
        # the CPU it needs a C compiler and recompiles erratically (docs/BENCHMARKS.md)
        self.compile = bool(compile)
        self._kernels = kernel_for(self.device)  # the kernels this engine may use (ELSVIZ_KERNEL, read once)

    def clear_cache(self) -> None:
        """Forget the cached key tables, tie counts and plans (they are rebuilt when needed)."""
        self._cache.clear()

    def __repr__(self):
        n, c, h, w = self.images.shape
        return f"Engine(machine={self.machine!r}, device={str(self.device)!r}, train={self.train.name!r} [{n}, {c}, {h}, {w}])"

    def kernel(self, channels: int | None = None) -> str:
        """The kernel this engine's tables go through for images of `channels` channels (default:
        the training set's): 'triton' (the fused GPU kernel), 'cpu' (the compiled C++ kernel) or 'torch'."""
        c = self.images.shape[1] if channels is None else channels
        if "triton" in self._kernels:
            return "triton"
        if "cpu" in self._kernels and c in cpu_kernel.CHANNELS and cpu_kernel.library() is not None:
            return "cpu"
        return "torch"

    # -- checks ----------------------------------------------------------------------------------
    def _check(self, x, t, k, label):
        if not isinstance(x, torch.Tensor):
            raise ElsvizError(f"x must be a torch tensor [B, C, H, W], got {type(x).__name__}.")
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.numel() == 0 or x.is_complex():
            raise ElsvizError(f"x must be a real tensor of shape [B, C, H, W] with B, C, H, W >= 1, got "
                              f"{x.dtype} of shape {tuple(x.shape)}.")
        n, c, h, w = self.images.shape
        if x.shape[1] != c:
            raise ElsvizError(
                f"x has {x.shape[1]} channel(s) but the training set {self.train.name!r} has {c}; "
                f"make x [B, {c}, H, W]."
            )
        if not torch.isfinite(x).all():
            raise ElsvizError("x contains NaN or inf values; start from finite noise, e.g. torch.randn.")
        t = check_t(t)
        hq, wq = x.shape[-2:]
        k = check_k(k) if BY_KEY[self.machine].local else None
        if self.machine in TRAINING_SIZE_ONLY and (hq, wq) != (h, w):
            raise ElsvizError(
                f"The {BY_KEY[self.machine].name} machine only works at the training size {h}x{w}, got x of size "
                f"{hq}x{wq}; use ELS or bbELS for other output sizes."
            )
        if k is not None:
            check_k_fits(self.machine, k, (h, w), (hq, wq))
        subset = self._subset(label)
        return x.to(self.device, torch.float32), t, k, subset

    def _subset(self, label):
        """Indices of the training images in play, or None for all."""
        if label is None:
            return None
        idx = self.train.indices_for(as_label(label))
        return idx.to(self.device)

    def _images_of(self, label, subset):
        """The training images in play: all, or those of one label (cached per label)."""
        return self.images if subset is None else self._cache.get(("images", label), lambda: self.images[subset])

    # -- the plan: every decision of a call ------------------------------------------------------
    def plan(self, x: torch.Tensor, t: float = 0.5, k=None, label: int | None = None) -> Plan:
        """What denoise(x, t, k, label) does, per group of classes: path, kernel, table, and why.
        Printable, as a database's EXPLAIN (the path does not depend on t)."""
        x, t, k, subset = self._check(x, t, k, label)
        return self._plan(x, k, label, self._images_of(label, subset))

    def _plan(self, x, k, label, imgs) -> Plan:
        bsz, c, hq, wq = x.shape
        kernel = self.kernel(c)
        slice_batch = bsz if k is None else min(bsz, self._per_slice(hq, wq, c, k))
        key = ("plan", self.machine, k, label, hq, wq, bsz if bsz < 32 else 32, slice_batch if slice_batch < 32 else 32,
               kernel)
        return self._cache.get(key, lambda: decide(
            self.machine, k, (hq, wq), tuple(imgs.shape), bsz, slice_batch, x.device, kernel, self._cache.max_bytes,
            distinct=lambda index, pos: self._distinct(k, label, hq, wq, index, pos)[0].shape[0],
            options=self.options))

    def _per_slice(self, hq, wq, c, k) -> int:
        """Images per slice of the batch: the query windows of a slice hold about chunk_elems numbers."""
        return max(1, self.chunk_elems // (hq * wq * c * k * k))

    # -- the machine -----------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, x: torch.Tensor, t: float, k=None, label: int | None = None) -> Posterior:
        """Posterior mean and provenance of every pixel of x [B, C, H', W'] at time t, window k."""
        x, t, k, subset = self._check(x, t, k, label)
        a, b = alpha_sigma(t)
        imgs = self._images_of(label, subset)  # [N, C, H, W]
        if self.machine in THEORIES:
            return self._theory(self._plan(x, k, label, imgs).steps[0], x, a, b, t, k, imgs, subset, label)
        try:
            sm = self._run(self._plan(x, k, label, imgs), x, a, b, k, imgs, label)
        except _KernelFailed:  # stay exact: the whole call again, without the Triton kernel
            sm = self._run(self._plan(x, k, label, imgs), x, a, b, k, imgs, label)
        return self._finish(x, sm, a, b, t, k, subset, label)

    def _run(self, plan: Plan, x, a, b, k, imgs, label) -> Softmax:
        """The plan's steps over the batch, in slices whose query windows hold about chunk_elems
        numbers, so that working memory does not grow with the batch (only the per-pixel results do)."""
        if self.machine == "is":
            flat = imgs.flatten(1)  # [N, CHW]
            sq = self._cache.get(("is-sq", label), lambda: (flat * flat).sum(-1))  # [N]
            return paths.ideal(x, a, b, flat, sq, self.chunk_elems)
        bsz, c, hq, wq = x.shape
        rows = torch.arange(hq * wq, device=x.device) // wq
        cols = torch.arange(hq * wq, device=x.device) % wq
        sm = Softmax(bsz * hq * wq, c, x.device)
        per_slice = self._per_slice(hq, wq, c, k)
        for b0 in range(0, bsz, per_slice):
            qwin = windows(x[b0:b0 + per_slice], rows, cols, k, circular=self.machine == "els")  # [b, P, D]
            part = Softmax(qwin.shape[0] * hq * wq, c, x.device)
            for step in plan.steps:
                self._step(step, part, qwin, a, b, k, imgs, label, hq, wq)
            sm.put(b0 * hq * wq, part)
        return sm

    def _step(self, step: Step, sm, qwin, a, b, k, imgs, label, hq, wq) -> None:
        """One step of a plan: fetch (or build) what it reads, hand it to its path."""
        c1, c2 = a / (b * b), -a * a / (2 * b * b)
        if step.path == "embedded":
            centres = self._cache.get(("centres", label), lambda: imgs.flatten(2).permute(2, 1, 0).contiguous())  # [H*W, C, N]
            paths.embedded(sm, qwin, step, imgs, k, c1, c2, self._sq_windows(imgs, k, label), centres,
                           self.chunk_elems, self._rows)
        elif step.path == "pruned":
            paths.pruned(sm, qwin, step.pix[0], self._keyset(step, imgs, k, label, hq, wq), a, b, self._tile,
                         self.chunk_elems)
        elif step.kernel == "triton":
            self._table_triton(step, sm, qwin, c1, c2, imgs, k, label, hq, wq)
        elif step.kernel == "cpu":
            queries, q_idx = paths.queries_of(qwin, step, c1, c2)
            paths.table_cpu(sm, queries, q_idx, self._cpu_pieces(step, imgs, k, label, hq, wq))
        else:
            self._table_torch(step, sm, qwin, c1, c2, imgs, k, label, hq, wq)

    # -- what the steps read (cached) ---------------------------------------------------------------
    def _hashes(self, k, label) -> torch.Tensor:
        """Window hashes of the training images in play: [N, H, W] int64 (cached)."""
        return self._cache.get(("hash", k, label), lambda: window_hash(self._images_of(label, self._subset(label)), k))

    def _distinct(self, k, label, hq, wq, index, pos):
        """(rep [Kd], count [Kd]): the distinct windows among the keys at positions pos [S] (cached)."""
        _, _, h, w = self.images.shape
        return self._cache.get(("distinct", self.machine, k, label, hq, wq, index),
                               lambda: distinct_keys(self._hashes(k, label).flatten(1), pos, h * w))

    def _keyset(self, step: Step, imgs, k, label, hq, wq) -> KeySet:
        n, c, h, w = imgs.shape
        rep, count = self._distinct(k, label, hq, wq, step.index, step.pos[0])
        return self._cache.get(("keyset", self.machine, k, label, hq, wq, step.index, step.kernel),
                               lambda: KeySet.build(imgs, rep, count, k, kernel=step.kernel == "cpu"),
                               KeySet.bytes_needed(rep.shape[0], c * k * k, c))

    def _cpu_pieces(self, step: Step, imgs, k, label, hq, wq):
        """The group's tables for the compiled kernel: the whole table (cached), or pieces built now."""
        n, c, h, w = imgs.shape
        ng, s = step.pos.shape
        if step.table == "cached":
            size = table_bytes("cpu", ng, s * n, c * k * k, c)
            return [self._cache.get(("chunks", self.machine, k, label, hq, wq, step.index),
                                    lambda: cpu_table(imgs, step.pos, k), size)]
        piece = piece_keys(self._cache.max_bytes, table_bytes("cpu", ng, 1, c * k * k, c), CHUNK)
        padded = padded_images(imgs, k)  # once for all pieces
        return (cpu_table(imgs, step.pos, k, j0, min(j0 + piece, s * n), padded) for j0 in range(0, s * n, piece))

    def _table_torch(self, step: Step, sm, qwin, c1, c2, imgs, k, label, hq, wq) -> None:
        bsz, _, dim = qwin.shape
        n, c, h, w = imgs.shape
        ng, p = step.pix.shape
        s = step.pos.shape[1]
        queries, q_idx = paths.queries_of(qwin, step, c1, c2)
        # rows per tile and keys per chunk: the logits [G, rows, kc] and the keys [G, D, kc] of a
        # chunk each hold at most about chunk_elems numbers
        rt = min(bsz * p, max(p, self.chunk_elems // (32 * ng)))
        kc = max(32, self.chunk_elems // (ng * max(rt, dim)) // 32 * 32)
        if step.table == "cached":  # kept for the next call
            table = self._cache.get(("table", self.machine, k, label, hq, wq, step.index, kc),
                                    lambda: list(torch_table(imgs, step.pos, k, kc)),
                                    table_bytes("torch", ng, s * n, dim, c))
            chunks = lambda: table  # noqa: E731
        else:  # built chunk by chunk on every pass
            chunks = lambda: torch_table(imgs, step.pos, k, kc)  # noqa: E731
        paths.table_torch(sm, queries, q_idx, step.pos, chunks, n, h * w, rt, self._rows)

    def _table_triton(self, step: Step, sm, qwin, c1, c2, imgs, k, label, hq, wq) -> None:
        from ..kernels import triton as triton_kernel

        n, c, h, w = imgs.shape
        ng, s = step.pos.shape
        dim = c * k * k
        queries, q_idx = paths.queries_of(qwin, step, c1, c2)
        size = table_bytes("triton", ng, s * n, dim, c)
        distinct = None
        try:
            if step.table == "distinct":  # one key per distinct window, first occurrences in order
                keys, vals, logc, rep = self._cache.get(("dtable", self.machine, k, label, hq, wq, step.index),
                                                        lambda: self._distinct_table(imgs, step.pos[0], k, label), size)
                chunks, distinct = (lambda: [(keys, vals)]), (logc, rep)
            elif step.table == "cached":
                whole = self._cache.get(("ktable", self.machine, k, label, hq, wq, step.index),
                                        lambda: triton_kernel.key_table(padded_images(imgs, k), k, w, pos=step.pos), size)
                chunks = lambda: [whole]  # noqa: E731
            else:  # built piece by piece on every pass
                piece = piece_keys(self._cache.max_bytes, table_bytes("triton", ng, 1, dim, c), triton_kernel.BLOCK_K)
                padded = padded_images(imgs, k)
                chunks = lambda: (triton_kernel.key_table(padded, k, w, pos=step.pos, j0=j, j1=min(j + piece, s * n))  # noqa: E731
                                  for j in range(0, s * n, piece))
            rt = max(1, self.chunk_elems // (ng * dim))  # query rows per launch
            paths.table_triton(sm, queries, q_idx, step.pos, chunks, n, h * w, rt, distinct)
        except Exception as exc:  # no compiler, an unsupported GPU, a Triton bug: stay exact
            warnings.warn(f"elsviz: the Triton kernel failed ({type(exc).__name__}: {exc}); using the torch path.",
                          stacklevel=4)
            self._kernels = tuple(kn for kn in self._kernels if kn != "triton")
            raise _KernelFailed from exc

    def _distinct_table(self, imgs, pos, k, label):
        """The keys of one class [1, D + 1, Kd], one per distinct window, in the order of their first
        occurrence in the dense order (so the first key holding the max is the dense path's), their
        centres [1, C, Kd], log counts [1, Kd] (None where every window is distinct) and rep [Kd], the
        first key of each window (id image * H*W + position). c identical keys weigh c exp(l), so
        exp(l + log c) gives the same softmax over Kd keys instead of S*N; the max and its key come
        from l alone, as in the dense path."""
        from ..kernels import triton as triton_kernel

        n, c, h, w = imgs.shape
        rep, count = distinct_keys(self._hashes(k, label).flatten(1), pos, h * w, in_order=True)
        keys, vals = triton_kernel.key_table(padded_images(imgs, k), k, w, ids=rep)
        logc = count.to(keys.dtype).log().unsqueeze(0) if bool((count > 1).any()) else None
        return keys, vals, logc, rep

    def _sq_windows(self, imgs, k, label):
        """|K|^2 of the zero-padded k x k window at every position of every image, position-major:
        [H*W, N] (a key position's row is contiguous, so the embedded path gathers whole rows)."""
        def make():
            sq = (imgs * imgs).sum(1, keepdim=True)  # [N, 1, H, W]
            box = F.conv2d(sq, torch.ones(1, 1, k, k, device=imgs.device), padding=k // 2)  # [N, 1, H, W]
            return box.flatten(1).T.contiguous()

        return self._cache.get(("sq", k, label), make)

    def _rows(self, logits, vals, eager_values, grouped=None):
        """Per-row softmax statistics of a chunk (see Softmax.rows): by the compiled CPU kernel
        where it serves (grouped [G, C, n]: the values of each group of rows, see cpu_kernel.rows),
        fused when compiling, else torch's passes.

        vals [C, ...broadcastable to logits] for the fused path; eager_values(e) for the eager one.
        """
        if (grouped is not None and "cpu" in self._kernels
                and cpu_kernel.usable(flat := logits.view(-1, logits.shape[-1]), grouped)):
            m, s, acc, ent, arg = cpu_kernel.rows(flat, grouped)
            lead = logits.shape[:-1]
            return m.view(lead), s.view(lead), acc.view(*lead, -1), ent.view(lead), arg.view(lead)
        if self.compile:
            try:
                return compiled_rows()(logits, vals)
            except Exception as exc:  # no compiler, unsupported backend: stay exact, go eager
                warnings.warn(f"elsviz: torch.compile failed ({type(exc).__name__}: {exc}); using eager mode.")
                self.compile = False
        return Softmax.rows(logits, eager_values)

    # -- the posterior ---------------------------------------------------------------------------
    def _finish(self, x, sm: Softmax, a, b, t, k, subset, label) -> Posterior:
        bsz, c, hq, wq = x.shape
        n, _, h, w = self.images.shape
        entropy = (torch.log(sm.s) - sm.ent / sm.s).clamp(min=0.0)
        if self.machine == "is":
            # one weight per training image, shared by all pixels: [B] -> [B, H', W']
            mean = (sm.acc / sm.s.unsqueeze(-1)).reshape(bsz, c, h, w)
            per_pixel = lambda v: v.reshape(bsz, 1, 1).expand(bsz, hq, wq).contiguous()  # noqa: E731
            rows = torch.arange(hq, device=x.device).view(1, hq, 1).expand(bsz, hq, wq)
            cols = torch.arange(wq, device=x.device).view(1, 1, wq).expand(bsz, hq, wq)
            src_img, src_pos = per_pixel(sm.best), torch.stack([rows, cols], dim=-1)
            count = self._multiplicity(None, label)[sm.best]
            weight, count, entropy = per_pixel(1.0 / sm.s), per_pixel(count), per_pixel(entropy)
        else:
            mean = (sm.acc / sm.s.unsqueeze(-1)).reshape(bsz, hq, wq, c).permute(0, 3, 1, 2).contiguous()
            count = self._multiplicity(k, label).flatten()[sm.best].reshape(bsz, hq, wq)
            img, pos = sm.best // (h * w), sm.best % (h * w)
            src_img = img.reshape(bsz, hq, wq)
            src_pos = torch.stack([pos // w, pos % w], dim=-1).reshape(bsz, hq, wq, 2)
            weight = (1.0 / sm.s).reshape(bsz, hq, wq)
            entropy = entropy.reshape(bsz, hq, wq)
        if subset is not None:
            src_img = subset[src_img]
        score = -(x - a * mean) / (b * b)
        return Posterior(mean, score, src_img, src_pos, weight, count.to(torch.int64), entropy, t, k)

    def _multiplicity(self, k, label) -> torch.Tensor:
        """How many keys of the same class have exactly the window of each key: [N, H, W] int32
        (IS: [N], identical whole images). Computed once per (k, label) from window hashes."""
        def make():
            imgs = self._images_of(label, self._subset(label))
            if k is None:
                return same_count(window_hash(imgs, None), torch.zeros(1, dtype=torch.int64, device=imgs.device))
            n, _, h, w = imgs.shape
            return same_count(self._hashes(k, label), train_class(self.machine, k, h, w).to(imgs.device))

        return self._cache.get(("mult", self.machine, k, label), make)

    # -- the rival theories (engine/theories.py; docs/THEORIES.md) ---------------------------------
    def _theory(self, step: Step, x, a, b, t, k, imgs, subset, label) -> Posterior:
        """A rival theory's posterior: the step's path computes the mean, then provenance per pixel.

        nearest, cfdm: one training image per batch item, for every pixel (as IS); pca: per pixel the
        heaviest image of its entries' softmaxes (the channel with the heaviest one); pspc: per pixel
        the heaviest crop holding it, source_pos the crop's centre; wiener: no source (index and
        position -1, weight and entropy NaN, count 0). source_count: training images identical to the
        source (whole images; pspc: identical crops at the same place)."""
        bsz, c, h, w = x.shape
        flat = imgs.flatten(1)  # [N, D]
        rows = torch.arange(h, device=x.device).view(1, h, 1).expand(bsz, h, w)
        cols = torch.arange(w, device=x.device).view(1, 1, w).expand(bsz, h, w)
        here = torch.stack([rows, cols], dim=-1)  # [B, H, W, 2]: each pixel's own place
        per_pixel = lambda v: v.view(bsz, 1, 1).expand(bsz, h, w).contiguous()  # noqa: E731  [B] -> [B, H, W]
        if step.path == "wiener":
            mu, vals, _, vecs = self._gaussian(label, imgs)
            mean = theories.wiener(x, a, b, mu, vals, vecs)
            nan = torch.full((bsz, h, w), math.nan, device=x.device)
            none = torch.full((bsz, h, w), -1, dtype=torch.int64, device=x.device)
            return self._theory_posterior(x, mean, a, b, t, k, none, torch.full_like(here, -1), nan, none + 1, nan, None)
        mult = self._multiplicity(None, label)  # [N] identical whole images
        if step.path in ("nearest", "cfdm"):
            sq = self._cache.get(("is-sq", label), lambda: (flat * flat).sum(-1))  # [N]
            if step.path == "nearest":
                best = theories.nearest(x, a, flat, sq, self.chunk_elems)  # [B]
                mean, weight, entropy = imgs[best], torch.ones(bsz, device=x.device), torch.zeros(bsz, device=x.device)
            else:
                o = self.options
                eps = self._cache.get(("cfdm-eps", o["seed"], o["samples"], c, h, w),
                                      lambda: theories.perturbations(o["samples"], (c, h, w), o["seed"], x.device))
                mean, best, weight, entropy = theories.cfdm(x, a, b, flat, sq, eps, o["sigma"], self.chunk_elems)
                mean = mean.view(bsz, c, h, w)
            return self._theory_posterior(x, mean, a, b, t, k, per_pixel(best), here, per_pixel(weight),
                                          per_pixel(mult[best]), per_pixel(entropy), subset)
        if step.path == "pca":
            mask = self._cache.get(("pca-mask", label, t, self.options["threshold"]),
                                   lambda: theories.pca_mask(*self._gaussian(label, imgs)[1:3], a, b, self.options["threshold"]))
            sm = theories.pca(x, a, b, flat, mask, self.chunk_elems)  # rows (b, entry)
            mean = (sm.acc[:, 0] / sm.s).view(bsz, c, h, w)
            weight = (1.0 / sm.s).view(bsz, c, h, w)
            chan = weight.argmax(1, keepdim=True)  # [B, 1, H, W] the channel with the heaviest image (first on ties)
            pick = lambda v: torch.gather(v.reshape(bsz, c, h, w), 1, chan).squeeze(1)  # noqa: E731
            best = pick(sm.best)
            entropy = pick((torch.log(sm.s) - sm.ent / sm.s).clamp(min=0.0))
            return self._theory_posterior(x, mean, a, b, t, k, best, here, pick(weight), mult[best], entropy, subset)
        # pspc
        sq = self._cache.get(("pspc-sq", k, label), lambda: theories.crop_sq(imgs, k))  # [N, Hc, Wc]
        mean, best, weight, entropy, centre = theories.pspc(x, a, b, imgs, k, sq, self.chunk_elems)
        crops = self._cache.get(("mult", "ls", k, label), lambda: same_count(
            self._hashes(k, label), train_class("ls", k, h, w).to(imgs.device)))  # [N, H, W] identical crops, same place
        count = crops[best, centre[..., 0], centre[..., 1]]
        return self._theory_posterior(x, mean, a, b, t, k, best, centre, weight, count, entropy, subset)

    def _theory_posterior(self, x, mean, a, b, t, k, src_img, src_pos, weight, count, entropy, subset) -> Posterior:
        if subset is not None:
            src_img = subset[src_img]
        score = -(x - a * mean) / (b * b)
        return Posterior(mean, score, src_img, src_pos, weight, count.to(torch.int64), entropy, t, k)

    def _gaussian(self, label, imgs):
        """The Gaussian model of the images in play (cached per label): mean [D], eigenvalues [D]
        and eigenvectors [D, D] of the population covariance in float64 (pca's mask), and the
        eigenvectors in float32 (wiener's products)."""
        def make():
            mu, vals, vecs = theories.gaussian_model(imgs.flatten(1), self.chunk_elems)
            return mu, vals, vecs, vecs.float()

        dim = imgs[0].numel()
        return self._cache.get(("gaussian", label), make, dim * dim * 12)

    # -- explanation of one pixel -------------------------------------------------------------
    @torch.no_grad()
    def explain(self, x: torch.Tensor, t: float, k=None, pixel=(0, 0), top: int = 8, label: int | None = None) -> list[dict]:
        """The top keys of one pixel of x[0]: distinct windows, heaviest first.

        Each entry: image (training index), row, col (the key's centre), weight (of one key),
        count (identical keys sharing that weight), label, patch [C, k, k] (the key's window,
        zero-padded), logit. Identical windows are listed once with their count. Keys go in chunks
        of about chunk_elems numbers: memory stays bounded whatever the training set's size.
        """
        if self.machine in THEORIES:
            raise ElsvizError(
                f"explain lists the keys of IS, LS, ELS and bbELS; for {BY_KEY[self.machine].name} read the "
                "provenance of denoise(x, t, k): source_index, source_pos, source_weight and entropy per pixel"
                + (" (wiener has none: it copies nothing)." if self.machine == "wiener" else "."))
        x, t, k, subset = self._check(x, t, k, label)
        _, _, hq, wq = x.shape
        pixel = as_pixel(pixel, hq, wq)
        top = as_int("top", top, 1, 10_000, " (how many keys to list)")
        imgs = self._images_of(label, subset)
        if self.machine == "is":
            hashes = self._cache.get(("is-hash", label), lambda: window_hash(imgs, None))
        else:
            hashes = self._hashes(k, label)
        return explaining.top_keys(self.machine, x[:1], t, k, pixel, top, imgs, subset, self.train.labels,
                                   self.chunk_elems, hashes, self._multiplicity(k, label))
