"""The Ray engine: `Engine(train, machine, device="ray", shards=N)` (docs/SCALING.md).

The training set is split into shards held by Ray actors (elsviz/cluster/actors.py: one per GPU
where the cluster has GPUs, else one per CPU); each runs the ordinary engine on its images, and the
driver merges what they send back exactly (elsviz/cluster/merge.py): the same mean, the same source
and tie count as one engine over the whole set. A call is one to three rounds of remote calls, each
with a timeout; a shard whose worker dies is restarted by Ray and asked again.
"""
from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from pathlib import Path

import torch

from ..engine import theories
from ..engine.posterior import Posterior, assemble, make
from ..errors import ElsvizError
from ..imageset import ImageSet
from ..machines import BY_KEY, MACHINES, PAPER_MACHINES, machine_options
from ..schedule import alpha_sigma, check_k, check_t
from ..validate import as_bool, as_choice, as_float, as_int, as_label
from . import merge
from .actors import Shard, strided
from .connect import connect, current_address

TIMEOUT = 600.0  # seconds a remote call may take (a first call builds the shard's tables)
START_TIMEOUT = 180.0  # seconds for the shards to start: a worker imports torch, loads its images
PCA_MASKS = 64  # pca masks kept on the driver (one per step's t; a D x D float32 each)

_POOLS: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()


class ShardedSet:
    """The training set as the driver knows it when only the shards hold the images (a dataset
    name or path): its name, size, shape and labels, no pixels."""

    def __init__(self, infos: list[dict]):
        first = infos[0]
        self.name, self.description, self.source = first["name"], first["description"], first["source"]
        self.class_names = first["class_names"]
        self._len = sum(i["images"] for i in infos)
        self._shape = first["shape"]
        self.labels = None
        if first["labels"] is not None:
            self.labels = torch.empty(self._len, dtype=torch.int64)
            for i in infos:
                self.labels[i["index"]::len(infos)] = i["labels"]
        self.meta: dict = {}

    def __len__(self) -> int:
        return self._len

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self._shape)

    @property
    def channels(self) -> int:
        return self._shape[0]

    @property
    def classes(self) -> list[int]:
        return [] if self.labels is None else sorted(set(self.labels.tolist()))

    def class_name(self, label: int) -> str:
        if self.class_names is not None and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return str(label)

    def indices_for(self, label):
        return ImageSet.indices_for(self, label)

    @property
    def images(self):
        raise ElsvizError(f"The images of {self.name!r} stay on the cluster's shards (they were loaded there); "
                          "load the set here (load_dataset) where you need its pixels.")


class Pool:
    """The actors of one training set split S ways; shared by the Ray engines of every machine over
    that set (each actor keeps an engine per machine), and ended when the last of them goes. A shard
    whose worker dies is started again here, from the same images, and its call sent again."""

    def __init__(self, ray, train, shards, dataset_options, engine_class, cpus, gpus, restarts, start_timeout):
        self.ray = ray
        res, free = ray.cluster_resources(), ray.available_resources()
        cpu_total, gpu_total = float(res.get("CPU", 0)), float(res.get("GPU", 0))
        if shards is None:
            shards = int(gpu_total) if gpu_total >= 1 else max(1, int(cpu_total))
        if isinstance(train, ImageSet):
            shards = min(shards, len(train))
        if gpus is None:
            gpus = 0.0 if gpu_total < 1 else (1.0 if shards <= gpu_total else _share(gpu_total, shards))
        if cpus is None:  # the CPUs free now, shared out (other engines' shards may hold some): one
            # thread per whole CPU, fractions where shards outnumber them
            cpus = _share(min(cpu_total, float(free.get("CPU", 0))) if gpus == 0 else min(cpu_total, shards), shards)
        self.shards, self.cpus, self.gpus, self.restarts = shards, cpus, gpus, restarts
        self.actor = ray.remote(Shard).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0,
                                               scheduling_strategy="SPREAD")
        self.threads = max(1, int(cpus))
        self.engine_class = engine_class
        if isinstance(train, ImageSet):  # in Ray's object store, held here for shards started again
            self.sources = [("set", ray.put(train.subset(strided(len(train), i, shards))), None)
                            for i in range(shards)]
        else:
            self.sources = [("load", str(train), dict(dataset_options or {}))] * shards
        self.actors = [self._new(i) for i in range(shards)]
        self.infos: list[dict] = [{"index": i} for i in range(shards)]
        self.start_timeout = start_timeout
        self.specs: list = []  # the engines the shards hold: a shard started again builds them
        self.needs = (f"{cpus:g} CPU" + ("" if not gpus else f" and {gpus:g} GPU")) + " each"

    def _new(self, i: int):
        kind, what, options = self.sources[i]
        return self.actor.remote(i, self.shards, kind, what, options, self.engine_class, self.threads)

    def where(self, i: int) -> str:
        info = self.infos[i]
        at = f"Ray worker pid {info['pid']} on {info['ip']}" if "pid" in info else "a Ray worker not started yet"
        return f"shard {i} of {self.shards} ({at})"

    def calls(self, rounds: list[tuple[str, object, list[int] | None]], timeout: float) -> list[list]:
        """Remote calls, all sent before any is awaited: per round (method, args_of(i) -> args, shards
        or None for all); returns each round's answers in shard order. ElsvizError names the shard
        that failed, timed out, or died more often than `restarts`."""
        if not self.actors:
            raise ElsvizError("This Ray engine was closed; make it again.")
        sent = []
        for method, args_of, which in rounds:
            which = range(self.shards) if which is None else which
            sent.append((method, args_of, which, {i: getattr(self.actors[i], method).remote(*args_of(i))
                                                  for i in which}))
        deadline = time.monotonic() + timeout
        return [[self._get(i, refs[i], method, args_of, deadline, timeout) for i in which]
                for method, args_of, which, refs in sent]

    def _get(self, i, ref, method, args_of, deadline, timeout):
        ray, exc_ = self.ray, self.ray.exceptions
        deaths = 0
        while True:
            try:
                return ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except exc_.GetTimeoutError:
                ray.cancel(ref)
                raise ElsvizError(f"{self.where(i)} did not answer ({method}) within {timeout:g} s; nothing waits "
                                  "on it any more. Give a longer timeout= for slow calls, or see `ray status`.") from None
            except exc_.RayTaskError as exc:
                raise _error(exc, f"{self.where(i)} failed in {method}") from None
            except exc_.RayActorError as exc:
                if exc.actor_init_failed:
                    raise _error(exc, f"{self.where(i)} could not start") from None
                deaths += 1
                if deaths > self.restarts:
                    raise ElsvizError(f"{self.where(i)} died during {method} ({type(exc).__name__}) and was "
                                      f"started again {self.restarts} time(s) already; make the engine again.") from None
                self.restart(i, timeout)
                ref = getattr(self.actors[i], method).remote(*args_of(i))  # its part of the call, recomputed
                deadline = time.monotonic() + timeout

    def restart(self, i: int, timeout: float) -> None:
        """Start shard i again (a new worker, the same images) with the engines it held."""
        try:
            self.ray.kill(self.actors[i])
        except Exception:  # already gone
            pass
        self.actors[i] = self._new(i)
        self._wait([self.actors[i].ping.remote()])
        for spec in self.specs:
            self.infos[i] = self._get(i, self.actors[i].prepare.remote(spec), "prepare",
                                      lambda j, spec=spec: (spec,), time.monotonic() + timeout, timeout)

    def _wait(self, refs) -> None:
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=self.start_timeout)
        if len(ready) < len(refs):
            res = self.ray.cluster_resources()
            raise ElsvizError(f"The Ray cluster did not start {len(refs)} shard(s) ({self.needs}) within "
                              f"{self.start_timeout:g} s; it has {res.get('CPU', 0):g} CPUs and {res.get('GPU', 0):g} "
                              "GPUs in all (others' actors may hold some): ask for fewer shards=.")

    def prepare(self, spec, timeout: float) -> None:
        """Every shard builds the engine of spec (the first time: once it has started)."""
        if not self.specs:
            try:
                self._wait([a.ping.remote() for a in self.actors])
            except ElsvizError:
                self.close()
                raise
        if spec not in self.specs:
            self.specs.append(spec)
        self.infos = self.calls([("prepare", lambda i: (spec,), None)], timeout)[0]

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # already gone, or the cluster is: nothing left to end
                pass
        self.actors = []


def _error(exc, what: str) -> ElsvizError:
    """A remote failure as ElsvizError: the shard's own ElsvizError as it was raised, else what failed."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ElsvizError):
        return ElsvizError(str(cause))
    text = str(exc)
    for line in reversed(text.splitlines()):
        if "ElsvizError: " in line:
            return ElsvizError(line.split("ElsvizError: ", 1)[1].strip())
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return ElsvizError(f"{what}: {lines[-1].strip() if lines else type(exc).__name__}")


def _share(total: float, shards: int) -> float:
    """Resources per shard that Ray accepts (a whole number, or a fraction below 1 to 4 decimals; at
    least Ray's smallest unit, so that shards start even where nothing is free, sharing the CPUs)."""
    per = total / shards
    return float(int(per)) if per >= 1 else max(0.0001, int(per * 10_000) / 10_000)


class RayEngine:
    """One score machine over a training set split into shards on a Ray cluster; the surface of
    Engine that samplers use (denoise, train, machine, device, options), with the same results.

        engine = Engine(train, "bbels", device="ray", shards=2)
        post = engine.denoise(x, t, k)
        print(engine.describe())                                       # where it runs

    train: an ImageSet (its shards are sent from here), or a dataset name or path that every shard
    loads where it runs (dataset_options: load_dataset's options), so the driver never holds the
    images. address: the cluster (default $ELSVIZ_RAY_ADDRESS, else $RAY_ADDRESS, else a new local
    one; 'local' forces a new one, 'auto' the one started on this machine). shards: default one per
    GPU of the cluster, else one per CPU. cpus_per_shard, gpus_per_shard: Ray resources of each
    shard (default: the free ones, shared out). timeout: seconds any remote call may take (then
    ElsvizError); restarts: how often a shard whose worker died is started again within one call
    (its part of the call is then recomputed; past that, ElsvizError naming it). start_timeout:
    seconds for the shards to start.
    cache_bytes, chunk_elems, compile and the machines' own settings go to each shard's engine.
    """

    def __init__(self, train, machine: str = "bbels", *, engine_class=None, shards: int | None = None,
                 address: str | None = None, dataset_options: dict | None = None, timeout: float = TIMEOUT,
                 start_timeout: float = START_TIMEOUT, restarts: int = 1, cpus_per_shard: float | None = None,
                 gpus_per_shard: float | None = None, cache_bytes: int | None = None, chunk_elems: int | None = None,
                 compile: bool = False, threshold: float | None = None, samples: int | None = None,
                 sigma: float | None = None, seed: int | None = None):
        if not isinstance(train, (ImageSet, str, Path)):
            raise ElsvizError(f"The Ray engine needs an ImageSet, or a dataset name or path its shards load; got "
                              f"{type(train).__name__}.")
        if engine_class is None:  # the single-device engine the shards run: Engine passes itself
            raise ElsvizError("Make the Ray engine with elsviz.Engine(train, machine, device='ray', shards=...).")
        self.machine = as_choice("machine", machine, tuple(MACHINES))
        self.options = machine_options(self.machine, {"threshold": threshold, "samples": samples, "sigma": sigma,
                                                      "seed": seed})
        shards = None if shards is None else as_int("shards", shards, 1, 4096)
        self.timeout = as_float("timeout", timeout, 1.0, 7 * 24 * 3600.0)
        start_timeout = as_float("start_timeout", start_timeout, 1.0, 24 * 3600.0)
        restarts = as_int("restarts", restarts, 0, 100)
        cpus = None if cpus_per_shard is None else as_float("cpus_per_shard", cpus_per_shard, 0.0, 4096.0)
        gpus = None if gpus_per_shard is None else as_float("gpus_per_shard", gpus_per_shard, 0.0, 64.0)
        cache_bytes = None if cache_bytes is None else as_int("cache_bytes", cache_bytes, 0)
        self.chunk_elems = None if chunk_elems is None else as_int("chunk_elems", chunk_elems, 1)
        self._spec = (self.machine, tuple(sorted(self.options.items())), cache_bytes, self.chunk_elems,
                      as_bool("compile", compile))
        ray = connect(address)
        self.address = current_address()
        source = train if isinstance(train, ImageSet) else str(train)
        key = (self.address, id(train) if isinstance(train, ImageSet) else source,
               repr(sorted((dataset_options or {}).items())), shards, cpus, gpus, restarts, engine_class)
        pool = _POOLS.get(key)
        if pool is None or not pool.actors:
            pool = Pool(ray, source, shards, dataset_options, engine_class, cpus, gpus, restarts, start_timeout)
            _POOLS[key] = pool
        pool.prepare(self._spec, self.timeout)
        self._pool = pool
        self._engine_class = engine_class
        self.train = train if isinstance(train, ImageSet) else ShardedSet(pool.infos)
        self.device = torch.device("cpu")  # where x and the Posterior live: the driver
        self.shards = pool.shards
        self.shard_threads = pool.threads  # (the estimates: app.runs.workload)
        self._gaussian: dict = {}  # label -> the Gaussian model (wiener, pca), merged from the shards' moments
        self._masks: OrderedDict = OrderedDict()  # (label, t) -> pca's mask in Ray's object store
        self._local = None  # an engine on the driver for explain (where the driver holds the images)
        self.last_call: dict = {}  # seconds of the last denoise: total, waiting on shards, merging; rounds

    # -- where it runs ------------------------------------------------------------------------------
    @property
    def placement(self) -> list[dict]:
        """Per shard: index, node (Ray node id), ip, pid, device, threads, images, kernel."""
        keys = ("index", "node", "ip", "pid", "device", "threads", "images", "kernel")
        return [{k: info.get(k) for k in keys} for info in self._pool.infos]

    @property
    def actors(self) -> list:
        """The shards' Ray actor handles, in shard order (for tools and tests: ray.kill one to see it
        restarted)."""
        return list(self._pool.actors)

    def describe(self) -> str:
        """Where the engine runs, in one line: the cluster, shards, nodes, devices."""
        infos = self._pool.infos
        nodes = len({i.get("node") for i in infos})
        devices = sorted({i.get("device", "?") for i in infos})
        threads = sorted({i.get("threads", 1) for i in infos})
        per = f"{'/'.join(map(str, threads))} thread{'s' if threads != [1] else ''} each"
        return (f"Ray cluster at {self.address}: {self.shards} shard{'s' if self.shards > 1 else ''} on {nodes} "
                f"node{'s' if nodes > 1 else ''} ({', '.join(devices)}; {per}), {len(self.train):,} images")

    def __repr__(self):
        return f"RayEngine(machine={self.machine!r}, shards={self.shards}, address={self.address!r}, train={self.train.name!r})"

    def kernel(self, channels: int | None = None) -> str:
        """The kernel the shards' engines use (Engine.kernel)."""
        return self._pool.infos[0].get("kernel", "torch")

    @property
    def cache_bytes(self) -> int:
        """The bytes each shard's engine may cache."""
        return int(self._pool.infos[0].get("cache_bytes", 0))

    def shard_seconds(self) -> list[float]:
        """Seconds each shard has spent computing its parts of calls (since its worker started)."""
        return self._pool.calls([("busy", lambda i: (), None)], self.timeout)[0]

    def clear_cache(self) -> None:
        self._pool.calls([("clear", lambda i: (), None)], self.timeout)

    def close(self) -> None:
        """End the shards' workers now (they also end when the last engine over them goes)."""
        self._pool.close()

    def explain(self, x, t, k=None, pixel=(0, 0), top: int = 8, label: int | None = None) -> list[dict]:
        """Engine.explain, by an engine on the driver (it reads one pixel's keys: no shards needed)."""
        if not isinstance(self.train, ImageSet):
            raise ElsvizError("explain needs the images on the driver; this engine's shards loaded them. Make an "
                              "Engine(load_dataset(...)) here to explain a pixel.")
        if self._local is None:
            machine, options, cache_bytes, chunk_elems, compile = self._spec
            self._local = self._engine_class(self.train, machine, "cpu", cache_bytes=cache_bytes,
                                             chunk_elems=chunk_elems, **dict(options))
        return self._local.explain(x, t, k, pixel, top, label)

    # -- the machine -----------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, x: torch.Tensor, t: float, k=None, label: int | None = None) -> Posterior:
        """Engine.denoise over the shards: the posterior mean and provenance of every pixel of x."""
        if not isinstance(x, torch.Tensor):
            raise ElsvizError(f"x must be a torch tensor [B, C, H, W], got {type(x).__name__}.")
        x = (x.unsqueeze(0) if x.ndim == 3 else x).detach().to("cpu", torch.float32)
        t = check_t(t)
        k = check_k(k) if BY_KEY[self.machine].local else None
        label = as_label(label)
        if label is not None:
            self.train.indices_for(label)  # a label the set lacks: the single engine's message
        self._waited, self._rounds = 0.0, 0
        start = time.perf_counter()
        a, b = alpha_sigma(t)
        run = self._paper if self.machine in PAPER_MACHINES else getattr(self, f"_{self.machine}")
        post = run(x, t, k, label, a, b)
        total = time.perf_counter() - start
        self.last_call = {"seconds": total, "waiting": self._waited, "merge": total - self._waited,
                          "rounds": self._rounds}
        return post

    def _round(self, *rounds):
        """Rounds of remote calls sent together: [(method, args (the same for every shard) or
        args_of(i), shards or None)]; returns each round's answers (None from a shard without
        images of the label), timed as waiting."""
        start = time.perf_counter()
        out = self._pool.calls([(m, a if callable(a) else (lambda i, a=a: a), w) for m, a, w in rounds],
                               self.timeout)
        self._waited += time.perf_counter() - start
        self._rounds += 1
        return out

    def _live(self, parts) -> tuple[list[int], list[dict]]:
        which = [i for i, p in enumerate(parts) if p is not None]
        return which, [parts[i] for i in which]

    def _named(self, which, value, order, key, k, label, kind):
        """The windows named by the shards' heaviest keys (winners), then where they first occur and
        how often over all shards: (first place in the dense order, count, winning shard)."""
        win = merge.winners(value, order)
        named = merge.pick(key, win)
        answers = self._round(("ties", (self._spec, k, label, kind, named.flatten()), which))[0]
        first, count = merge.ties(answers)
        return first.view(named.shape), count.view(named.shape), win

    def _paper(self, x, t, k, label, a, b) -> Posterior:
        which, parts = self._live(self._round(("stats", (self._spec, x, t, k, label), None))[0])
        sm = merge.statistics(parts)
        is_ = self.machine == "is"
        stack = lambda name: torch.stack([p[name] for p in parts])  # noqa: E731
        first, count, _ = self._named(which, stack("m"), stack("order"), stack("key"), None if is_ else k, label,
                                      self.machine)
        h, w = self.train.shape[-2:]
        sm.best = merge.key_id(first, 1 if is_ else h * w)
        return assemble(self.machine, x, sm, a, b, t, k, None, (h, w), count)

    def _nearest(self, x, t, k, label, a, b) -> Posterior:
        which, parts = self._live(self._round(("nearest", (self._spec, x, t, label), None))[0])
        stack = lambda name: torch.stack([p[name] for p in parts])  # noqa: E731
        first, count, win = self._named(which, stack("value"), stack("order"), stack("key"), None, label, self.machine)
        mean = stack("image")[win, torch.arange(x.shape[0])]  # identical images: the named one's pixels
        bsz = x.shape[0]
        return theories.whole_images(x, a, b, t, k, mean, first % merge.RADIX, torch.ones(bsz), count,
                                     torch.zeros(bsz), None)

    def _cfdm(self, x, t, k, label, a, b) -> Posterior:
        which, norms = self._live(self._round(("cfdm_norms", (self._spec, x, t, label), None))[0])
        lse = merge.log_sum_exp(norms)
        parts = self._round(("cfdm_sums", (self._spec, x, t, label, lse), which))[0]
        stack = lambda name: torch.stack([p[name] for p in parts])  # noqa: E731
        first, count, win = self._named(which, stack("weight"), stack("order"), stack("key"), None, label,
                                        self.machine)
        mean = stack("mean").sum(0).view(x.shape)
        return theories.whole_images(x, a, b, t, k, mean, first % merge.RADIX, merge.pick(stack("weight"), win),
                                     count, stack("entropy").sum(0).clamp(min=0.0), None)

    def _gaussian_of(self, label):
        """wiener's and pca's Gaussian model of the images in play, from the shards' moments."""
        if label not in self._gaussian:
            _, parts = self._live(self._round(("moments", (self._spec, label), None))[0])
            n, mu, m2 = merge.moments(parts)
            mu, vals, vecs = theories.gaussian(mu, m2, n)
            self._gaussian[label] = (mu, vals, vecs, vecs.float())
        return self._gaussian[label]

    def _wiener(self, x, t, k, label, a, b) -> Posterior:
        self._round(("check", (self._spec, x, t, k, label), [0]))  # the single engine's checks of x
        mu, vals, _, vecs = self._gaussian_of(label)
        return theories.no_source(x, a, b, t, k, theories.wiener(x, a, b, mu, vals, vecs))

    def _pca(self, x, t, k, label, a, b) -> Posterior:
        threshold = self.options["threshold"]
        if (label, t) not in self._masks:
            _, vals, vecs, _ = self._gaussian_of(label)
            self._masks[(label, t)] = self._pool.ray.put(theories.pca_mask(vals, vecs, a, b, threshold))
            while len(self._masks) > PCA_MASKS:
                self._masks.popitem(last=False)
        self._masks.move_to_end((label, t))
        which, parts = self._live(self._round(("pca", (self._spec, x, t, label, self._masks[(label, t)]), None))[0])
        sm = merge.statistics(parts)
        sm.best = torch.arange(sm.m.shape[0])  # rows: the pick says which row names each pixel
        mean, weight, row, entropy = theories.pca_pick(sm, x.shape)
        stack = lambda name: torch.stack([p[name] for p in parts])  # noqa: E731
        win = merge.winners(stack("m"), stack("order"))
        named = merge.pick(stack("key"), win)[row]  # [B, H, W]
        answers = self._round(("ties", (self._spec, None, label, self.machine, named.flatten()), which))[0]
        first, count = merge.ties(answers)
        best = (first % merge.RADIX).view(row.shape)
        return make(x, mean, a, b, t, k, best, theories.here(x), weight,
                                                         count.view(row.shape), entropy, None)

    def _pspc(self, x, t, k, label, a, b) -> Posterior:
        which, parts = self._live(self._round(("pspc_crops", (self._spec, x, t, k, label), None))[0])
        crops = merge.statistics(parts)
        h, w = self.train.shape[-2:]
        stack = lambda name: torch.stack([p[name] for p in parts])  # noqa: E731
        win = merge.winners(stack("m"), stack("order"))
        named = merge.pick(stack("key"), win)  # [B, Hc, Wc] each crop's window
        entropy = (torch.log(crops.s) - crops.ent / crops.s).clamp(min=0.0)
        rows = torch.arange(named.numel()).view(named.shape)
        crop, weight, entropy, centre = theories.pspc_sources(crops.s, entropy, rows, k, (h, w), 2**20)
        sums, answers = self._round(("pspc_sums", (self._spec, x, t, k, label, crops.m, crops.s), which),
                                    ("ties", (self._spec, k, label, "ls", named.flatten()[crop.flatten()]), which))
        first, count = merge.ties(answers)
        mean = torch.stack(sums).sum(0) / theories.crop_cover(k, (h, w))
        best = (first % merge.RADIX).view(crop.shape)
        return make(x, mean, a, b, t, k, best, centre, weight,
                                                         count.view(crop.shape), entropy, None)
