"""`elsviz train`, `elsviz calibrate`, `elsviz compare`: a trained network against the machines.

    elsviz train --dataset digits --out nets/digits-resnet          # about 6 CPU-minutes
    elsviz calibrate nets/digits-resnet                             # the schedule, saved beside it
    elsviz compare nets/digits-resnet --seeds 32                    # agreement per seed and the medians
    elsviz networks                                                 # the bundled ones and those trained here

Progress goes to stderr, the one-line summary to stdout.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .commands import DEVICE, FORCE, dataset_options, k_arg, arg, command, output_files
from ..errors import ElsvizError

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
         arg("--machine", default="bbels", choices=["ls", "els", "bbels"],
             help="the machine whose window sizes are fitted: ls, els or bbels (default bbels; IS has no window)"),
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


@command("compare", "run a network and the machines from the same noise: agreement per seed, medians, bbELS vs IS",
         arg("network", metavar="DIR", help="a network folder written by elsviz train"),
         arg("--seeds", type=int, default=32, help="number of seeds (default 32)"),
         arg("--first-seed", type=int, default=0,
             help="the seeds are first-seed, first-seed + 1, ... (default 0; calibrate uses 1000 on)"),
         arg("--k", type=k_arg, default=None,
             help="the machines' schedule: default the calibrated one; or an odd k, a preset, or k per step"),
         arg("--steps", type=int, default=20, help="the machines' steps (default 20)"),
         arg("--network-steps", type=int, nargs="+", default=[20, 150], help="the network's steps (default 20 150)"),
         arg("--machines", nargs="+", default=["bbels", "els", "ls", "is"], choices=["bbels", "els", "ls", "is"],
             help="the machines run against the network (default bbels els ls is)"),
         arg("--label", type=int, default=None, help="class label (conditional networks)"),
         arg("--json", default=None,
             help="write every figure to this JSON file (with the calibrated schedule, DIR/compare.json is "
                  "written too)"),
         arg("--figure", default=None, help="save the seeds x [network | machines] grid as a PNG"),
         DEVICE,
         FORCE,
         *NETWORK_DATASET_ARGS)
def _compare(args) -> int:
    from .. import figures
    from ..analysis.compare import NAMES, compare
    from ..networks import atomic_write, load_network

    net = load_network(args.network)
    train = _dataset_for(net, args)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    extra = [p for p in (args.json, args.figure) if p]
    existing = [p for p in extra if Path(p).exists()]
    if existing and not args.force:  # refused before the long run, not after it
        raise ElsvizError(f"{existing[0]} exists already; pass --force to overwrite, or write elsewhere.")
    _say(f"comparing {net.describe()} with {', '.join(NAMES[m] for m in args.machines)} on {len(seeds)} seeds")
    start = time.perf_counter()
    last = [None]

    def progress(what, done, total):
        if last[0] != what:
            last[0] = what
            _say(f"{what} ...  ({time.perf_counter() - start:.0f} s)")

    result = compare(net, train, seeds, args.k, steps=args.steps, network_steps=args.network_steps,
                     machines=args.machines, label=args.label, device=args.device, progress=progress)
    main = result.main_network
    head = "seed  " + "  ".join(f"{NAMES[m]:>6}" for m in args.machines) + f"   (agreement with the {main})"
    _say(head)
    for s, seed in enumerate(seeds):
        _say(f"{seed:>4}  " + "  ".join(f"{result.agreement[main][m][s]:6.3f}" for m in args.machines))
    data = result.to_json()
    data.update(network=net.describe(), weights_sha256=net.config["weights_sha256"],
                seconds=round(time.perf_counter() - start, 1))
    text = json.dumps(data, indent=1).encode()
    out = Path(args.json) if args.json else None
    if args.k is None:  # the calibrated schedule: the network's own record, shown by the app
        out = Path(net.path) / "compare.json"
        atomic_write(out, lambda f: f.write(text))
    with output_files(extra, force=args.force) as tmp:
        if args.json:
            tmp[args.json].write_bytes(text)
        if args.figure:
            figures.network_grid(result, columns=["network", *args.machines]).save(tmp[args.figure])
    print(result.summary() + f" ({time.perf_counter() - start:.0f} s)" + (f" -> {out}" if out else ""))
    return 0
