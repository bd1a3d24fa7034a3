"""Benchmarks of the engine: `python -m elsviz.bench [--large] [--device cuda --n 60000 --size 28]`.

Default run (the targets of issue 2, on the digits set, 1,797 images at 16x16, one image,
schedule mnist-resnet, 20 steps, provenance on):
- a full trajectory per machine, median of 5 runs after one warm-up (cached key tables);
- the same trajectory through the naive dense formulation (elsviz.naive), once, for the ratio;
- the peak resident memory of a fresh process doing one warm-up and the 5 runs.
--large adds a synthetic 20,000-image 28x28 set (bbELS, peak memory of a fresh process).
--n/--size/--device benchmark a synthetic set of that size on that device (e.g. an H100).
Prints a table; --json FILE also writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch


@dataclass
class _NaiveDenoiser:
    """The naive dense formulation behind the denoiser interface of sample()."""

    train: object
    machine: str
    device: torch.device

    def denoise(self, x, t, k, label=None):
        from .naive import naive_mean

        return _Mean(naive_mean(self.train.images.to(self.device), self.machine, x, t, k))


@dataclass
class _Mean:
    mean: torch.Tensor


def synthetic_set(n: int, size: int, seed: int = 0):
    """n images of size x size built from the digits set: shifted, flipped, 8-bit (MNIST-like)."""
    from .datasets import load_dataset
    from .imageset import ImageSet

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


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_trajectory(engine, runs: int, k="mnist-resnet", steps: int = 20, seed0: int = 0, warmup: bool = True) -> list[float]:
    """Wall times of `runs` trajectories (after one warm-up), each from its own seed."""
    from .sampling import sample

    if warmup:
        sample(engine, seed=seed0 + 1000, steps=steps, k=k)
    times = []
    for r in range(runs):
        _sync(engine.device)
        t0 = time.perf_counter()
        sample(engine, seed=seed0 + r, steps=steps, k=k)
        _sync(engine.device)
        times.append(time.perf_counter() - t0)
    return times


def _peak_child(args: list[str]) -> dict:
    """Run this module's --child mode in a fresh process; its JSON answer."""
    out = subprocess.run([sys.executable, "-m", "elsviz.bench", "--child", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {' '.join(args)} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(ns) -> None:
    """Fresh process: one engine, warm-up + runs; print times and peak memory as JSON."""
    from .datasets import load_dataset
    from .engine import Engine

    train = load_dataset("digits") if ns.n is None else synthetic_set(ns.n, ns.size)
    compile_ = ns.compile == "on"
    engine = Engine(train, ns.machine, ns.device, compile=compile_)
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    times = time_trajectory(engine, ns.runs, warmup=not ns.no_warmup)
    peak = _peak_rss()
    gpu_peak = torch.cuda.max_memory_allocated(engine.device) if engine.device.type == "cuda" else None
    print(json.dumps({"times": times, "peak_rss": peak, "gpu_peak": gpu_peak, "device": str(engine.device),
                      "compiled": engine.compile}))


def _peak_rss() -> int:
    """Peak resident memory of this process in bytes: VmHWM, which (unlike ru_maxrss) does not
    inherit the parent's memory from before exec."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine_info() -> str:
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m elsviz.bench", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--machines", default="bbels,els")
    p.add_argument("--no-naive", action="store_true", help="skip the naive dense baseline")
    p.add_argument("--large", action="store_true", help="also the 20,000-image 28x28 set (bbELS)")
    p.add_argument("--n", type=int, default=None, help="synthetic set of n images instead of digits")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--json", default=None)
    p.add_argument("--no-warmup", action="store_true", help="time cold runs (no warm-up run first)")
    p.add_argument("--compile", choices=["on", "off"], default="off",
                   help="torch.compile the per-chunk softmax statistics (Engine(compile=True))")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--machine", default="bbels", help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.child:
        _child(ns)
        return 0

    from .datasets import load_dataset
    from .engine import Engine

    print(f"machine: {machine_info()}")
    what = "digits (1,797 x 16x16)" if ns.n is None else f"synthetic {ns.n:,} x {ns.size}x{ns.size}"
    print(f"set: {what}; one image, schedule mnist-resnet, 20 steps, provenance on; median of {ns.runs} runs\n")
    rows = []
    extra = [] if ns.n is None else ["--n", str(ns.n), "--size", str(ns.size)]
    for machine in ns.machines.split(","):
        res = _peak_child(["--machine", machine, "--device", ns.device, "--runs", str(ns.runs), "--compile", ns.compile,
                           *extra] + (["--no-warmup"] if ns.no_warmup else []))
        row = {"machine": machine, "device": res["device"], "median_s": statistics.median(res["times"]),
               "min_s": min(res["times"]), "peak_rss": res["peak_rss"], "gpu_peak": res["gpu_peak"], "naive_s": None}
        if not ns.no_naive and ns.n is None:
            train = load_dataset("digits")
            naive = _NaiveDenoiser(train, machine, torch.device(ns.device))
            row["naive_s"] = statistics.median(time_trajectory(naive, 1))
        rows.append(row)
    if ns.large:
        res = _peak_child(["--machine", "bbels", "--device", ns.device, "--runs", "1", "--no-warmup", "--n", "20000", "--size", "28"])
        rows.append({"machine": "bbels (20,000 x 28x28)", "device": res["device"], "median_s": statistics.median(res["times"]),
                     "min_s": min(res["times"]), "peak_rss": res["peak_rss"], "gpu_peak": res["gpu_peak"], "naive_s": None})

    head = f"{'machine':<24}{'device':<8}{'median':>9}{'min':>9}{'naive':>9}{'ratio':>8}{'peak RSS':>12}{'GPU peak':>12}"
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = "-" if r["naive_s"] is None else f"{r['naive_s'] / r['median_s']:.1f}x"
        naive = "-" if r["naive_s"] is None else f"{r['naive_s']:.2f}s"
        print(f"{r['machine']:<24}{r['device']:<8}{r['median_s']:>8.3f}s{r['min_s']:>8.3f}s{naive:>9}{ratio:>8}"
              f"{_mb(r['peak_rss']):>12}{_mb(r['gpu_peak']):>12}")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"machine": machine_info(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
