"""Benchmarks of the engine: `python -m elsviz.bench [--baseline REV] [--sets digits,hands] [--study]`.

Workloads (one image, 20 steps, provenance on; the median of --runs trajectories after one warm-up
trajectory that builds the cached key tables; every figure from a fresh process):
- digits: 1,797 x 16x16, schedule mnist-resnet;
- hands: 1,000 x 32x32 silhouettes, k = 7;
- --study: hands, 64 seeds at k = 7 in one batched call against one-image calls (seeds per second);
- --n N --size S: a synthetic set of N images of S x S (digits, each warped by its own affine map), e.g. on
  a GPU: --device cuda --n 60000 --size 28.
--baseline REV also times the engine of git revision REV (checked out into a temporary folder and
loaded beside this one in the same process, trajectories alternated) and prints the ratio:
absolute times on shared machines drift, alternation puts both under the same load.
--naive adds the naive dense formulation on digits. Prints a table; --json FILE writes the numbers.

--cluster: one engine against the Ray engine (Engine(..., device="ray", shards=--shards), a local
cluster of --shards CPUs, or $ELSVIZ_RAY_ADDRESS) on a synthetic set (--n, default 20,000 x 28x28),
--steps-step runs of the mnist-resnet schedule per machine (--machines), alternated: the ratio, and per
step the merge's time, the shards' compute and the rest (Ray's round trips). docs/SCALING.md.

--estimates: what elsviz.app.runs.Estimator says a run will take, against what it takes (ESTIMATE_CASES: the
digits, hands and photos, every machine, cold and warm, one thread), the ratio per run; --record FILE
writes the timings (tests/estimate_timings.json, which tests/test_estimates.py checks the estimates
against); --fit FILE fits elsviz.app.runs.COSTS (those of the file's CPU, its "costs") to such a file.
docs/BENCHMARKS.md, "Estimates".

--first-picture [--runs N] [--baseline REV] [--open-after S]: the app's first picture in headless Chromium, each
time on a fresh `streamlit run app.py` (elsviz.app.first_picture; docs/BENCHMARKS.md, "The first picture").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

WORKLOADS = {  # name: (dataset, schedule)
    "digits": ("digits", "mnist-resnet"),
    "hands": ("hands", 7),
}


# ----------------------------------------------------------------------------------------------
# The child: one fresh process, one engine (this tree's or a baseline's), timed trajectories
# ----------------------------------------------------------------------------------------------
def _child(ns) -> None:
    """Time trajectories of this tree's engine and, with --against ROOT, of the engine found in ROOT
    (loaded as a second package), alternating one trajectory each, so that both see the same load.
    Prints one JSON line."""
    import torch

    import elsviz

    if ns.threads:
        torch.set_num_threads(ns.threads)
    packages = {"new": elsviz}
    if ns.against:
        packages["baseline"] = _load_tree(Path(ns.against))
    if ns.n is not None:
        train = synthetic_set(ns.n, ns.size)
        k = "mnist-resnet"
    else:
        name, k = WORKLOADS[ns.set]
        train = elsviz.load_dataset(name)
    engines = {key: pkg.Engine(pkg.ImageSet(train.images, train.labels), ns.machine, ns.device) for key, pkg in packages.items()}
    engines["new"].compile = ns.compile == "on"
    device = engines["new"].device
    cuda = device.type == "cuda"
    shape = (ns.batch, *train.shape)

    def run(key, seed):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        packages[key].sample(engines[key], seed=seed, steps=20, k=k, shape=shape)
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    cold = {key: run(key, 1000) for key in engines}
    times = {key: [] for key in engines}
    for r in range(ns.runs):
        for key in engines:
            times[key].append(run(key, r))
    print(json.dumps({"times": times["new"], "cold": cold["new"], "baseline_times": times.get("baseline"),
                      "baseline_cold": cold.get("baseline"),
                      "peak_rss": _peak_rss(), "device": str(device),
                      "gpu_peak": torch.cuda.max_memory_allocated(device) if cuda else None}))


def _load_tree(root: Path):
    """The elsviz package of another tree (e.g. a baseline revision) as a module of its own."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("elsviz_baseline", root / "elsviz" / "__init__.py",
                                                  submodule_search_locations=[str(root / "elsviz")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["elsviz_baseline"] = module
    spec.loader.exec_module(module)
    return module


def synthetic_set(n: int, size: int, seed: int = 0):
    """n MNIST-like images of size x size: the digits set's images at 20x20 on a background of -1,
    each warped by its own random affine map (rotation up to 15 degrees, scale 0.9-1.1, shear,
    shift up to 2 pixels at 28x28) and rounded to 8 bits. Every image is different, so key windows
    repeat about as much as in real handwriting: only in the background (distinct shares of the
    interior keys of 60,000 images at 28x28: 47% at k = 3, 89% at k = 7, 100% at k = 15; MNIST
    itself has more background). Shifted and flipped copies of the 1,797 digits, the set before
    this one, repeated their windows so often (3.5% distinct at k = 3) that distinct keys would
    flatter any engine that merges them."""
    import math

    import torch
    import torch.nn.functional as F

    from elsviz import ImageSet, load_dataset

    inner = max(4, round(size * 20 / 28))
    base = load_dataset("digits", size=inner)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(base), (n,), generator=gen)
    lo = (size - inner) // 2
    src = F.pad(base.images[idx], (lo, size - inner - lo, lo, size - inner - lo), value=-1.0)  # [n, 1, size, size]
    angle = (torch.rand(n, generator=gen) - 0.5) * (math.pi / 6)
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    shear = (torch.rand(n, generator=gen) - 0.5) * 0.3
    tx, ty = ((torch.rand(n, generator=gen) - 0.5) * 0.25 for _ in range(2))
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, shear - sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # [n, 2, 3]
    out = torch.empty_like(src)
    for i in range(0, n, 4096):  # bounded memory whatever n
        grid = F.affine_grid(theta[i:i + 4096], (theta[i:i + 4096].shape[0], 1, size, size), align_corners=False)
        out[i:i + 4096] = F.grid_sample(src[i:i + 4096] + 1, grid, align_corners=False) - 1  # background stays -1
    imgs = torch.round((out.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1  # 8-bit, like MNIST
    return ImageSet(imgs, base.labels[idx], base.class_names, f"synthetic-{n}x{size}", "benchmark set",
                    "digits, each warped by its own random affine map, 8-bit")


def _peak_rss() -> int:
    """Peak resident memory of this process in bytes: VmHWM, which (unlike ru_maxrss) does not
    inherit the parent's memory from before exec."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _run_child(args: list[str]) -> dict:
    """This module's --child mode in a fresh process."""
    out = subprocess.run([sys.executable, "-m", "elsviz.bench", "--child", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {' '.join(args)} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _checkout(rev: str, into: Path) -> Path:
    """The tree of git revision rev, unpacked into `into` (no .git needed there)."""
    repo = Path(__file__).resolve().parents[1]
    archive = into / "tree.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "-C", str(repo), "archive", rev], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def machine_info() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = (f"{cpu} ({torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads)")
    if torch.cuda.is_available():
        info += f", GPU {torch.cuda.get_device_name(0)}"
    return info


def _mb(b):
    return "-" if b is None else f"{b / 2**20:,.0f} MB"


def _naive_median(machine: str, device: str) -> float:
    """One digits trajectory through the naive dense formulation (elsviz.engine.naive)."""
    import torch

    from elsviz import load_dataset, sample
    from elsviz.engine.naive import naive_mean

    train = load_dataset("digits")
    imgs = train.images.to(device)

    class Naive:
        def __init__(self):
            self.train, self.device = train, torch.device(device)

        def denoise(self, x, t, k, label=None):
            return type("P", (), {"mean": naive_mean(imgs, machine, x, t, k)})()

    t0 = time.perf_counter()
    sample(Naive(), seed=0, steps=20, k="mnist-resnet")
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m elsviz.bench", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", type=int, default=3, help="timed trajectories per workload (after one warm-up)")
    p.add_argument("--machines", default="bbels,els")
    p.add_argument("--sets", default="digits,hands", help="workloads: digits, hands")
    p.add_argument("--baseline", default=None, metavar="REV", help="also time the engine of git revision REV")
    p.add_argument("--study", action="store_true", help="hands: 64 seeds batched against one-image calls")
    p.add_argument("--study-singles", type=int, default=8, help="one-image calls timed for the study")
    p.add_argument("--naive", action="store_true", help="also the naive dense formulation on digits")
    p.add_argument("--n", type=int, default=None, help="a synthetic set of n images instead of --sets")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--json", default=None)
    p.add_argument("--compile", choices=["on", "off"], default="off",
                   help="torch.compile the per-chunk softmax statistics (Engine(compile=True))")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads in each timed process (default: torch's choice); 1 gives steadier ratios on a busy machine")
    p.add_argument("--kernel", choices=["auto", "torch", "triton"], default="auto",
                   help="ELSVIZ_KERNEL for this engine: auto (the compiled CPU kernel where it builds; "
                        "the Triton kernel on CUDA), torch, triton")
    p.add_argument("--estimates", action="store_true",
                   help="time runs of ESTIMATE_CASES (a cold run, then --runs warm ones, one thread) and print the "
                        "estimate of elsviz.app.runs.Estimator against each: the ratio estimate / CPU time, and the app's "
                        "estimate (at the pace of the cases before) against the wall-clock time")
    p.add_argument("--record", default=None, metavar="FILE", help="with --estimates: write the timings (the table "
                                                                    "tests/test_estimates.py checks the estimates against)")
    p.add_argument("--fit", default=None, metavar="FILE", help="fit the CPU's COSTS of elsviz.app.runs to the steps of a "
                                                                 "recorded FILE and print them")
    p.add_argument("--cases", default=None, help="with --estimates: only the cases whose name contains one of these "
                                                 "(comma-separated), e.g. photos,hands/bbels or held-out")
    p.add_argument("--first-picture", action="store_true", help="seconds from opening the app to its first picture, "
                   "each on a fresh server, in headless Chromium (with --baseline: that revision's app too, alternated)")
    p.add_argument("--open-after", type=float, default=0.0, metavar="S", help="with --first-picture: open the page S "
                   "seconds after the server answers (0: at once)")
    p.add_argument("--cluster", action="store_true",
                   help="one engine against the Ray engine with --shards shards (docs/SCALING.md); --n defaults to 20,000")
    p.add_argument("--shards", type=int, default=2, help="with --cluster: shards (and the local cluster's CPUs)")
    p.add_argument("--steps", type=int, default=5, help="with --cluster: steps of each timed run")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    p.add_argument("--against", default=None, help=argparse.SUPPRESS)
    p.add_argument("--set", default="digits", help=argparse.SUPPRESS)
    p.add_argument("--machine", default="bbels", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.child:
        _estimate_child(ns) if ns.case else _child(ns)
        return 0
    if ns.fit:
        print(json.dumps(fit_costs(json.load(open(ns.fit))), indent=1))
        return 0
    if ns.estimates:
        return estimates(ns)
    if ns.first_picture:
        return first_picture(ns)
    if ns.cluster:
        return cluster(ns)
    os.environ["ELSVIZ_KERNEL"] = ns.kernel  # the children inherit it
    threads = [] if ns.threads is None else ["--threads", str(ns.threads)]

    print(f"machine: {machine_info()}" + (f"; timed with {ns.threads} thread(s)" if ns.threads else "")
          + f"; ELSVIZ_KERNEL={ns.kernel}")
    print(f"{ns.runs} timed runs after one warm-up each, fresh process per row; times are per 20-step trajectory"
          + (f"; the baseline {ns.baseline} runs in the same process, trajectories alternated" if ns.baseline else "") + "\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        against = ["--against", str(_checkout(ns.baseline, Path(tmp)))] if ns.baseline else []
        workloads = [(f"synthetic {ns.n:,}x{ns.size}", ["--n", str(ns.n), "--size", str(ns.size)])] if ns.n else \
            [(s, ["--set", s]) for s in ns.sets.split(",")]
        for label, extra in workloads:
            for machine in ns.machines.split(","):
                args = ["--machine", machine, "--device", ns.device, "--runs", str(ns.runs), "--compile", ns.compile, *threads, *extra]
                res = _run_child(args + against)
                row = {"workload": label, "machine": machine, "device": res["device"], "median_s": statistics.median(res["times"]),
                       "cold_s": res["cold"], "peak_rss": res["peak_rss"], "gpu_peak": res["gpu_peak"]}
                if against:
                    row["baseline_s"] = statistics.median(res["baseline_times"])
                    row["baseline_cold_s"] = res["baseline_cold"]
                    row["peak_rss"] = _run_child(args + ["--runs", "1"])["peak_rss"]  # this engine alone
                if ns.naive and label == "digits":
                    row["naive_s"] = _naive_median(machine, ns.device)
                rows.append(row)
                _print_row(row, header=len(rows) == 1, baseline=ns.baseline)
        if ns.study:
            rows.append(_study(ns))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"machine": machine_info(), "baseline": ns.baseline, "rows": rows}, f, indent=1)
    return 0


def first_picture(ns) -> int:
    from .app import first_picture as fp

    print(f"machine: {machine_info()}; a fresh server per row; seconds (see elsviz/app/first_picture.py)\n")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": Path(__file__).resolve().parents[1]}
        if ns.baseline:
            trees = {ns.baseline: _checkout(ns.baseline, Path(tmp)), **trees}
        fp.run(trees, ns.runs, open_after=ns.open_after)
    return 0


def cluster(ns) -> int:
    """--cluster: runs of `--steps` steps (mnist-resnet, seed 0) by one engine (torch's threads) and
    by the Ray engine with ns.shards shards (one thread each), alternated, --runs times after a
    one-step warm-up each; per step the Ray engine's merge on the driver, its shards' compute (the
    slowest shard's) and the rest (waiting on Ray: round trips, transfers)."""
    import torch

    import elsviz
    from elsviz.cluster import ENV
    from elsviz.sampling import sample

    n = ns.n or 20_000
    train = synthetic_set(n, ns.size)
    if not os.environ.get(ENV):
        import logging

        import ray

        ray.init(num_cpus=ns.shards, include_dashboard=False, logging_level=logging.WARNING)
    print(f"machine: {machine_info()}; load average {os.getloadavg()[0]:.1f} at the start; torch threads "
          f"{torch.get_num_threads()} (one engine); {ns.runs} timed runs of {ns.steps} steps each after a one-step warm-up, "
          "alternated\n")
    head = (f"{'set':<20}{'machine':<9}{'one engine':>11}{'Ray':>9}{'ratio':>7}{'merge/step':>12}"
            f"{'shards/step':>13}{'rest/step':>11}")  # rest: round trips, transfers, one shard waiting on another
    print(head + "\n" + "-" * len(head))
    rows = []
    for machine in ns.machines.split(","):
        one = elsviz.Engine(train, machine, "cpu")
        sharded = elsviz.Engine(train, machine, device="ray", shards=ns.shards)
        times = {"one": [], "ray": []}
        merge, rest, busy = [], [], []

        def run(eng):
            calls = []
            start = time.perf_counter()
            sample(eng, steps=ns.steps, k="mnist-resnet", seed=0,
                   callback=lambda f: calls.append(dict(getattr(eng, "last_call", {}))))
            return time.perf_counter() - start, calls

        for eng in (one, sharded):  # warm-up: the shards' workers started, one step's tables built
            sample(eng, steps=2, k="mnist-resnet", seed=0)
        for _ in range(ns.runs):
            times["one"].append(run(one)[0])
            before = sharded.shard_seconds()
            took, calls = run(sharded)
            times["ray"].append(took)
            spent = [b - a for a, b in zip(before, sharded.shard_seconds())]
            steps = len(calls)
            merge.append(sum(c["merge"] for c in calls) / steps)
            busy.append(max(spent) / steps)
            rest.append(sum(c["waiting"] for c in calls) / steps - max(spent) / steps)
        row = {"set": train.name, "machine": machine, "shards": ns.shards, "one_s": statistics.median(times["one"]),
               "ray_s": statistics.median(times["ray"]), "merge_s_per_step": statistics.median(merge),
               "shard_s_per_step": statistics.median(busy), "rest_s_per_step": statistics.median(rest),
               "placement": sharded.describe(), "load_end": os.getloadavg()[0]}
        rows.append(row)
        print(f"{row['set']:<20}{machine:<9}{row['one_s']:>10.2f}s{row['ray_s']:>8.2f}s{row['ray_s'] / row['one_s']:>6.2f}x"
              f"{row['merge_s_per_step'] * 1e3:>10.1f}ms{row['shard_s_per_step']:>12.2f}s"
              f"{row['rest_s_per_step'] * 1e3:>9.1f}ms", flush=True)
        sharded.close()
    print(f"\n{rows[-1]['placement'] if rows else ''}; load average {os.getloadavg()[0]:.1f} at the end")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"machine": machine_info(), "rows": rows}, f, indent=1)
    return 0


def _print_row(r: dict, header: bool, baseline: str | None) -> None:
    if header:
        head = (f"{'workload':<22}{'machine':<8}{'device':<7}{'median':>9}{'cold':>9}"
                f"{'baseline ' + (baseline or '')[:7]:>18}{'speed-up':>10}{'peak RSS':>11}{'GPU peak':>11}")
        print(head)
        print("-" * len(head))
    old = r.get("baseline_s")
    ratio = "-" if old is None else f"{old / r['median_s']:.2f}x"
    print(f"{r['workload']:<22}{r['machine']:<8}{r['device']:<7}{r['median_s']:>8.2f}s{r['cold_s']:>8.1f}s"
          f"{'-' if old is None else f'{old:.2f}s':>18}{ratio:>10}{_mb(r['peak_rss']):>11}{_mb(r['gpu_peak']):>11}", flush=True)
    if r.get("baseline_cold_s") is not None:
        print(f"{'':<22}cold (first trajectory, tables built): {r['cold_s']:.1f}s, baseline {r['baseline_cold_s']:.1f}s")
    if "naive_s" in r:
        print(f"{'':<22}naive dense: {r['naive_s']:.2f}s ({r['naive_s'] / r['median_s']:.1f}x)")


def _study(ns) -> dict:
    """hands at k = 7: 64 seeds in one batched call against single-image calls (seeds per second)."""
    threads = [] if ns.threads is None else ["--threads", str(ns.threads)]
    batched = _run_child(["--set", "hands", "--machine", "bbels", "--device", ns.device, "--runs", "1", "--batch", "64", *threads])
    single = _run_child(["--set", "hands", "--machine", "bbels", "--device", ns.device, "--runs", str(ns.study_singles), *threads])
    per_seed_batched = batched["times"][0] / 64
    per_seed_single = statistics.median(single["times"])
    print(f"\nstudy, hands bbELS k=7: 64 seeds batched {batched['times'][0]:.1f}s ({64 / batched['times'][0]:.2f} seeds/s, "
          f"peak RSS {_mb(batched['peak_rss'])}); one-image calls {per_seed_single:.2f}s each "
          f"({1 / per_seed_single:.2f} seeds/s, peak RSS {_mb(single['peak_rss'])}): "
          f"batching gives {per_seed_single / per_seed_batched:.2f}x the throughput")
    return {"workload": "study hands bbels k=7", "batched_64_s": batched["times"][0], "single_median_s": per_seed_single,
            "batched_peak_rss": batched["peak_rss"], "single_peak_rss": single["peak_rss"]}


# ----------------------------------------------------------------------------------------------
# Estimates: what elsviz.app.runs.Estimator says a run takes, against what it takes
# ----------------------------------------------------------------------------------------------
ESTIMATE_CASES = [  # the sets' sizes: digits 1,797 x 16x16, hands 1,000 x 32x32, photos 2,000 x 3 x 32x32
    *({"set": "digits", "machine": m, "k": k} for m, k in [("bbels", "mnist-resnet"), ("bbels", 3), ("bbels", 9),
                                                           ("els", 5), ("els", 11), ("ls", 5), ("is", 5)]),
    {"set": "digits", "machine": "bbels", "k": "mnist-resnet", "kernel": "torch"},
    *({"set": "hands", "machine": m, "k": k} for m, k in [("bbels", 3), ("bbels", 5), ("bbels", 9), ("bbels", 17),
                                                          ("bbels", "mnist-resnet"), ("els", 7), ("ls", 5), ("is", 5)]),
    {"set": "hands", "machine": "bbels", "k": 5, "kernel": "torch"},
    {"set": "hands", "machine": "bbels", "k": 5, "limit": 200},
    *({"set": "hands", "machine": "bbels", "k": k, "limit": 200, "batch": 16, "steps": 10} for k in (9, 25)),
    *({"set": "photos", "machine": m, "k": k} for m, k in [("bbels", 3), ("bbels", 5), ("bbels", 9), ("els", 5),
                                                           ("bbels", "mnist-resnet")]),
    {"set": "photos", "machine": "bbels", "k": 5, "limit": 300},
    # held out: timed, never fitted to (how the estimates do on runs the costs were not fitted to)
    *({"set": "digits", "machine": m, "k": k, "held_out": True} for m, k in [("bbels", 5), ("els", 15)]),
    {"set": "digits", "machine": "bbels", "k": "mnist-resnet", "label": 3, "held_out": True},
    *({"set": "hands", "machine": m, "k": k, "held_out": True} for m, k in [("bbels", 7), ("bbels", 13), ("els", 11)]),
    *({"set": "hands", "machine": "bbels", "k": k, "limit": 200, "batch": 16, "steps": 10, "held_out": True}
      for k in (13, 17)),
    *({"set": "photos", "machine": "bbels", "k": k, "held_out": True} for k in (7, "cifar10-resnet")),
    {"set": "photos", "machine": "bbels", "k": 5, "label": 1, "held_out": True},
]


def case_name(case: dict) -> str:
    """'photos/bbels/k=5', 'hands 200/bbels/k=9/batch 16/10 steps', 'digits/bbels/mnist-resnet/class 3', '.../torch'."""
    k = case["k"] if isinstance(case["k"], str) else f"k={case['k']}"
    parts = [case["set"] + (f" {case['limit']}" if case.get("limit") else ""), case["machine"], k]
    parts += [f"class {case['label']}"] if case.get("label") is not None else []
    parts += [f"batch {case['batch']}"] if case.get("batch", 1) > 1 else []
    parts += [f"{case['steps']} steps"] if case.get("steps", 20) != 20 else []
    return "/".join(parts + ([case["kernel"]] if case.get("kernel") else []))


def _case_set(case: dict):
    """The training set of a case: a built-in set, or a random subset of it (as the app's sidebar makes one)."""
    from elsviz import load_dataset

    return load_dataset(case["set"], **({"limit": case["limit"], "seed": 0} if case.get("limit") else {}))


def _estimate_child(ns) -> None:
    """One case in this fresh process: a fresh engine, one cold run (it builds every key table) and
    --runs warm ones, each step timed in wall-clock and CPU seconds (time.process_time: what this
    process computed, whatever else the machine ran). Prints one JSON line."""
    import torch

    import elsviz

    case = json.loads(ns.case)
    torch.set_num_threads(case.get("threads", 1))
    tiny = elsviz.ImageSet(torch.rand(4, 1, 8, 8) * 2 - 1)  # the process's first calls (libraries, the kernel), as in
    elsviz.sample(elsviz.Engine(tiny, case["machine"], ns.device), steps=3, k=3)  # an app that has run before
    train = _case_set(case)
    engine = elsviz.Engine(train, case["machine"], ns.device)
    shape = (case.get("batch", 1), *train.shape)
    runs = []
    for r in range(ns.runs + 1):
        steps, last = [], [time.perf_counter(), time.process_time()]

        def clock(frame):
            now = [time.perf_counter(), time.process_time()]
            steps.append([frame.k, round(frame.t, 4), round(now[0] - last[0], 4), round(now[1] - last[1], 4)])
            last[:] = now

        load = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        elsviz.sample(engine, seed=r, steps=case.get("steps", 20), k=case["k"], shape=shape, callback=clock,
                      label=case.get("label"))
        runs.append({"cold": r == 0, "wall": round(time.perf_counter() - t0, 3), "cpu": round(time.process_time() - c0, 3),
                     "load": [round(load, 2), round(os.getloadavg()[0], 2)], "steps": steps})
    print(json.dumps({"runs": runs, "device": str(engine.device), "cache_bytes": engine.cache_bytes}))


def case_costs(entry: dict, estimator=None) -> list[list[float]]:
    """The cost of each step (seconds at a pace of 1: one thread of the CPU the COSTS were measured on)
    of each run of a recorded case ({"case", "cache_bytes", "runs"}), the runs in order, the first on a
    fresh engine: what elsviz.app.runs.Estimator says of them before they run."""
    import elsviz
    from elsviz.app.runs import Estimator, workload

    est, case = estimator or Estimator(), entry["case"]
    engine = elsviz.Engine(_case_set(case), case["machine"], "cpu")
    work = replace(workload(engine, (case["set"], case.get("limit")), case["machine"], label=case.get("label"),
                            family=case["set"], batch=case.get("batch", 1)),
                   kernel=case.get("kernel") != "torch", threads=case.get("threads", 1), cache_bytes=entry["cache_bytes"])
    return [est.cost(work, [s[0] for s in run["steps"]], [s[1] for s in run["steps"]], engine, keep=True)
            for run in entry["runs"]]


def estimates(ns) -> int:
    """--estimates: each case in a fresh process, the estimate against the run; prints a table, and
    with --record writes the timings."""
    from elsviz.app.runs import Estimator, Workload, cpu_costs_key

    def named(c):
        return case_name(c) + (" held-out" if c.get("held_out") else "")

    cases = [c for c in ESTIMATE_CASES if not ns.cases or any(part in named(c) for part in ns.cases.split(","))]
    print(f"machine: {machine_info()}; one thread per run (the app's engines on a 2-core CPU)")
    print(f"a cold run (a fresh engine), then {ns.runs} warm; 'cost': the estimate at a pace of 1 (one quiet "
          "thread), against the run's CPU time; 'app': the estimate at the pace of the cases before, as the "
          "app learns it, against the wall-clock time\n")
    head = f"{'case':<40}{'run':<6}{'cost':>8}{'cpu':>8}{'ratio':>7}{'app':>8}{'wall':>8}{'ratio':>7}{'load':>6}"
    print(head + "\n" + "-" * len(head))
    app, recorded = Estimator(), []  # the app's estimator: it learns its pace from every run
    for case in cases:
        env = {**os.environ, "ELSVIZ_KERNEL": case.get("kernel", "auto")}
        out = subprocess.run([sys.executable, "-m", "elsviz.bench", "--child", "--case", json.dumps(case),
                              "--runs", str(ns.runs)], capture_output=True, text=True, env=env)
        if out.returncode:
            raise RuntimeError(f"estimate case {case_name(case)} failed:\n{out.stderr[-4000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        entry = {"case": case, "cache_bytes": res["cache_bytes"], "runs": res["runs"]}
        costs = [sum(c) for c in case_costs(entry)]
        work = Workload(case_name(case), case["machine"], family=case["set"])
        for run, cost in zip(res["runs"], costs):
            guess = cost * app.pace(work)
            app.record_total(work, [], [], run["wall"], cost=cost)
            print(f"{case_name(case):<40}{'cold' if run['cold'] else 'warm':<6}{cost:>7.2f}s{run['cpu']:>7.2f}s"
                  f"{cost / run['cpu']:>7.2f}{guess:>7.2f}s{run['wall']:>7.2f}s{guess / run['wall']:>7.2f}"
                  f"{run['load'][0]:>6.1f}", flush=True)
        recorded.append(entry)
    if ns.record:
        with open(ns.record, "w") as f:
            json.dump({"machine": machine_info(), "costs": cpu_costs_key(), "date": time.strftime("%Y-%m-%d %H:%M"),
                       "conditions": "one thread per run, each case in a fresh process; CPU time is "
                                     "time.process_time; load: the 1-minute load average before and after",
                       "cases": recorded}, f, indent=None, separators=(",", ":"))
    return 0


def fit_costs(recorded: dict) -> dict:
    """COSTS for the CPU that fit a recorded file's steps best: non-negative least squares on the steps'
    CPU times, each weighed by 1 / its time (relative errors count, not seconds), the cost being
    linear in the COSTS (the path a step takes does not depend on them)."""
    import numpy as np
    from scipy.optimize import nnls

    from elsviz.app.runs import COSTS, Estimator

    names = list(COSTS["cpu-avx512"])
    rows, times = [], []
    shares: dict = {}
    for entry in (e for e in recorded["cases"] if not e["case"].get("held_out")):
        per_name = []
        for name in names:
            est = Estimator({n: float(n == name) for n in names})
            est._distinct = shares  # (the shares of distinct keys: computed once)
            per_name.append([])
            per_name[-1] = [c for run in case_costs(entry, est) for c in run]
        rows += list(zip(*per_name))
        times += [s[3] for run in entry["runs"] for s in run["steps"]]
    x, y = np.array(rows), np.array(times)
    weight = 1 / np.maximum(y, 1e-3)
    coef, _ = nnls(x * weight[:, None], y * weight)
    return {n: float(f"{c:.3g}") for n, c in zip(names, coef)}


if __name__ == "__main__":
    raise SystemExit(main())
