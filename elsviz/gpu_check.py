"""One-shot GPU check of the fused Triton kernel: `python -m elsviz.gpu_check [--runs 2] [--skip-tests]`.

For a session that has a CUDA GPU (the kernel is the default there; docs/BENCHMARKS.md):
1. the tests: tests/test_triton_kernel.py, the compiled kernel on CUDA, then the CUDA tests of
   tests/test_engine_exact.py, tests/test_sampling.py and tests/test_engine_memory.py
   (ENGINE_CUDA_TESTS) twice: on the torch path (ELSVIZ_KERNEL=torch) and by default (the engine
   through the kernel against the float64 reference); --suites picks among them and can add
   "interpreted" (the kernel under Triton's interpreter, in a second process: CI runs it with
   triton 3.9, requirements-dev.txt; the interpreter of triton 3.6 fails 18 of its tests on numpy 2);
   --profile WORKLOADS: those children also print torch's profile of one more trajectory;
2. timings, each in a fresh process, ELSVIZ_KERNEL=torch ("torch") against "triton":
   - 60,000 synthetic 28x28 images (elsviz.bench.synthetic_set), bbELS and ELS, one image,
     20 steps, schedule mnist-resnet (target <= 2 s each);
   - hands (1,000 x 32x32), bbELS, k = 7, 64 seeds in one batched call (target <= 5 s);
   the median of --runs trajectories after one cold one (key tables built, kernel compiled), the
   GPU peak, whether the kernel stayed on (a failure falls back to torch with a warning), and how
   far the triton run's output is from the torch run's (same seed).
--sweep also times local_stats alone per tile configuration (SWEEP_CONFIGS) on problems shaped
like one step of each workload, for tuning the constants at the top of elsviz/kernels/triton.py.
Rows are printed as they come; --json FILE writes them. Budget: a few minutes on an H100;
--skip-tests, --workloads "" (no trajectories) and --kernels split it.
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
# --sweep: local_stats alone, on problems shaped like one step of the workloads: rows, keys, D + 1
SWEEP_PROBLEMS = {
    "ELS k=3, 1 image": (784, 4_000_000, 10),
    "ELS k=7, 1 image": (784, 4_000_000, 50),
    "ELS k=15, 1 image": (784, 2_000_000, 226),
    "hands k=7, 64 images": (43_264, 676_000, 50),
}
SWEEP_CONFIGS = [  # BLOCK_R, BLOCK_K, BLOCK_D, NUM_WARPS, PRECISION; the first is the module's
    (64, 64, 16, 8, "ieee"), (32, 64, 16, 4, "ieee"), (64, 32, 16, 4, "ieee"), (64, 128, 16, 8, "ieee"),
    (128, 64, 16, 8, "ieee"), (64, 64, 32, 8, "ieee"),
    (64, 64, 16, 8, "tf32x3"), (64, 64, 32, 8, "tf32x3"), (128, 64, 32, 8, "tf32x3"),
]
ROOT = Path(__file__).resolve().parents[1]
# the engine's CUDA tests (exactness against the float64 reference, sampling, bounded memory for a batch)
ENGINE_CUDA_TESTS = ["tests/test_engine_exact.py", "tests/test_sampling.py", "tests/test_engine_memory.py", "-k", "cuda"]


def _child(ns) -> None:
    """One workload with one kernel setting (from the environment); prints one JSON line and saves
    the last trajectory's output and sources to ns.save."""
    import warnings

    import torch

    from elsviz import Engine, load_dataset, sample
    from elsviz.bench import synthetic_set

    dataset, machine, k, batch = WORKLOADS[ns.workload]
    from elsviz.kernels import triton as triton_kernel

    for option in filter(None, ns.variant.split("-")):  # e.g. tf32x3, r128 (BLOCK_R), k128 (BLOCK_K)
        if option[0] in "rk" and option[1:].isdigit():
            setattr(triton_kernel, "BLOCK_R" if option[0] == "r" else "BLOCK_K", int(option[1:]))
        else:
            triton_kernel.PRECISION = option
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
        profile = ""
        if ns.profile:  # one more trajectory under torch's profiler: where the time goes
            from torch.profiler import ProfilerActivity, profile as profiler

            with profiler(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                run(0)
            profile = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=48)
    last = traj.frames[-1]
    torch.save({"final": traj.final.cpu(), "source_index": last.source_index.cpu(),
                "source_count": last.source_count.cpu()}, ns.save)
    print(json.dumps({"times": times, "cold": cold, "gpu_peak": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0,
                      "kernel_on": bool(getattr(engine, "_kernel", False)), "profile": profile,
                      "warnings": [str(w.message)[:300] for w in caught]}))


def _time(workload: str, kernel: str, ns, save: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ELSVIZ_KERNEL", "TRITON_INTERPRET")}
    env["ELSVIZ_KERNEL"] = "torch" if kernel == "torch" else "triton"
    variant = kernel.split("-", 1)[1] if "-" in kernel else ""
    out = subprocess.run([sys.executable, "-m", "elsviz.gpu_check", "--child", "--workload", workload,
                          "--runs", str(ns.runs), "--n", str(ns.n), "--save", str(save), "--device", ns.device,
                          "--variant", variant]
                         + (["--profile", "yes"] if workload in ns.profile.split(",") else []),
                         capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sweep(device: str = "cuda", problems: dict = SWEEP_PROBLEMS) -> list[dict]:
    """Time local_stats alone per tile configuration (SWEEP_CONFIGS) on SWEEP_PROBLEMS; agreement
    with the module's configuration: largest relative difference of s, share of equal argmax."""
    import torch

    from elsviz.kernels import triton as tk

    saved = (tk.BLOCK_R, tk.BLOCK_K, tk.BLOCK_D, tk.NUM_WARPS, tk.PRECISION)
    gen = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    print(f"\n{'problem':<22}{'BR,BK,BD,warps,precision':<27}{'time':>9}{'G logits/s':>12}{'TFLOP/s':>9}  s rel diff / same argmax",
          flush=True)
    try:
        for name, (nr, nk, dim) in problems.items():
            win = torch.rand(1, dim - 1, nk, generator=gen, device=device) * 2 - 1  # key windows
            keys = torch.cat([win, (win * win).sum(1, keepdim=True)], 1)  # [1, D + 1, K], the table's layout
            values = win[:, (dim - 1) // 2:(dim - 1) // 2 + 1].contiguous()  # [1, 1, K] the centres
            a, b = 0.7, 0.7  # t ~ 0.5
            qw = torch.rand(1, nr, dim - 1, generator=gen, device=device) * 2 - 1
            q = torch.cat([a / b**2 * qw, torch.full((1, nr, 1), -a * a / (2 * b * b), device=device)], -1)
            ref = None
            for br, bk, bd, nw, prec in SWEEP_CONFIGS:
                tk.NUM_WARPS, tk.PRECISION = nw, prec

                def call():
                    return tk.local_stats(q, keys.transpose(1, 2), values.transpose(1, 2), block_r=br, block_k=bk, block_d=bd)

                try:
                    out = call()  # compiles
                    sync()
                    t0 = time.perf_counter()
                    for _ in range(3):
                        out = call()
                    sync()
                    dt = (time.perf_counter() - t0) / 3
                except Exception as exc:  # a configuration that does not build: say so, go on
                    print(f"{name:<22}{br},{bk},{bd},{nw},{prec:<15} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                    continue
                ref = ref or out
                diff = float(((out[1] - ref[1]).abs() / ref[1]).max())
                same = float((out[4] == ref[4]).float().mean())
                row = {"problem": name, "config": [br, bk, bd, nw, prec], "s": dt, "logits_per_s": nr * nk / dt,
                       "tflops": 2 * nr * nk * dim / dt / 1e12, "s_rel_diff": diff, "same_arg": same}
                rows.append(row)
                cfg = f"{br},{bk},{bd},{nw},{prec}"
                print(f"{name:<22}{cfg:<27}{dt * 1e3:>7.1f}ms{row['logits_per_s'] / 1e9:>12.0f}{row['tflops']:>9.1f}"
                      f"  {diff:.1e} / {same:.2%}", flush=True)
            del win, keys, values, q
    finally:
        tk.BLOCK_R, tk.BLOCK_K, tk.BLOCK_D, tk.NUM_WARPS, tk.PRECISION = saved
    return rows


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
                   help="any of torch, triton, and triton with options joined by '-': tf32x3 (tl.dot on "
                        "tensor cores, 3 passes), rN (BLOCK_R = N rows), kN (BLOCK_K = N keys); e.g. triton-r128")
    p.add_argument("--suites", default="compiled,torch,kernel",
                   help="test suites: any of compiled, interpreted (needs triton 3.9; CI runs it), torch, kernel")
    p.add_argument("--profile", default="", help="workloads whose children also profile one trajectory")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--sweep", action="store_true", help="also time local_stats alone per tile configuration")
    p.add_argument("--json", default=None)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a smoke test of this script
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workload", default=None, help=argparse.SUPPRESS)
    p.add_argument("--save", default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant", default="", help=argparse.SUPPRESS)
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
    report = {"gpu": gpu, "tests": {}, "rows": [], "sweep": []}
    if not ns.skip_tests:
        base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        plain = {k: v for k, v in os.environ.items() if k not in ("ELSVIZ_KERNEL", "TRITON_INTERPRET")}
        suites = {  # Triton's interpreter and its compiler cannot share a process: two runs
            "compiled": ("kernel compiled on cuda", base + ["tests/test_triton_kernel.py", "-k", "cuda"], plain),
            "interpreted": ("kernel interpreted", base + ["tests/test_triton_kernel.py", "-k", "not cuda"],
                            {**plain, "TRITON_INTERPRET": "1"}),
            "torch": ("engine on cuda, torch path", base + ENGINE_CUDA_TESTS, {**plain, "ELSVIZ_KERNEL": "torch"}),
            "kernel": ("engine on cuda via the kernel", base + ENGINE_CUDA_TESTS, plain),
        }
        for name, cmd, env in (suites[s] for s in ns.suites.split(",") if s):
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
            tail = (out.stdout + out.stderr).strip().splitlines()[-1:]
            print(f"tests, {name}: rc {out.returncode}, {time.perf_counter() - t0:.0f} s: {' '.join(tail)}", flush=True)
            if out.returncode:
                print((out.stdout + out.stderr)[-4000:], flush=True)
            report["tests"][name] = {"rc": out.returncode, "tail": tail}
    if ns.sweep and ns.device == "cuda":
        os.environ.pop("TRITON_INTERPRET", None)  # compiled, not interpreted
        report["sweep"] = _sweep()
    workloads = [w for w in ns.workloads.split(",") if w]
    if not workloads:
        return _write(report, ns.json)
    head = f"{'workload':<11}{'kernel':<15}{'median':>9}{'cold':>9}{'GPU peak':>10}  {'target':<8}{'kernel on':<11}final rel L2 / same sources"
    print("\n" + head + "\n" + "-" * len(head), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for workload in workloads:
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
                if res.get("profile"):
                    print(res["profile"], flush=True)
    return _write(report, ns.json)


def _write(report: dict, path: str | None) -> int:
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
