"""One-shot GPU check of the fused Triton kernel: `python -m elsviz.gpu_check [--runs 2] [--skip-tests]`.

For a session that has a CUDA GPU (the kernel is the default there; docs/BENCHMARKS.md):
1. the tests: tests/test_triton_kernel.py and tests/test_triton_gather.py, the compiled kernel on
   CUDA (from key tables and gathering windows from the images), then the CUDA tests of
   tests/test_engine_exact.py, tests/test_sampling.py and tests/test_engine_memory.py
   (ENGINE_CUDA_TESTS) twice: on the torch path (ELSVIZ_KERNEL=torch) and by default (the engine
   through the kernel against the float64 reference); --suites picks among them and can add
   "interpreted" (the kernel under Triton's interpreter, in a second process: CI runs it with
   triton 3.9, requirements-dev.txt; the interpreter of triton 3.6 fails 18 of its tests on numpy 2);
   --profile WORKLOADS: those children also print torch's profile of one more trajectory;
2. exactness on the GPU (on unless --no-exact): one denoise step of the 60,000 synthetic images
   at three (t, k) through the gather and the key tables against the torch path (mean and score
   within 1e-4 relative L2, weights, entropies, tie counts, sources);
3. timings, each in a fresh process, ELSVIZ_KERNEL=torch ("torch") against "triton" (the gather,
   the default) and its variants (--kernels: "triton-table" reads key tables, "triton-dense"
   gathers every key, never only the distinct ones):
   - 60,000 synthetic 28x28 images (elsviz.bench.synthetic_set), bbELS and ELS, one image,
     20 steps, schedule mnist-resnet (target <= 1.5 s each);
   - hands (1,000 x 32x32), bbELS, k = 7, 64 seeds in one batched call (target <= 5 s);
   the median of --runs trajectories after one cold one (key tables built, kernel compiled), the
   GPU peak, whether the kernel stayed on (a failure falls back to torch with a warning), and how
   far the triton run's output is from the torch run's (same seed).
--sweep also times local_stats (from key tables) and gather_stats (windows gathered from images)
alone per tile configuration (SWEEP_CONFIGS) on problems shaped like one step of each workload,
for tuning the constants at the top of elsviz/kernels/triton.py. Rows are printed as they come,
and at the end the timings again as a Markdown table for docs/BENCHMARKS.md; --json FILE writes
them. Budget: a few minutes on an H100; --skip-tests, --no-exact, --workloads "" (no
trajectories) and --kernels split it.
"""
from __future__ import annotations

import argparse
import json
import math
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
TARGETS = {"60k-bbels": 1.5, "60k-els": 1.5, "hands-64": 5.0}
# --exact: one step of the 60,000 images per (t, k), from the noise of a high t to the copies of a low one
EXACT_STEPS = ((0.9, 15), (0.5, 9), (0.1, 3))
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
# the kernel's own CUDA tests (the contract, compiled), then the engine's (exactness against the
# float64 reference, sampling, bounded memory for a batch)
KERNEL_CUDA_TESTS = ["tests/test_triton_kernel.py", "tests/test_triton_gather.py", "-k", "cuda"]
ENGINE_CUDA_TESTS = ["tests/test_engine_exact.py", "tests/test_sampling.py", "tests/test_engine_memory.py", "-k", "cuda"]


def _child(ns) -> None:
    """One workload with one kernel setting (from the environment); prints one JSON line and saves
    the last trajectory's output and sources to ns.save."""
    import warnings

    import torch

    from elsviz import Engine, load_dataset, sample
    from elsviz.bench import synthetic_set

    dataset, machine, k, batch = WORKLOADS[ns.workload]
    _variant(ns.variant)
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
    # the paths the last step's plan took: whether the gather (or the kernel) stayed on
    plan = engine.plan(torch.zeros(batch, *train.shape, device=device), 0.5, traj.frames[-1].k)
    print(json.dumps({"times": times, "cold": cold, "gpu_peak": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0,
                      "kernel_on": engine.kernel() == "triton", "paths": sorted(f"{p}/{k}" for p, k in plan.paths()),
                      "profile": profile, "warnings": [str(w.message)[:300] for w in caught]}))


def _variant(variant: str) -> None:
    """Set the kernel's and the plan's constants a variant names, options joined by '-': tf32x3
    (PRECISION), rN (BLOCK_R = N), kN (BLOCK_K = N), table (no gather: key tables), dense (the
    gather takes every key, never the distinct ones alone)."""
    from elsviz.engine import plan
    from elsviz.kernels import triton as triton_kernel

    for option in filter(None, variant.split("-")):
        if option[0] in "rk" and option[1:].isdigit():
            setattr(triton_kernel, "BLOCK_R" if option[0] == "r" else "BLOCK_K", int(option[1:]))
        elif option == "table":
            plan.GATHER = False
        elif option == "dense":
            plan.GATHER_DISTINCT_SHARE = 0.0
        else:
            triton_kernel.PRECISION = option


def _exact_child(ns) -> None:
    """One step of the synthetic set per EXACT_STEPS through the gather, the key tables and the
    torch path (three engines), compared with the torch path; prints one JSON line of rows."""
    import torch

    from elsviz import Engine
    from elsviz.bench import synthetic_set
    from elsviz.engine import plan

    _, machine, _, _ = WORKLOADS[ns.workload]
    train = synthetic_set(ns.n, 28)
    device = torch.device(ns.device)
    engines = {}
    for name, env, gather in (("torch", "torch", True), ("triton-table", "triton", False), ("triton", "triton", True)):
        os.environ["ELSVIZ_KERNEL"], plan.GATHER = env, gather  # both read when an Engine is made
        engines[name] = Engine(train, machine, device)
    plan.GATHER = True
    gen = torch.Generator().manual_seed(0)
    rows = []
    for t, k in EXACT_STEPS:
        x = torch.randn(1, *train.shape, generator=gen).to(device)
        want = engines["torch"].denoise(x, t, k)
        for name in ("triton-table", "triton"):
            got = engines[name].denoise(x, t, k)
            rel = lambda f: float((getattr(got, f) - getattr(want, f)).norm() / getattr(want, f).norm())  # noqa: E731
            unique = want.source_count == 1
            rows.append({"workload": ns.workload, "kernel": name, "t": t, "k": k,
                         "paths": sorted(f"{p}/{kn}" for p, kn in engines[name].plan(x, t, k).paths()),
                         "mean": rel("mean"), "score": rel("score"),
                         "weight": float(((got.source_weight - want.source_weight).abs()
                                          / want.source_weight.clamp(min=1e-6)).max()),
                         "entropy": float((got.entropy - want.entropy).abs().max()),
                         "same_count": bool(torch.equal(got.source_count, want.source_count)),
                         "same_source": float((got.source_index == want.source_index)[unique].float().mean())
                         if bool(unique.any()) else 1.0})
    print(json.dumps(rows))


def _exact(ns) -> list[dict]:
    """The exactness rows of each synthetic workload, each from a fresh process (_exact_child)."""
    rows = []
    head = (f"{'workload':<11}{'kernel':<14}{'t':>5}{'k':>4}  {'mean':>8}{'score':>9}{'weight':>9}{'entropy':>9}  "
            f"counts  sources  paths")
    print("\nexactness against the torch path, one step (mean, score: relative L2; weight: largest relative "
          "difference; entropy: largest absolute; sources: share equal where the key is unique)\n" + head, flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("ELSVIZ_KERNEL", "TRITON_INTERPRET")}
    for workload in (w for w in ns.workloads.split(",") if WORKLOADS.get(w, ("",))[0] == "synthetic"):
        out = subprocess.run([sys.executable, "-m", "elsviz.gpu_check", "--child-exact", "--workload", workload,
                              "--n", str(ns.n), "--device", ns.device], capture_output=True, text=True, env=env, cwd=ROOT)
        if out.returncode != 0:
            print(f"{workload}: failed\n{out.stderr[-2000:]}", flush=True)
            rows.append({"workload": workload, "error": out.stderr[-2000:]})
            continue
        for r in json.loads(out.stdout.strip().splitlines()[-1]):
            ok = r["mean"] <= 1e-4 and r["score"] <= 1e-4
            print(f"{r['workload']:<11}{r['kernel']:<14}{r['t']:>5}{r['k']:>4}  {r['mean']:>8.1e}{r['score']:>9.1e}"
                  f"{r['weight']:>9.1e}{r['entropy']:>9.1e}  {'same' if r['same_count'] else 'DIFFER':<8}"
                  f"{r['same_source']:>7.1%}  {','.join(r['paths'])}{'' if ok else '  NOT within 1e-4'}", flush=True)
            rows.append(r)
    return rows


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


def _sweep(device: str = "cuda", problems: dict = SWEEP_PROBLEMS, gather: bool = False) -> list[dict]:
    """Time local_stats alone per tile configuration (SWEEP_CONFIGS) on SWEEP_PROBLEMS (rows, keys,
    D + 1) from a key table, and with gather also gather_stats on 28x28 images whose interior
    windows (k x k, D = k^2) make about as many keys; agreement with the module's configuration:
    largest relative difference of s, share of equal argmax."""
    import torch

    from elsviz.engine.tables import gather_layout
    from elsviz.kernels import triton as tk

    saved = (tk.BLOCK_R, tk.BLOCK_K, tk.BLOCK_D, tk.NUM_WARPS, tk.PRECISION)
    gen = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    print(f"\n{'problem':<30}{'BR,BK,BD,warps,precision':<27}{'time':>9}{'G logits/s':>12}{'TFLOP/s':>9}  s rel diff / same argmax",
          flush=True)
    try:
        for name, (nr, nk, dim) in problems.items():
            a, b = 0.7, 0.7  # t ~ 0.5
            qw = torch.rand(1, nr, dim - 1, generator=gen, device=device) * 2 - 1
            q = torch.cat([a / b**2 * qw, torch.full((1, nr, 1), -a * a / (2 * b * b), device=device)], -1)
            win = torch.rand(1, dim - 1, nk, generator=gen, device=device) * 2 - 1  # key windows
            keys = torch.cat([win, (win * win).sum(1, keepdim=True)], 1)  # [1, D + 1, K], the table's layout
            values = win[:, (dim - 1) // 2:(dim - 1) // 2 + 1].contiguous()  # [1, 1, K] the centres
            ways = {name: lambda blocks: tk.local_stats(q, keys.transpose(1, 2), values.transpose(1, 2), **blocks)}
            k = math.isqrt(dim - 1)
            if gather and k * k == dim - 1:
                d = k // 2
                inside = [u * 28 + v for u in range(d, 28 - d) for v in range(d, 28 - d)]
                imgs = torch.rand(max(1, nk // len(inside)), 1, 28, 28, generator=gen, device=device) * 2 - 1
                images, sq = gather_layout(imgs, k)
                pos = torch.tensor([inside], device=device)
                ways[f"{name} gather"] = lambda blocks: tk.gather_stats(q, images, sq, k, pos=pos, **blocks)
            for way, run in ways.items():
                ref = None
                for br, bk, bd, nw, prec in SWEEP_CONFIGS:
                    tk.NUM_WARPS, tk.PRECISION = nw, prec
                    blocks = dict(block_r=br, block_k=bk, block_d=bd)
                    try:
                        out = run(blocks)  # compiles
                        sync()
                        t0 = time.perf_counter()
                        for _ in range(3):
                            out = run(blocks)
                        sync()
                        dt = (time.perf_counter() - t0) / 3
                    except Exception as exc:  # a configuration that does not build: say so, go on
                        print(f"{way:<30}{br},{bk},{bd},{nw},{prec:<15} failed: {type(exc).__name__}: {str(exc)[:200]}",
                              flush=True)
                        continue
                    ref = ref or out
                    diff = float(((out[1] - ref[1]).abs() / ref[1]).max())
                    same = float((out[4] == ref[4]).float().mean())
                    n_keys = nk if way == name else pos.shape[1] * images.shape[-1]
                    row = {"problem": way, "config": [br, bk, bd, nw, prec], "s": dt, "logits_per_s": nr * n_keys / dt,
                           "tflops": 2 * nr * n_keys * dim / dt / 1e12, "s_rel_diff": diff, "same_arg": same}
                    rows.append(row)
                    cfg = f"{br},{bk},{bd},{nw},{prec}"
                    print(f"{way:<30}{cfg:<27}{dt * 1e3:>7.1f}ms{row['logits_per_s'] / 1e9:>12.0f}{row['tflops']:>9.1f}"
                          f"  {diff:.1e} / {same:.2%}", flush=True)
            del win, keys, values, q, ways
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
    p.add_argument("--kernels", default="torch,triton-table,triton",
                   help="any of torch, triton (the gather), and triton with options joined by '-': table (key "
                        "tables, no gather), dense (the gather takes every key, not the distinct ones), tf32x3 "
                        "(tl.dot on tensor cores, 3 passes), rN (BLOCK_R = N rows), kN (BLOCK_K = N keys); "
                        "e.g. triton-r128, triton-table-r128")
    p.add_argument("--suites", default="compiled,torch,kernel",
                   help="test suites: any of compiled, interpreted (needs triton 3.9; CI runs it), torch, kernel")
    p.add_argument("--profile", default="", help="workloads whose children also profile one trajectory")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--no-exact", action="store_true", help="skip the one-step exactness check")
    p.add_argument("--sweep", action="store_true", help="also time local_stats alone per tile configuration")
    p.add_argument("--json", default=None)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a smoke test of this script
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-exact", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workload", default=None, help=argparse.SUPPRESS)
    p.add_argument("--save", default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant", default="", help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.child:
        _child(ns)
        return 0
    if ns.child_exact:
        _exact_child(ns)
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
    report = {"gpu": gpu, "tests": {}, "rows": [], "sweep": [], "exact": []}
    if not ns.skip_tests:
        base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        plain = {k: v for k, v in os.environ.items() if k not in ("ELSVIZ_KERNEL", "TRITON_INTERPRET")}
        suites = {  # Triton's interpreter and its compiler cannot share a process: two runs
            "compiled": ("kernel compiled on cuda", base + KERNEL_CUDA_TESTS, plain),
            "interpreted": ("kernel interpreted", base + KERNEL_CUDA_TESTS[:2] + ["-k", "not cuda"],
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
    if not ns.no_exact:
        report["exact"] = _exact(ns)
    if ns.sweep and ns.device == "cuda":
        os.environ.pop("TRITON_INTERPRET", None)  # compiled, not interpreted
        report["sweep"] = _sweep(gather=True)
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
                      f"{met:<8}{str(res['kernel_on']):<11}{agree}  {','.join(res['paths'])}", flush=True)
                for w in res["warnings"]:
                    print(f"    warning: {w}", flush=True)
                if res.get("profile"):
                    print(res["profile"], flush=True)
    print("\n" + markdown(report["rows"], gpu), flush=True)
    return _write(report, ns.json)


def markdown(rows: list[dict], gpu: str) -> str:
    """The timings as a Markdown table for docs/BENCHMARKS.md: one row per workload, one column per
    kernel (median of the timed trajectories, cold in brackets), then the target."""
    kernels = list(dict.fromkeys(r["kernel"] for r in rows))
    head = f"| workload (20 steps, {gpu}) | " + " | ".join(kernels) + " | target |"
    lines = [head, "|---" * (len(kernels) + 2) + "|"]
    for workload in dict.fromkeys(r["workload"] for r in rows):
        cells = []
        for kernel in kernels:
            r = next((r for r in rows if r["workload"] == workload and r["kernel"] == kernel), None)
            if r is None or "error" in r:
                cells.append("-" if r is None else "failed")
                continue
            agree = f", {r['agreement']}" if r.get("agreement", "-") != "-" else ""
            cells.append(f"{statistics.median(r['times']):.2f} s (cold {r['cold']:.1f} s{agree})")
        target = TARGETS[workload]
        best = min((statistics.median(r["times"]) for r in rows if r["workload"] == workload and "times" in r),
                   default=float("inf"))
        lines.append(f"| {workload} | " + " | ".join(cells) + f" | <= {target:g} s: {'met' if best <= target else 'not met'} |")
    lines.append("\nEach cell: the median of the timed trajectories (the cold first one in brackets, with the final "
                 "image's relative L2 from the torch run's and the share of the last step's sources that agree).")
    return "\n".join(lines)


def _write(report: dict, path: str | None) -> int:
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
