"""`elsviz train`, `elsviz calibrate`, `elsviz compare`: a trained network against the machines.

    elsviz train --dataset digits --out nets/digits-resnet          # about 6 CPU-minutes
    elsviz calibrate nets/digits-resnet                             # the schedule, saved beside it
    elsviz compare nets/digits-resnet --seeds 32                    # agreement per seed and the medians
    elsviz compare nets/digits-resnet --seeds 4 --machines all      # every machine, both modes
    elsviz networks                                                 # the bundled ones and those trained here

Progress and the tables go to stderr, the one-line summary to stdout.
"""
from __future__ import annotations

import ast
import json
import sys
import time
from pathlib import Path

from .commands import DEVICE, FORCE, dataset_options, k_arg, arg, command, output_files
from ..analysis.compare import LOCAL_MACHINES, MACHINE_ORDER, MODES
from ..errors import ElsvizError
from ..machines import BY_KEY, MACHINES

TRAIN_STEPS = 2000  # the digits ResNet: about 6 CPU-minutes (docs/AGREEMENT.md)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _dataset_for(network, args):
    """The network's training set: --dataset (with -O) when given, else the one its config.json names."""
    from ..datasets import load_dataset

    if args.dataset:
        return load_dataset(args.dataset, **dataset_options(args.option))
    try:
        return network.train.load()
    except ElsvizError as err:
        raise ElsvizError(f"Could not load the network's training set {network.train.source!r} ({err}) "
                          "Give it with --dataset PATH.") from None


NETWORK_DATASET_ARGS = (
    arg("--dataset", default=None, help="the training set, when it is not where config.json says (default: that one)"),
    arg("-O", "--option", action="append", metavar="KEY=VALUE", help="a load_dataset option for --dataset, repeatable"),
)


@command("train", "train a denoising network (ResNet or UNet) on a training set; writes a checkpoint folder",
         arg("--dataset", default="digits", help="built-in name, fetched set or path (default digits)"),
         arg("-O", "--option", action="append", metavar="KEY=VALUE",
             help="a load_dataset option, repeatable: -O size=16 -O limit=2000"),
         arg("--out", required=True, help="checkpoint folder (config.json, weights, training state)"),
         arg("--arch", default="resnet", choices=["resnet", "unet"],
             help="resnet: convolutions only (what ELS models); unet: with one self-attention block"),
         arg("--width", type=int, default=None, help="channels (default: resnet 48, unet 32)"),
         arg("--layers", type=int, default=None,
             help="residual blocks (resnet, default 6) or blocks per level (unet, 1)"),
         arg("--steps", type=int, default=TRAIN_STEPS, help=f"optimiser steps in all (default {TRAIN_STEPS})"),
         arg("--batch", type=int, default=64, help="images per step (default 64)"),
         arg("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)"),
         arg("--conditional", action="store_true", help="class-conditional (needs labels)"),
         arg("--seed", type=int, default=0,
             help="seed of the initial weights and of the batches and noise drawn in training (default 0)"),
         arg("--save-every", type=int, default=250, help="checkpoint every N steps (default 250)"),
         arg("--resume", action="store_true", help="continue the run in --out (to --steps in all)"),
         DEVICE)
def _train(args) -> int:
    from ..datasets import load_dataset
    from ..networks import train_network

    options = dataset_options(args.option)
    train = load_dataset(args.dataset, **options)
    _say(f"training a {args.arch} on {train.name} ({len(train):,} images, {'x'.join(map(str, train.shape))}) "
         f"into {args.out}")
    start = time.perf_counter()
    last = [0.0]

    def progress(p):
        now = time.perf_counter()
        if now - last[0] >= 5 or p.step == p.steps:
            last[0] = now
            _say(p.describe())

    try:
        net = train_network(train, args.out, arch=args.arch, width=args.width, layers=args.layers,
                            conditional=args.conditional, steps=args.steps, batch=args.batch, lr=args.lr,
                            seed=args.seed, save_every=args.save_every, resume=args.resume, device=args.device,
                            source=args.dataset, options=options, progress=progress, report_every=10,
                            threads="auto")
    except KeyboardInterrupt:
        _say(f"elsviz train: interrupted. The last checkpoint in {args.out} is kept; continue with "
             f"elsviz train --resume --out {args.out} --dataset {args.dataset}")
        return 130
    minutes = (time.perf_counter() - start) / 60
    print(f"trained {net.describe()} in {minutes:.1f} min, loss {net.config['training']['loss']:.4f} -> {args.out}")
    return 0


@command("networks", "list the networks the app and load_network find: the bundled ones, then those trained here")
def _networks(args) -> int:
    from ..networks import catalogue, default_network_dir, read_config, read_schedule

    found = catalogue()
    if not found:
        print(f"no networks: none bundled, none in {default_network_dir()} (elsviz train --out puts one anywhere)")
    for label, folder in found.items():
        try:
            c = read_config(folder)
            cal = read_schedule(folder, c)
        except ElsvizError as err:
            print(f"{label}  {folder}\n    unreadable: {err}")
            continue
        d, tr = c["dataset"], c["training"]
        loss = "" if tr.get("loss") is None else f", loss {tr['loss']:.4f}"
        sched = ("not calibrated" if cal is None else
                 f"calibrated, k from step {len(cal['schedule']) - 1} to 0: {' '.join(map(str, cal['schedule'][::-1]))}")
        print(f"{label}  {folder}\n    {c['arch']}, width {c['width']}, on {d['name']} "
              f"{'x'.join(map(str, d['shape'][1:]))} ({d['n']:,} images); {tr['steps_done']:,} of {tr['steps']:,} "
              f"steps{loss}; {sched}")
    return 0


@command("calibrate", "fit a machine's locality schedule to a trained network (saved beside it as schedule.json)",
         arg("network", metavar="DIR", help="a network folder written by elsviz train"),
         arg("--seeds", type=int, default=10, help="samples whose median gives the schedule (default 10)"),
         arg("--first-seed", type=int, default=1000,
             help="default 1000, so that compare's seeds 0, 1, ... are not the ones calibrated on"),
         arg("--steps", type=int, default=20, help="reverse-diffusion steps (default 20, as the paper)"),
         arg("--machine", default="bbels", choices=list(LOCAL_MACHINES),
             help=f"the machine whose window sizes are fitted, one with a k: {', '.join(LOCAL_MACHINES)} (default "
                  "bbels; the others have no window). Its schedule becomes the network's schedule.json"),
         arg("--label", type=int, default=None, help="class label (conditional networks)"),
         DEVICE,
         *NETWORK_DATASET_ARGS)
def _calibrate(args) -> int:
    from ..analysis.compare import calibration
    from ..engine import Engine
    from ..networks import load_network, save_schedule

    net = load_network(args.network)
    train = _dataset_for(net, args)
    engine = Engine(train, args.machine, args.device)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    _say(f"calibrating {args.machine} against {net.describe()}: {len(seeds)} seeds, {args.steps} steps")
    start = time.perf_counter()

    def progress(done, total):
        _say(f"step {done}/{total}  {time.perf_counter() - start:.0f} s")

    cal = calibration(net, engine, seeds, args.steps, label=args.label, progress=progress)
    # which images the machine searched: the network's own set, or the --dataset given (a subset, when the
    # full set would take hours on a CPU), so that a schedule says what it was fitted with
    used = {"name": train.name, "n": len(train), "shape": list(train.shape),
            "source": args.dataset or net.train.source,
            "options": dataset_options(args.option) if args.dataset else dict(net.train.options)}
    file = save_schedule(net, {**cal.to_json(), "train": used, "seconds": round(time.perf_counter() - start, 1)})
    print(f"{args.machine} schedule k[0..{args.steps - 1}] = {' '.join(map(str, cal.schedule))} "
          f"({len(seeds)} seeds, {time.perf_counter() - start:.0f} s) -> {file}")
    return 0


def machine_option_pairs(pairs: list[str] | None) -> dict[str, dict]:
    """--machine-option MACHINE.NAME=VALUE pairs -> compare's options {machine: {name: value}} (values are
    Python literals, else strings; compare checks the names and values)."""
    out: dict[str, dict] = {}
    for pair in pairs or []:
        head, sep, value = pair.partition("=")
        machine, dot, name = head.partition(".")
        if not sep or not dot or not machine.strip() or not name.strip():
            raise ElsvizError(f"--machine-option expects MACHINE.NAME=VALUE (e.g. pca.threshold=0.05, cfdm.samples=20), "
                              f"got {pair!r}.")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        out.setdefault(machine.strip().lower(), {})[name.strip()] = value
    return out


def _settings_help() -> str:
    return "; ".join(f"{m}.{o.name} ({o.help})" for m in MACHINES for o in BY_KEY[m].options)


@command("compare", "run a network and the machines from the same noise: agreement and r^2 per seed, per step and "
                    "at the end, on each machine's own trajectory and on the network's",
         arg("network", metavar="DIR", help="a network folder written by elsviz train"),
         arg("--seeds", type=int, default=32, help="number of seeds (default 32)"),
         arg("--first-seed", type=int, default=0,
             help="the seeds are first-seed, first-seed + 1, ... (default 0; calibrate uses 1000 on)"),
         arg("--k", type=k_arg, default=None,
             help=f"the schedule of the machines with a window ({', '.join(LOCAL_MACHINES)}; each clamped to the k "
                  "it takes): default the calibrated one; or an odd k, a preset, or k per step. Machines without "
                  "k ignore it"),
         arg("--steps", type=int, default=20, help="the machines' steps (default 20)"),
         arg("--network-steps", type=int, nargs="+", default=[20, 150], help="the network's steps (default 20 150)"),
         arg("--machines", nargs="+", default=list(MACHINE_ORDER), metavar="M",
             help=f"the machines run against the network: keys ({', '.join(MACHINES)}), comma- or space-separated, "
                  f"or all for every one (default {' '.join(MACHINE_ORDER)})"),
         arg("--modes", default="own,network", metavar="MODES",
             help="; ".join(f"{mode}: {what}" for mode, what in MODES.items())
                  + "; comma-separated (default own,network)"),
         arg("-M", "--machine-option", action="append", metavar="MACHINE.NAME=VALUE",
             help="a machine's own setting, repeatable: " + _settings_help()),
         arg("--label", type=int, default=None, help="class label (conditional networks)"),
         arg("--json", default=None,
             help="write every figure to this JSON file (with the calibrated schedule, DIR/compare.json is "
                  "written too)"),
         arg("--csv", default=None,
             help="write one row per seed to this CSV file: final agreement and r^2 per machine and network run, "
                  "the baselines, and every step of both modes"),
         arg("--figure", default=None, help="save the seeds x [network | machines] grid as a PNG (needs mode own)"),
         DEVICE,
         FORCE,
         *NETWORK_DATASET_ARGS)
def _compare(args) -> int:
    from .. import export, figures
    from ..analysis.compare import NAMES, compare, machine_keys, mode_keys
    from ..networks import atomic_write, load_network

    machines, modes = machine_keys(args.machines), mode_keys(args.modes)  # refused before anything loads
    options = machine_option_pairs(args.machine_option)
    if args.figure and "own" not in modes:
        raise ElsvizError("--figure draws the machines' own outputs: add own to --modes, or leave --figure out.")
    net = load_network(args.network)
    train = _dataset_for(net, args)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    extra = [p for p in (args.json, args.csv, args.figure) if p]
    existing = [p for p in extra if Path(p).exists()]
    if existing and not args.force:  # refused before the long run, not after it
        raise ElsvizError(f"{existing[0]} exists already; pass --force to overwrite, or write elsewhere.")
    _say(f"comparing {net.describe()} with {', '.join(NAMES[m] for m in machines)} on {len(seeds)} seeds")
    start = time.perf_counter()
    last = [None]

    def progress(what, done, total):
        if last[0] != what:
            last[0] = what
            _say(f"{what} ...  ({time.perf_counter() - start:.0f} s)")

    result = compare(net, train, seeds, args.k, steps=args.steps, network_steps=args.network_steps,
                     machines=machines, modes=modes, options=options, label=args.label, device=args.device,
                     progress=progress)
    for line in report_lines(result):
        _say(line)
    data = result.to_json()
    data.update(network=net.describe(), weights_sha256=net.config["weights_sha256"],
                seconds=round(time.perf_counter() - start, 1))
    text = json.dumps(data, indent=1).encode()
    out = Path(args.json) if args.json else None
    if args.k is None and result.schedule:  # the calibrated schedule: the network's own record, shown by the app
        out = Path(net.path) / "compare.json"
        atomic_write(out, lambda f: f.write(text))
    with output_files(extra, force=args.force) as tmp:
        if args.json:
            tmp[args.json].write_bytes(text)
        if args.csv:
            tmp[args.csv].write_bytes(export.csv_bytes(result.table()))
        if args.figure:
            figures.network_grid(result, columns=["network", *machines]).save(tmp[args.figure])
    print(result.summary() + f" ({time.perf_counter() - start:.0f} s)" + (f" -> {out}" if out else ""))
    return 0


def report_lines(result) -> list[str]:
    """What `elsviz compare` prints: the agreement per seed (mode own), then a table per machine: the final
    medians and, step by step, the medians of agreement and r^2 in each mode run."""
    from ..analysis.compare import NAMES, median

    main = result.main_network
    own = [m for m in result.machines if m in result.agreement.get(main, {})]
    lines = []
    if own:
        width = {m: max(6, len(NAMES[m])) for m in own}
        lines.append("seed  " + "  ".join(f"{NAMES[m]:>{width[m]}}" for m in own) + f"   (agreement with the {main})")
        for s, seed in enumerate(result.seeds):
            lines.append(f"{seed:>4}  " + "  ".join(f"{result.agreement[main][m][s]:{width[m]}.3f}" for m in own))
    nets = {result.network_key(n, result.steps): f"network {n} steps" for n in result.network_steps}
    cols = [(mode, metric) for mode in result.modes for metric in ("agreement", "r2")]
    heads = {("own", "agreement"): "own agr", ("own", "r2"): "own r^2",
             ("network", "agreement"): "net x_t agr", ("network", "r2"): "net x_t r^2"}
    for m in result.machines:
        lines.append("")
        lines.append(f"{NAMES[m]} (medians over {len(result.seeds)} seed{'s' if len(result.seeds) > 1 else ''})")
        if m in own:
            lines.append("  final, own trajectory: " + "; ".join(
                f"{said}: agreement {median(result.agreement[net][m]):.3f}, r^2 {median(result.r2[net][m]):.3f}"
                for net, said in nets.items()))
        path = result.network_path_agreement.get(m)
        if path:
            last = min(path)
            lines.append(f"  final, on the network's x_t (step {last}): agreement {median(path[last]):.3f}, "
                         f"r^2 {median(result.network_path_r2[m][last]):.3f}")
        curves = {c: dict(result.curve(m, *c)) for c in cols}
        steps = sorted({i for c in curves.values() for i in c}, reverse=True)
        if steps:
            lines.append("  step  " + "  ".join(f"{heads[c]:>11}" for c in cols))
            for i in steps:
                lines.append(f"  {i:>4}  " + "  ".join(
                    f"{curves[c][i]:11.3f}" if i in curves[c] else " " * 11 for c in cols))
    return lines
