"""What a plan's steps read, built once and kept in the engine's byte-bounded cache: window hashes,
tie counts, distinct keys, KeySets, key tables in each kernel's layout, |K|^2 maps, the Gaussian model."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import theories
from .cache import Cache
from .geometry import train_class
from .keyset import KeySet
from .plan import Step, piece_keys, table_bytes
from .tables import CHUNK, cpu_table, gather_layout, padded_images, torch_table
from .ties import distinct_keys, find_first, first_table, same_count, window_hash, window_keys


class Reads:
    """The cached inputs of one engine's steps. images_of(label) -> the training images in play."""

    def __init__(self, machine: str, cache: Cache, images_of, hw: tuple[int, int], chunk_elems: int):
        self.machine, self.cache, self.images_of, self.hw, self.chunk_elems = machine, cache, images_of, hw, chunk_elems

    def hashes(self, k, label) -> torch.Tensor:
        """Window hashes of the training images in play: [N, H, W] int64 (cached)."""
        return self.cache.get(("hash", k, label), lambda: window_hash(self.images_of(label), k))

    def distinct(self, k, label, hq, wq, index, pos):
        """(rep [Kd], count [Kd]): the distinct windows among the keys at positions pos [S] (cached)."""
        h, w = self.hw
        return self.cache.get(("distinct", self.machine, k, label, hq, wq, index),
                               lambda: distinct_keys(self.hashes(k, label).flatten(1), pos, h * w))

    def keyset(self, step: Step, imgs, k, label, hq, wq) -> KeySet:
        """The KeySet of a pruned step's class (distinct keys in blocks with bounds), built once."""
        n, c, h, w = imgs.shape
        rep, count = self.distinct(k, label, hq, wq, step.index, step.pos[0])
        return self.cache.get(("keyset", self.machine, k, label, hq, wq, step.index, step.kernel),
                               lambda: KeySet.build(imgs, rep, count, k, kernel=step.kernel == "cpu"),
                               KeySet.bytes_needed(rep.shape[0], c * k * k, c))

    def cpu_pieces(self, step: Step, imgs, k, label, hq, wq):
        """The group's tables for the compiled kernel: the whole table (cached), or pieces built now."""
        n, c, h, w = imgs.shape
        ng, s = step.pos.shape
        if step.table == "cached":
            size = table_bytes("cpu", ng, s * n, c * k * k, c)
            return [self.cache.get(("chunks", self.machine, k, label, hq, wq, step.index),
                                    lambda: cpu_table(imgs, step.pos, k), size)]
        piece = piece_keys(self.cache.max_bytes, table_bytes("cpu", ng, 1, c * k * k, c), CHUNK)
        padded = padded_images(imgs, k)  # once for all pieces
        return (cpu_table(imgs, step.pos, k, j0, min(j0 + piece, s * n), padded) for j0 in range(0, s * n, piece))

    def torch_chunks(self, step: Step, imgs, k, label, hq, wq, kc: int):
        """chunks() -> the step's key table for torch's products, kc keys a chunk: kept in the cache
        where the plan says so, else built chunk by chunk on every pass."""
        n, c, h, w = imgs.shape
        ng, s = step.pos.shape
        if step.table == "cached":
            table = self.cache.get(("table", self.machine, k, label, hq, wq, step.index, kc),
                                   lambda: list(torch_table(imgs, step.pos, k, kc)),
                                   table_bytes("torch", ng, s * n, c * k * k, c))
            return lambda: table
        return lambda: torch_table(imgs, step.pos, k, kc)

    def triton_chunks(self, step: Step, imgs, k, label, hq, wq):
        """(chunks(), distinct) of the step's key table for the Triton kernel: one key per distinct
        window with (log counts, rep) where the plan says "distinct", the whole table cached, or
        pieces built on every pass."""
        from ..kernels import triton as triton_kernel

        n, c, h, w = imgs.shape
        ng, s = step.pos.shape
        dim = c * k * k
        size = table_bytes("triton", ng, s * n, dim, c)
        if step.table == "distinct":  # one key per distinct window, first occurrences in order
            keys, vals, logc, rep = self.cache.get(("dtable", self.machine, k, label, hq, wq, step.index),
                                                   lambda: self._distinct_table(imgs, step.pos[0], k, label), size)
            return (lambda: [(keys, vals)]), (logc, rep)
        if step.table == "cached":
            whole = self.cache.get(("ktable", self.machine, k, label, hq, wq, step.index),
                                   lambda: triton_kernel.key_table(padded_images(imgs, k), k, w, pos=step.pos), size)
            return (lambda: [whole]), None
        piece = piece_keys(self.cache.max_bytes, table_bytes("triton", ng, 1, dim, c), triton_kernel.BLOCK_K)
        padded = padded_images(imgs, k)
        return (lambda: (triton_kernel.key_table(padded, k, w, pos=step.pos, j0=j, j1=min(j + piece, s * n))
                         for j in range(0, s * n, piece))), None

    def gather_inputs(self, step: Step, imgs, k, label, hq, wq):
        """(layout, distinct) of a gather step: the images padded and position-major with |K|^2 of
        every window (tables.gather_layout; one per k and label, shared by every class), and where
        the plan says "distinct" (log counts [1, Kd] or None, rep [Kd]) of the class's distinct
        windows in the order of their first occurrence."""
        n, c, h, w = imgs.shape
        size = ((h + k - 1) * (w + k - 1) * c + h * w) * n * 4
        layout = self.cache.get(("gather", k, label), lambda: gather_layout(imgs, k), size)
        if step.table != "distinct":
            return layout, None
        return layout, self.cache.get(("dids", self.machine, k, label, hq, wq, step.index),
                                      lambda: self._distinct_ids(imgs, step.pos[0], k, label))

    def _distinct_ids(self, imgs, pos, k, label):
        """(log counts [1, Kd] or None where every window is distinct, rep [Kd]): the distinct
        windows among the keys at positions pos [S], each named by its first key (id image * H*W +
        position), in the order of first occurrence in the dense order, so that the first key
        holding the max is the dense path's. c identical keys weigh c exp(l), so exp(l + log c) gives
        the same softmax over Kd keys instead of S*N; the max and its key come from l alone."""
        h, w = imgs.shape[-2:]
        rep, count = distinct_keys(self.hashes(k, label).flatten(1), pos, h * w, in_order=True)
        logc = count.float().log().unsqueeze(0) if bool((count > 1).any()) else None
        return logc, rep

    def _distinct_table(self, imgs, pos, k, label):
        """The keys of one class [1, D + 1, Kd], one per distinct window (_distinct_ids), their
        centres [1, C, Kd], log counts [1, Kd] or None, and rep [Kd]."""
        from ..kernels import triton as triton_kernel

        logc, rep = self._distinct_ids(imgs, pos, k, label)
        keys, vals = triton_kernel.key_table(padded_images(imgs, k), k, imgs.shape[-1], ids=rep)
        return keys, vals, logc, rep

    def sq_windows(self, imgs, k, label):
        """|K|^2 of the zero-padded k x k window at every position of every image, position-major:
        [H*W, N] (a key position's row is contiguous, so the embedded path gathers whole rows)."""
        def make():
            sq = (imgs * imgs).sum(1, keepdim=True)  # [N, 1, H, W]
            box = F.conv2d(sq, torch.ones(1, 1, k, k, device=imgs.device), padding=k // 2)  # [N, 1, H, W]
            return box.flatten(1).T.contiguous()

        return self.cache.get(("sq", k, label), make)

    def centres(self, label, imgs) -> torch.Tensor:
        """The training images' pixels, position-major: [H*W, C, N] (the embedded path's key centres)."""
        return self.cache.get(("centres", label), lambda: imgs.flatten(2).permute(2, 1, 0).contiguous())

    def squares(self, label, flat) -> torch.Tensor:
        """|X_n|^2 of the whole images in play [N] (IS and the theories that compare whole images)."""
        return self.cache.get(("is-sq", label), lambda: (flat * flat).sum(-1))

    def multiplicity(self, k, label, kind: str | None = None) -> torch.Tensor:
        """How many keys of the same class have exactly the window of each key: [N, H, W] int32
        (IS: [N], identical whole images). Computed once per (k, label) from window hashes.
        kind: the machine whose classes count (default this engine's; pspc counts "ls" crops)."""
        kind = kind or self.machine
        return self.cache.get(("mult", kind, k, label), lambda: same_count(*self._hashes_and_classes(k, label, kind)))

    def window_keys(self, k, label, kind: str | None = None, ids: torch.Tensor | None = None) -> torch.Tensor:
        """ties.window_keys of every key in play: [N, H, W] (k None: [N], whole images); of the keys
        ids (image * H*W + position; k None: image) alone where given."""
        hashes, klass = self._hashes_and_classes(k, label, kind or self.machine)
        if ids is None:
            return window_keys(hashes, klass)
        return window_keys(hashes.flatten()[ids], klass.flatten()[ids % klass.numel()])

    def _hashes_and_classes(self, k, label, kind):
        imgs = self.images_of(label)
        if k is None:
            return self.cache.get(("is-hash", label), lambda: window_hash(imgs, None)), \
                torch.zeros(1, dtype=torch.int64, device=imgs.device)
        n, _, h, w = imgs.shape
        return self.hashes(k, label), train_class(kind, k, h, w).to(imgs.device)

    def first_table(self, k, label, kind: str | None = None, repeated_only: bool = True):
        """ties.first_table of the keys in play, built once per (kind, k, label): of the windows that
        occur more than once (repeated_only), or of all (a Ray shard's, which counts them too)."""
        kind = kind or self.machine

        def make():
            keys = self.window_keys(k, label, kind)
            return first_table(keys, (self.multiplicity(k, label, kind) > 1).view(keys.shape) if repeated_only else None)

        return self.cache.get(("firsts", kind, k, label, repeated_only), make)

    def canonical(self, ids: torch.Tensor, k, label, kind: str | None = None) -> torch.Tensor:
        """Key ids (image * H*W + position; k None: image) -> the first key with the same window
        in the same class, in the dense order (position, then image). Which of several identical
        keys holds a float32 maximum depends on how the sums were rounded (chunks, kernels, shards);
        their first one does not."""
        mult = self.multiplicity(k, label, kind)
        n = mult.shape[0]
        per = mult[0].numel()  # positions per image
        repeated = mult.flatten()[ids] > 1
        if not bool(repeated.any()):
            return ids
        first, _ = find_first(self.first_table(k, label, kind), self.window_keys(k, label, kind, ids[repeated]))
        out = ids.clone()
        out[repeated] = (first % n) * per + first // n
        return out

    def gaussian(self, label, imgs):
        """The Gaussian model of the images in play (cached per label): mean [D], eigenvalues [D]
        and eigenvectors [D, D] of the population covariance in float64 (pca's mask), and the
        eigenvectors in float32 (wiener's products)."""
        def make():
            mu, vals, vecs = theories.gaussian_model(imgs.flatten(1), self.chunk_elems)
            return mu, vals, vecs, vecs.float()

        dim = imgs[0].numel()
        return self.cache.get(("gaussian", label), make, dim * dim * 12)
