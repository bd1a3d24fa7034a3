"""The Engine: one score machine over one training set; checks a call, plans it, runs the plan's
steps and finishes the posterior (docs/ENGINE.md is the long description)."""
from __future__ import annotations

import warnings

import torch

from ..errors import ElsvizError
from ..imageset import ImageSet
from ..kernels import cpu as cpu_kernel
from ..machines import BY_KEY, MACHINES, THEORIES, TRAINING_SIZE_ONLY, check_k_fits, machine_options
from ..schedule import alpha_sigma, check_k, check_t
from ..validate import as_bool, as_choice, as_int, as_label, as_pixel
from . import explain as explaining
from . import paths, theories
from .cache import Cache, cpu_budget, gpu_cache_bytes
from .geometry import windows
from .plan import Plan, Step, decide, kernel_for
from .posterior import Posterior, finish
from .reads import Reads
from .softmax import Softmax, compiled_rows
from .ties import window_hash


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

    device="ray" runs the machine on a Ray cluster, the training set split into shards
    (elsviz.cluster.RayEngine: shards=, address= and its other options; docs/SCALING.md).
    """

    def __new__(cls, *args, **kwargs):
        device = args[2] if len(args) > 2 else kwargs.get("device", "auto")
        if isinstance(device, str) and device == "ray":
            from ..cluster.engine import RayEngine  # only here: `import elsviz` never imports ray

            kwargs.pop("device", None)
            return RayEngine(*args[:2], *args[3:], engine_class=cls, **kwargs)
        for name in ("shards", "address"):
            if name in kwargs:
                raise ElsvizError(f"{name}= is a setting of the Ray engine: add device='ray' (pip install "
                                  f"elsviz[cluster]), or leave {name}= out.")
        return super().__new__(cls)

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
        self._reads = Reads(machine, self._cache, lambda label: self._images_of(label, self._subset(label)),
                            tuple(self.images.shape[-2:]), self.chunk_elems)
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

    @property
    def cache_bytes(self) -> int:
        """The bytes this engine's cache may hold (shared with other CPU engines that took the default)."""
        return self._cache.max_bytes

    def tie_counts(self, k=None, label: int | None = None) -> torch.Tensor:
        """How many keys of the same class have exactly the window of each key: [N, H, W] int32 over
        the training images in play (IS: [N], identical whole images). Cached, as denoise uses them."""
        return self._reads.multiplicity(None if self.machine == "is" else check_k(k), label)

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
        gather = "gather" in self._kernels
        key = ("plan", self.machine, k, label, hq, wq, bsz if bsz < 32 else 32, slice_batch if slice_batch < 32 else 32,
               kernel, gather)
        return self._cache.get(key, lambda: decide(
            self.machine, k, (hq, wq), tuple(imgs.shape), bsz, slice_batch, x.device, kernel, self._cache.max_bytes,
            distinct=lambda index, pos: self._reads.distinct(k, label, hq, wq, index, pos)[0].shape[0],
            options=self.options, gather=gather))

    def _per_slice(self, hq, wq, c, k) -> int:
        """Images per slice of the batch: the query windows of a slice hold about chunk_elems numbers."""
        return max(1, self.chunk_elems // (hq * wq * c * k * k))

    # -- the machine -----------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, x: torch.Tensor, t: float, k=None, label: int | None = None) -> Posterior:
        """Posterior mean and provenance of every pixel of x [B, C, H', W'] at time t, window k.
        Of identical keys holding the max, the first (by position, then image) is named."""
        x, t, k, subset = self._check(x, t, k, label)
        a, b = alpha_sigma(t)
        imgs = self._images_of(label, subset)  # [N, C, H, W]
        if self.machine in THEORIES:
            return theories.posterior(self._plan(x, k, label, imgs).steps[0], x, a, b, t, k, imgs, subset, label,
                                      self._reads, self.options, self.chunk_elems)
        sm = self._statistics(x, a, b, k, label, imgs)
        sm.best = self._reads.canonical(sm.best, k, label)
        return finish(self.machine, x, sm, a, b, t, k, subset, tuple(self.images.shape[-2:]),
                      self._reads.multiplicity(k, label))

    @torch.no_grad()
    def softmax(self, x: torch.Tensor, t: float, k=None, label: int | None = None) -> Softmax:
        """The streaming softmax statistics behind denoise (IS, LS, ELS, bbELS), one row per query
        pixel (IS: per image): m, s, acc, ent and best, the id of a key holding the max (image *
        H*W + position, IS: image, among the images of the label) as float32 rounded it. What a
        shard of the Ray engine sends back for merging (softmax.combine)."""
        if self.machine in THEORIES:
            raise ElsvizError(f"softmax() gives the statistics of IS, LS, ELS and bbELS; {BY_KEY[self.machine].name} "
                              "makes its posterior otherwise: call denoise.")
        x, t, k, subset = self._check(x, t, k, label)
        a, b = alpha_sigma(t)
        return self._statistics(x, a, b, k, label, self._images_of(label, subset))

    @property
    def reads(self) -> Reads:
        """What the engine's steps read, cached: window hashes, tie counts, the first of identical
        keys, |X|^2, the Gaussian model (the Ray engine's shards read them too)."""
        return self._reads

    def _statistics(self, x, a, b, k, label, imgs) -> Softmax:
        while True:  # a failing kernel is switched off and the whole call runs again: it stays exact
            try:
                return self._run(self._plan(x, k, label, imgs), x, a, b, k, imgs, label)
            except _KernelFailed:
                pass

    def _run(self, plan: Plan, x, a, b, k, imgs, label) -> Softmax:
        """The plan's steps over the batch, in slices whose query windows hold about chunk_elems
        numbers, so that working memory does not grow with the batch (only the per-pixel results do)."""
        if self.machine == "is":
            flat = imgs.flatten(1)  # [N, CHW]
            sq = self._reads.squares(label, flat)  # [N]
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
            paths.embedded(sm, qwin, step, imgs, k, c1, c2, self._reads.sq_windows(imgs, k, label),
                           self._reads.centres(label, imgs),
                           self.chunk_elems, self._rows)
        elif step.path == "pruned":
            paths.pruned(sm, qwin, step.pix[0], self._reads.keyset(step, imgs, k, label, hq, wq), a, b, self._tile,
                         self.chunk_elems)
        elif step.kernel == "triton":
            self._triton(step, sm, qwin, c1, c2, imgs, k, label, hq, wq)
        elif step.kernel == "cpu":
            queries, q_idx = paths.queries_of(qwin, step, c1, c2)
            paths.table_cpu(sm, queries, q_idx, self._reads.cpu_pieces(step, imgs, k, label, hq, wq))
        else:
            bsz, _, dim = qwin.shape
            ng, p = step.pix.shape
            # rows per tile and keys per chunk: the logits [G, rows, kc] and the keys [G, D, kc] of a
            # chunk each hold at most about chunk_elems numbers
            rt = min(bsz * p, max(p, self.chunk_elems // (32 * ng)))
            kc = max(32, self.chunk_elems // (ng * max(rt, dim)) // 32 * 32)
            queries, q_idx = paths.queries_of(qwin, step, c1, c2)
            paths.table_torch(sm, queries, q_idx, step.pos, self._reads.torch_chunks(step, imgs, k, label, hq, wq, kc),
                              imgs.shape[0], imgs.shape[-2] * imgs.shape[-1], rt, self._rows)

    def _triton(self, step: Step, sm, qwin, c1, c2, imgs, k, label, hq, wq) -> None:
        """A table or gather step through the Triton kernel; if it cannot run, one warning, it is
        switched off for this engine (the gather: then key tables serve) and the call starts again
        (_KernelFailed)."""
        try:
            queries, q_idx = paths.queries_of(qwin, step, c1, c2)
            rt = max(1, self.chunk_elems // (step.pix.shape[0] * qwin.shape[-1]))  # query rows per launch
            if step.path == "gather":
                layout, distinct = self._reads.gather_inputs(step, imgs, k, label, hq, wq)
                paths.gather_triton(sm, queries, q_idx, step.pos, layout, k, rt, distinct)
                return
            chunks, distinct = self._reads.triton_chunks(step, imgs, k, label, hq, wq)
            paths.table_triton(sm, queries, q_idx, step.pos, chunks, imgs.shape[0], imgs.shape[-2] * imgs.shape[-1],
                               rt, distinct)
        except Exception as exc:  # no compiler, an unsupported GPU, a Triton bug: stay exact
            off, then = ("gather", "key tables") if step.path == "gather" else ("triton", "the torch path")
            warnings.warn(f"elsviz: the Triton kernel failed ({type(exc).__name__}: {exc}); using {then}.",
                          stacklevel=4)
            self._kernels = tuple(kn for kn in self._kernels if kn != off)
            raise _KernelFailed from exc

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
            hashes = self._reads.hashes(k, label)
        return explaining.top_keys(self.machine, x[:1], t, k, pixel, top, imgs, subset, self.train.labels,
                                   self.chunk_elems, hashes, self._reads.multiplicity(k, label))
