"""Benchmarks of the engine: `python -m elsviz.bench [--baseline REV] [--sets digits,hands] [--study]`.

Workloads (one image, 20 steps, provenance on; the median of --runs trajectories after one warm-up
trajectory that builds the cached key tables; every figure from a fresh process):
- digits: 1,797 x 16x16, schedule mnist-resnet;
- hands: 1,000 x 32x32 silhouettes, k = 7;
- --study: hands, 64 seeds at k = 7 in one batched call against one-image calls (seeds per second);
- --n N --size S: a synthetic set of N images of S x S (digits resized, shifted, flipped), e.g. on
  a GPU: --device cuda --n 60000 --size 28.
--baseline REV runs the same workloads with the engine of git revision REV (checked out into a
temporary folder) in the same run and prints the ratio: absolute times on shared machines drift.
--naive adds the naive dense formulation on digits. Prints a table; --json FILE writes the numbers.
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
from pathlib import Path

WORKLOADS = {  # name: (dataset, schedule)
    "digits": ("digits", "mnist-resnet"),
    "hands": ("hands", 7),
}


# ----------------------------------------------------------------------------------------------
# The child: one fresh process, one engine (this tree's or a baseline's), timed trajectories
# ----------------------------------------------------------------------------------------------
def _child(ns) -> None:
    """Time trajectories with the elsviz found first on sys.path; print one JSON line."""
    import torch

    from elsviz import Engine, load_dataset, sample

    if ns.n is not None:
        train = synthetic_set(ns.n, ns.size)
        k = "mnist-resnet"
    else:
        name, k = WORKLOADS[ns.set]
        train = load_dataset(name)
    engine = Engine(train, ns.machine, ns.device)
    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(engine.device)
    shape = (ns.batch, *train.shape)

    def run(seed):
        if cuda:
            torch.cuda.synchronize(engine.device)
        t0 = time.perf_counter()
        sample(engine, seed=seed, steps=20, k=k, shape=shape)
        if cuda:
            torch.cuda.synchronize(engine.device)
        return time.perf_counter() - t0

    cold = run(1000)
    times = [run(r) for r in range(ns.runs)]
    print(json.dumps({"times": times, "cold": cold, "peak_rss": _peak_rss(), "device": str(engine.device),
                      "gpu_peak": torch.cuda.max_memory_allocated(engine.device) if cuda else None}))


def synthetic_set(n: int, size: int, seed: int = 0):
    """n images of size x size built from the digits set: shifted, flipped, 8-bit (MNIST-like)."""
    import torch

    from elsviz import ImageSet, load_dataset

    base = load_dataset("digits", size=size)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(base), (n,), generator=gen)
    imgs = base.images[idx]  # [n, 1, size, size]
    shifts = torch.randint(-2, 3, (n, 2), generator=gen)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        imgs[i] = torch.roll(imgs[i], (dy, dx), dims=(-2, -1))
    flip = torch.rand(n, generator=gen) < 0.5
    imgs[flip] = imgs[flip].flip(-1)
    return ImageSet(imgs, base.labels[idx], base.class_names, f"synthetic-{n}x{size}", "benchmark set", "digits, shifted and flipped")


def _peak_rss() -> int:
    """Peak resident memory of this process in bytes: VmHWM, which (unlike ru_maxrss) does not
    inherit the parent's memory from before exec."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _run_child(root: Path, args: list[str]) -> dict:
    """This file's --child mode in a fresh process, importing elsviz from root."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--root", str(root), *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {' '.join(args)} ({root}) failed:\n{out.stderr[-4000:]}")
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
    info = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        info += f", GPU {torch.cuda.get_device_name(0)}"
    return info


def _mb(b):
    return "-" if b is None else f"{b / 2**20:,.0f} MB"


def _naive_median(machine: str, device: str) -> float:
    """One digits trajectory through the naive dense formulation (elsviz.naive)."""
    import torch

    from elsviz import load_dataset, sample
    from elsviz.naive import naive_mean

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
    p.add_argument("--baseline-runs", type=int, default=None, help="runs for the baseline (default: --runs)")
    p.add_argument("--study", action="store_true", help="hands: 64 seeds batched against one-image calls")
    p.add_argument("--study-singles", type=int, default=8, help="one-image calls timed for the study")
    p.add_argument("--naive", action="store_true", help="also the naive dense formulation on digits")
    p.add_argument("--n", type=int, default=None, help="a synthetic set of n images instead of --sets")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--json", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", default=None, help=argparse.SUPPRESS)
    p.add_argument("--set", default="digits", help=argparse.SUPPRESS)
    p.add_argument("--machine", default="bbels", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.child:
        _child(ns)
        return 0

    here = Path(__file__).resolve().parents[1]
    print(f"machine: {machine_info()}")
    print(f"{ns.runs} timed runs after one warm-up each, fresh process per row; times are per 20-step trajectory\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = _checkout(ns.baseline, Path(tmp)) if ns.baseline else None
        workloads = [(f"synthetic {ns.n:,}x{ns.size}", ["--n", str(ns.n), "--size", str(ns.size)])] if ns.n else \
            [(s, ["--set", s]) for s in ns.sets.split(",")]
        for label, extra in workloads:
            for machine in ns.machines.split(","):
                args = ["--machine", machine, "--device", ns.device, *extra]
                new = _run_child(here, args + ["--runs", str(ns.runs)])
                row = {"workload": label, "machine": machine, "device": new["device"], "median_s": statistics.median(new["times"]),
                       "cold_s": new["cold"], "peak_rss": new["peak_rss"], "gpu_peak": new["gpu_peak"]}
                if base is not None:
                    old = _run_child(base, args + ["--runs", str(ns.baseline_runs or ns.runs)])
                    row["baseline_s"] = statistics.median(old["times"])
                    row["baseline_peak_rss"] = old["peak_rss"]
                if ns.naive and label == "digits":
                    row["naive_s"] = _naive_median(machine, ns.device)
                rows.append(row)
                _print_row(row, header=len(rows) == 1, baseline=ns.baseline)
        if ns.study:
            study = _study(here, ns)
            rows.append(study)
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"machine": machine_info(), "baseline": ns.baseline, "rows": rows}, f, indent=1)
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
    if "naive_s" in r:
        print(f"{'':<22}naive dense: {r['naive_s']:.2f}s ({r['naive_s'] / r['median_s']:.1f}x)")


def _study(here: Path, ns) -> dict:
    """hands at k = 7: 64 seeds in one batched call against single-image calls (seeds per second)."""
    batched = _run_child(here, ["--set", "hands", "--machine", "bbels", "--device", ns.device, "--runs", "1", "--batch", "64"])
    single = _run_child(here, ["--set", "hands", "--machine", "bbels", "--device", ns.device,
                               "--runs", str(ns.study_singles)])
    per_seed_batched = batched["times"][0] / 64
    per_seed_single = statistics.median(single["times"])
    print(f"\nstudy, hands bbELS k=7: 64 seeds batched {batched['times'][0]:.1f}s ({64 / batched['times'][0]:.2f} seeds/s, "
          f"peak RSS {_mb(batched['peak_rss'])}); one-image calls {per_seed_single:.2f}s each "
          f"({1 / per_seed_single:.2f} seeds/s, peak RSS {_mb(single['peak_rss'])}): "
          f"batching gives {per_seed_single / per_seed_batched:.2f}x the throughput")
    return {"workload": "study hands bbels k=7", "batched_64_s": batched["times"][0], "single_median_s": per_seed_single,
            "batched_peak_rss": batched["peak_rss"], "single_peak_rss": single["peak_rss"]}


if __name__ == "__main__":
    if "--child" in sys.argv:  # run as a script: import elsviz from --root, not from beside this file
        root = sys.argv[sys.argv.index("--root") + 1]
        sys.path[0] = root
    raise SystemExit(main())
