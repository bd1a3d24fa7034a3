"""The shard: one Ray actor that holds every S-th image of the training set and runs the ordinary
engine over them; it answers the driver's rounds with what merges exactly (elsviz/cluster/merge.py).

Shard i of S holds the images i, i + S, i + 2S, ... (its local image j is the set's image j * S + i,
in the same order), loaded where it runs (a dataset name or path) or sent by the driver. Keys leave a
shard as their place in the single engine's dense order (merge.order_of: position, then the set's
image index); windows as ties.window_keys (hash and class), which every shard computes alike.
Plain class: elsviz/cluster/engine.py makes it a Ray actor (ray.remote), so importing this module
needs no Ray.
"""
from __future__ import annotations

import functools
import os
import socket
import time

import torch

from ..engine import theories
from ..engine.ties import find_first
from ..errors import ElsvizError
from ..imageset import ImageSet
from ..schedule import alpha_sigma
from . import merge


def timed(method):
    """Count the seconds a shard's method computes (Shard.busy: the bench's per-shard time)."""
    @functools.wraps(method)
    def run(self, *args):
        start = time.perf_counter()
        try:
            return method(self, *args)
        finally:
            self.seconds += time.perf_counter() - start

    return run


def strided(n: int, index: int, shards: int) -> list[int]:
    """The set's images that shard `index` of `shards` holds."""
    return list(range(index, n, shards))


class Shard:
    """One shard's images and its engines (one per machine and settings, built on first use).

    kind "set": what is the ImageSet of the shard's images; "load": what is a dataset name or path
    and options load_dataset's options. engine_class: the single-device engine (elsviz.Engine).
    threads: torch's threads here."""

    def __init__(self, index: int, shards: int, kind: str, what, options, engine_class, threads: int):
        if threads:
            torch.set_num_threads(int(threads))
        if kind == "set":
            train = what
        else:
            from ..datasets import load_dataset

            full = load_dataset(what, **(options or {}))
            if len(full) <= index:
                raise ElsvizError(f"{what!r} has {len(full)} image(s): too few for shard {index} of {shards}; "
                                  f"ask for at most {len(full)} shards.")
            train = full.subset(strided(len(full), index, shards))
            del full
        if not isinstance(train, ImageSet):
            raise ElsvizError(f"A shard needs an ImageSet, got {type(train).__name__}.")
        self.index, self.shards, self.train = index, shards, train
        self.engine_class = engine_class
        self.engines: dict = {}
        self.threads = torch.get_num_threads()
        self.seconds = 0.0  # spent in the rounds' methods (timed)

    # -- where it runs, and its engines -----------------------------------------------------------
    def prepare(self, spec) -> dict:
        """Build the engine of spec now (a refused setting is refused when the Ray engine is made),
        and say where this shard runs."""
        eng = self._engine(spec)
        import ray

        labels = self.train.labels
        return {"index": self.index, "node": ray.get_runtime_context().get_node_id(),
                "host": socket.gethostname(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "device": str(eng.device), "kernel": eng.kernel(), "cache_bytes": eng.cache_bytes,
                "threads": self.threads, "images": len(self.train), "shape": tuple(self.train.shape),
                "labels": None if labels is None else labels.clone(), "name": self.train.name,
                "class_names": self.train.class_names, "description": self.train.description,
                "source": self.train.source}

    def _engine(self, spec):
        if spec not in self.engines:
            machine, options, cache_bytes, chunk_elems, compile = spec
            self.engines[spec] = self.engine_class(self.train, machine, "auto", cache_bytes=cache_bytes,
                                                   chunk_elems=chunk_elems, compile=compile, **dict(options))
        return self.engines[spec]

    def clear(self) -> None:
        for eng in self.engines.values():
            eng.clear_cache()

    def ping(self) -> int:
        return os.getpid()

    def busy(self) -> float:
        """Seconds this shard has computed in the rounds' methods since it started."""
        return self.seconds

    # -- indices ------------------------------------------------------------------------------------
    def _has(self, label) -> bool:
        """Whether this shard holds images of the label (None: any)."""
        return label is None or (self.train.labels is not None and bool((self.train.labels == label).any()))

    def _global(self, label, in_play: torch.Tensor) -> torch.Tensor:
        """Indices among the images in play (those of the label) -> the set's image indices."""
        local = in_play.cpu()
        if label is not None:
            local = self.train.indices_for(label)[local]
        return local * self.shards + self.index

    def _order(self, label, best: torch.Tensor, per_image: int) -> torch.Tensor:
        """Key ids (image in play * per_image + position) -> places in the dense order."""
        best = best.cpu()
        return merge.order_of(best % per_image, self._global(label, best // per_image))

    @staticmethod
    def _out(**values) -> dict:
        return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in values.items()}

    # -- IS, LS, ELS, bbELS ---------------------------------------------------------------------------
    @timed
    def stats(self, spec, x, t, k, label):
        """The softmax statistics over this shard's keys, with the window and the place of each
        row's heaviest key. None: no image of the label here."""
        if not self._has(label):
            return None
        eng = self._engine(spec)
        sm = eng.softmax(x, t, k, label)
        kk = None if eng.machine == "is" else k
        per = 1 if kk is None else int(eng.reads.images_of(label)[0, 0].numel())
        return self._out(m=sm.m, s=sm.s, acc=sm.acc, ent=sm.ent, key=eng.reads.window_keys(kk, label, ids=sm.best),
                         order=self._order(label, sm.best, per))

    @timed
    def ties(self, spec, k, label, kind, values):
        """For windows values [Q] (ties.window_keys of the machine `kind`; k None: whole images): the
        place of their first key here and how many keys here hold them (merge.ABSENT, 0: none)."""
        if not self._has(label):
            return None
        eng = self._engine(spec)
        n = eng.reads.images_of(label).shape[0]
        first, count = find_first(eng.reads.first_table(k, label, kind, repeated_only=False), values.to(eng.device))
        first = first.cpu()
        order = merge.order_of(first // n, self._global(label, (first % n).clamp(min=0)))
        return self._out(order=torch.where(first >= 0, order, merge.ABSENT), count=count)

    # -- the rival theories -----------------------------------------------------------------------------
    def _whole(self, spec, x, t, k, label):
        """The engine (x checked by it, as the single engine checks), x on its device, a, b, the
        images in play, flattened, and their |X|^2."""
        eng = self._engine(spec)
        eng.plan(x, t, k, label)  # the single engine's checks, and its messages
        a, b = alpha_sigma(t)
        imgs = eng.reads.images_of(label)
        flat = imgs.flatten(1)
        return eng, x.to(eng.device, torch.float32), a, b, imgs, flat, eng.reads.squares(label, flat)

    def check(self, spec, x, t, k, label) -> None:
        """Raise the single engine's ElsvizError for a call it refuses."""
        self._engine(spec).plan(x, t, k, label)

    @timed
    def nearest(self, spec, x, t, label):
        if not self._has(label):
            return None
        eng, x, a, b, imgs, _, sq = self._whole(spec, x, t, None, label)
        best, value = theories.nearest(x, a, imgs.flatten(1), sq, eng.chunk_elems)
        return self._out(value=value, order=self._global(label, best), key=eng.reads.window_keys(None, label, ids=best),
                         image=imgs[best])

    @timed
    def cfdm_norms(self, spec, x, t, label):
        if not self._has(label):
            return None
        eng, x, a, b, _, flat, sq = self._whole(spec, x, t, None, label)
        eps = theories.cfdm_noise(eng.reads.cache, eng.options, x)
        m, s = theories.cfdm_norms(x, a, b, flat, sq, eps, eng.options["sigma"], eng.chunk_elems)
        return self._out(m=m, s=s)

    @timed
    def cfdm_sums(self, spec, x, t, label, lse):
        if not self._has(label):
            return None
        eng, x, a, b, _, flat, sq = self._whole(spec, x, t, None, label)
        eps = theories.cfdm_noise(eng.reads.cache, eng.options, x)
        mean, best, weight, entropy = theories.cfdm(x, a, b, flat, sq, eps, eng.options["sigma"], eng.chunk_elems,
                                                    lse=lse.to(x.device))
        return self._out(mean=mean, weight=weight, entropy=entropy, order=self._global(label, best),
                         key=eng.reads.window_keys(None, label, ids=best))

    @timed
    def moments(self, spec, label):
        """(n, mu, M2) of the images in play, float64 (wiener's and pca's Gaussian model)."""
        if not self._has(label):
            return None
        eng = self._engine(spec)
        flat = eng.reads.images_of(label).flatten(1)
        mu, m2 = theories.moments(flat, eng.chunk_elems)
        return flat.shape[0], mu.cpu(), m2.cpu()

    @timed
    def pca(self, spec, x, t, label, mask):
        if not self._has(label):
            return None
        eng, x, a, b, _, flat, _ = self._whole(spec, x, t, None, label)
        sm = theories.pca(x, a, b, flat, mask.to(x.device), eng.chunk_elems)
        return self._out(m=sm.m, s=sm.s, acc=sm.acc, ent=sm.ent, order=self._global(label, sm.best),
                         key=eng.reads.window_keys(None, label, ids=sm.best))

    @timed
    def pspc_crops(self, spec, x, t, k, label):
        """pspc's pass 1 here: per crop m, s, ent, and the window (an "ls" key at the crop's centre)
        and place of its heaviest image."""
        if not self._has(label):
            return None
        eng, x, a, b, imgs, _, _ = self._whole(spec, x, t, k, label)
        sq = eng.reads.cache.get(("pspc-sq", k, label), lambda: theories.crop_sq(imgs, k))
        m, s, ent, best = theories.pspc_crops(x, a, b, imgs, k, sq, eng.chunk_elems)
        h, w = imgs.shape[-2:]
        hc, wc = m.shape[-2:]
        d = k // 2
        centre = ((torch.arange(hc, device=m.device).view(hc, 1) + d) * w
                  + torch.arange(wc, device=m.device).view(1, wc) + d)  # [Hc, Wc]
        key = eng.reads.window_keys(k, label, "ls", ids=best * (h * w) + centre)
        return self._out(m=m, s=s, ent=ent, key=key, order=self._global(label, best.flatten()).view(best.shape))

    @timed
    def pspc_sums(self, spec, x, t, k, label, m, s):
        if not self._has(label):
            return None
        eng, x, a, b, imgs, _, _ = self._whole(spec, x, t, k, label)
        sq = eng.reads.cache.get(("pspc-sq", k, label), lambda: theories.crop_sq(imgs, k))
        return theories.pspc_sums(x, a, b, imgs, k, sq, eng.chunk_elems, m.to(x.device), s.to(x.device)).cpu()
