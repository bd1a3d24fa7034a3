"""One-shot GPU check of the fused Triton kernel: `python -m elsviz.gpu_check [--runs 2] [--skip-tests]`.

For a session that has a CUDA GPU (the kernel is opt-in until this has been run; docs/BENCHMARKS.md):
1. the tests: tests/test_triton_kernel.py, the compiled kernel on CUDA and (in a second process)
   under the interpreter, then the CUDA tests of tests/test_engine_exact.py and
   tests/test_sampling.py with ELSVIZ_KERNEL=triton (the engine through the kernel against the
   float64 reference);
2. timings, each in a fresh process, ELSVIZ_KERNEL unset ("torch") against "triton":
   - 60,000 synthetic 28x28 images (elsviz.bench.synthetic_set), bbELS and ELS, one image,
     20 steps, schedule mnist-resnet (target <= 2 s each);
   - hands (1,000 x 32x32), bbELS, k = 7, 64 seeds in one batched call (target <= 5 s);
   the median of --runs trajectories after one cold one (key tables built, kernel compiled), the
   GPU peak, whether the kernel stayed on (a failure falls back to torch with a warning), and how
   far the triton run's output is from the torch run's (same seed).
Rows are printed as they come; --json FILE writes them. Budget: a few minutes on an H100.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = {  # name: (set, machine, schedule, batch)
    "60k-bbels": ("synthetic", "bbels", "mnist-resnet", 1),
    "60k-els": ("synthetic", "els", "mnist-resnet", 1),
    "hands-64": ("hands", "bbels", 7, 64),
}
TARGETS = {"60k-bbels": 2.0, "60k-els": 2.0, "hands-64": 5.0}
ROOT = Path(__file__).resolve().parents[1]


def _child(ns) -> None:
    """One workload with one kernel setting (from the environment); prints one JSON line and saves
    the last trajectory's output and sources to ns.save."""
    import warnings

    import torch

    from elsviz import Engine, load_dataset, sample
    from elsviz.bench import synthetic_set

    dataset, machine, k, batch = WORKLOADS[ns.workload]
    if ns.precision:
        from elsviz import triton_kernel

        triton_kernel.PRECISION = ns.precision
    train = synthetic_set(ns.n, 28) if dataset == "synthetic" else load_dataset(dataset)
    device = torch.device(ns.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda d: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = Engine(train, machine, device)

        def run(seed):
            sync(device)
            t0 = time.perf_counter()
            traj = sample(engine, seed=seed, steps=20, k=k, shape=(batch, *train.shape))
            sync(device)
            return time.perf_counter() - t0, traj

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        cold, _ = run(1000)
        times = []
        for r in range(ns.runs):
            dt, traj = run(r)
            times.append(dt)
    last = traj.frames[-1]
    torch.save({"final": traj.final.cpu(), "source_index": last.source_index.cpu(),
                "source_count": last.source_count.cpu()}, ns.save)
    print(json.dumps({"times": times, "cold": cold, "gpu_peak": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0,
                      "kernel_on": bool(getattr(engine, "_kernel", False)),
                      "warnings": [str(w.message)[:300] for w in caught]}))


def _time(workload: str, kernel: str, ns, save: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ELSVIZ_KERNEL", "TRITON_INTERPRET")}
    env["ELSVIZ_KERNEL"] = "torch" if kernel == "torch" else "triton"
    precision = kernel.split("-")[1] if "-" in kernel else ""
    out = subprocess.run([sys.executable, "-m", "elsviz.gpu_check", "--child", "--workload", workload,
                          "--runs", str(ns.runs), "--n", str(ns.n), "--save", str(save), "--device", ns.device,
                          "--precision", precision],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _agreement(a: Path, b: Path) -> str:
    """How far the triton run's output is from the torch run's: relative L2 of the final image
    (seeds alike; float rounding grows over 20 steps) and the share of equal sources at the last step."""
    import torch

    x, y = torch.load(a), torch.load(b)
    rel = float((x["final"] - y["final"]).norm() / y["final"].norm())
    same = float((x["source_index"] == y["source_index"]).float().mean())
    return f"{rel:.1e} / {same:.1%}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m elsviz.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=2, help="timed trajectories per row (after one cold one)")
    p.add_argument("--n", type=int, default=60000, help="images of the synthetic 28x28 set")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"any of {', '.join(WORKLOADS)}")
    p.add_argument("--kernels", default="torch,triton",
                   help="any of torch, triton, triton-tf32x3 (tl.dot on tensor cores, 3 passes)")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a smoke test of this script
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workload", default=None, help=argparse.SUPPRESS)
    p.add_argument("--save", default=None, help=argparse.SUPPRESS)
    p.add_argument("--precision", default="", help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.child:
        _child(ns)
        return 0
    import torch

    if ns.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU (torch.cuda.is_available() is False).")
        return 2
    gpu = torch.cuda.get_device_name(0) if ns.device == "cuda" else ns.device
    print(f"device: {gpu}, torch {torch.__version__}", end="")
    try:
        import triton

        print(f", triton {triton.__version__}", flush=True)
    except ImportError:
        print(", triton NOT installed: the triton rows will fall back to torch", flush=True)
    report = {"gpu": gpu, "tests": {}, "rows": []}
    if not ns.skip_tests:
        base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        plain = {k: v for k, v in os.environ.items() if k not in ("ELSVIZ_KERNEL", "TRITON_INTERPRET")}
        suites = (  # Triton's interpreter and its compiler cannot share a process: two runs
            ("kernel compiled on cuda", base + ["tests/test_triton_kernel.py", "-k", "cuda"], plain),
            ("kernel interpreted", base + ["tests/test_triton_kernel.py", "-k", "not cuda"], {**plain, "TRITON_INTERPRET": "1"}),
            ("engine on cuda via the kernel", base + ["tests/test_engine_exact.py", "tests/test_sampling.py", "-k", "cuda"],
             {**plain, "ELSVIZ_KERNEL": "triton"}),
        )
        for name, cmd, env in suites:
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
            tail = (out.stdout + out.stderr).strip().splitlines()[-1:]
            print(f"tests, {name}: rc {out.returncode}, {time.perf_counter() - t0:.0f} s: {' '.join(tail)}", flush=True)
            if out.returncode:
                print((out.stdout + out.stderr)[-4000:], flush=True)
            report["tests"][name] = {"rc": out.returncode, "tail": tail}
    head = f"{'workload':<11}{'kernel':<15}{'median':>9}{'cold':>9}{'GPU peak':>10}  {'target':<8}{'kernel on':<11}final rel L2 / same sources"
    print("\n" + head + "\n" + "-" * len(head), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for workload in ns.workloads.split(","):
            saves = {}
            for kernel in ns.kernels.split(","):
                saves[kernel] = Path(tmp) / f"{workload}-{kernel}.pt"
                res = _time(workload, kernel, ns, saves[kernel])
                row = {"workload": workload, "kernel": kernel, **res}
                report["rows"].append(row)
                if "error" in res:
                    print(f"{workload:<11}{kernel:<15} failed:\n{res['error']}", flush=True)
                    continue
                med = statistics.median(res["times"])
                met = "met" if med <= TARGETS[workload] else "NOT met"
                torch_out = saves.get("torch")
                agree = _agreement(saves[kernel], torch_out) if kernel != "torch" and torch_out and torch_out.exists() else "-"
                row["agreement"] = agree
                print(f"{workload:<11}{kernel:<15}{med:>8.2f}s{res['cold']:>8.1f}s{res['gpu_peak'] / 2**30:>8.1f}GB  "
                      f"{met:<8}{str(res['kernel_on']):<11}{agree}", flush=True)
                for w in res["warnings"]:
                    print(f"    warning: {w}", flush=True)
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
