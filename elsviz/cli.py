"""The `elsviz` command (also `python -m elsviz`).

    elsviz fetch mnist|fashion-mnist|cifar10 [--dir DIR] [--base-url URL]
    elsviz info  NAME_OR_PATH [-O key=value ...]
    elsviz sheet NAME_OR_PATH [-o sheet.png] [-O key=value ...]

Adding a sub-command: write a function that takes the parsed arguments and returns an exit code,
and register it with the decorator, naming its arguments with `arg` (same parameters as argparse's
add_argument):

    @command("sample", "run the reverse process and save the frames",
             arg("dataset"), arg("--steps", type=int, default=20))
    def _sample(args) -> int:
        ...
        return 0

Commands defined in another module register themselves when that module is imported: list the
module in COMMAND_MODULES. An ElsvizError raised by a command is printed as one line (exit 2).
"""
from __future__ import annotations

import argparse
import ast
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ElsvizError

COMMAND_MODULES: tuple[str, ...] = ()  # modules whose @command functions join the CLI


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    args: tuple[tuple[tuple, dict], ...]
    run: Callable[[argparse.Namespace], int | None]


COMMANDS: dict[str, Command] = {}


def arg(*names, **kwargs) -> tuple[tuple, dict]:
    """One argument of a sub-command, as for argparse's add_argument."""
    return names, kwargs


def command(name: str, help: str, *args: tuple[tuple, dict]):
    """Register the decorated function as `elsviz NAME`; it gets the parsed arguments."""
    def register(fn):
        if name in COMMANDS:
            raise ValueError(f"elsviz sub-command {name!r} is defined twice")
        COMMANDS[name] = Command(name, help, args, fn)
        return fn
    return register


def build_parser() -> argparse.ArgumentParser:
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="elsviz", description="Watch and question the Equivariant Local "
                                     "Score machine (Kamb & Ganguli, ICML 2025).")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        sub = subs.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for names, kwargs in cmd.args:
            sub.add_argument(*names, **kwargs)
        sub.set_defaults(_run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except ElsvizError as exc:
        print(f"elsviz {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"elsviz {args.command}: interrupted", file=sys.stderr)
        return 130


# -- datasets ------------------------------------------------------------------------------------
def _dataset_options(pairs: list[str]) -> dict:
    """-O key=value pairs -> load_dataset options; values are Python literals, else strings."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ElsvizError(f"-O expects key=value (e.g. -O size=32 -O classes=[0,1]), got {pair!r}.")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


DATASET_ARGS = (
    arg("dataset", nargs="?", default="digits",
        help="built-in name (digits, photos, hands), fetched set (mnist, fashion-mnist, cifar10) or a path"),
    arg("-O", "--option", action="append", metavar="KEY=VALUE",
        help="a load_dataset option, repeatable: -O size=32 -O limit=500 -O fingers=6"),
)


@command("fetch", "download MNIST, Fashion-MNIST or CIFAR-10 (checksums verified)",
         arg("name", metavar="DATASET", choices=["mnist", "fashion-mnist", "cifar10"],
             help="mnist, fashion-mnist or cifar10"),
         arg("--dir", default=None, help="folder for the files (default: where load_dataset(name) looks)"),
         arg("--base-url", default=None, help="another server holding the same file names"))
def _fetch(args) -> int:
    from .datasets.fetch import fetch

    folder = fetch(args.name, args.dir, base_url=args.base_url,
                   progress=lambda msg: print(f"{args.name}: {msg}", file=sys.stderr))
    print(folder)
    return 0


@command("info", "describe a training set: size, classes, source", *DATASET_ARGS)
def _info(args) -> int:
    from .datasets import load_dataset

    ims = load_dataset(args.dataset, **_dataset_options(args.option))
    c, h, w = ims.shape
    print(f"name:        {ims.name}")
    print(f"description: {ims.description}")
    print(f"images:      {len(ims):,} x {c} x {h} x {w}")
    if ims.labels is not None:
        counts = {ims.class_name(k): int((ims.labels == k).sum()) for k in ims.classes}
        print("classes:     " + ", ".join(f"{k} ({v})" for k, v in counts.items()))
    print(f"source:      {ims.source}")
    return 0


@command("sheet", "save a contact sheet (PNG) of a training set", *DATASET_ARGS,
         arg("-o", "--output", default=None, help="PNG file (default: dataset_NAME.png)"),
         arg("--zoom", type=int, default=3, help="pixels per image pixel (default 3)"))
def _sheet(args) -> int:
    from .datasets import contact_sheet, load_dataset

    ims = load_dataset(args.dataset, **_dataset_options(args.option))
    out = args.output or f"dataset_{ims.name}.png"
    contact_sheet(ims, zoom=args.zoom, path=out)
    print(out)
    return 0


# -- runs ------------------------------------------------------------------------------------------
def _k_arg(value: str):
    """--k: an odd int, a preset name, or a comma-separated schedule of `steps` ints."""
    if "," in value:
        return [int(v) for v in value.split(",")]
    try:
        return int(value)
    except ValueError:
        return value


@command("sample", "run the reverse process; save the output, an animation and its provenance map",
         *DATASET_ARGS,
         arg("--machine", default="bbels", choices=["is", "ls", "els", "bbels"]),
         arg("--k", type=_k_arg, default="mnist-resnet",
             help="window size k (odd), a preset (e.g. mnist-resnet) or k[0..steps-1] comma-separated"),
         arg("--steps", type=int, default=20),
         arg("--seed", type=int, default=0),
         arg("--label", type=int, default=None, help="class label (conditional generation)"),
         arg("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="output size (ELS, bbELS)"),
         arg("--device", default="auto"),
         arg("-o", "--out", default="elsviz-run", help="folder for final.png, run.gif, provenance.png"))
def _sample(args) -> int:
    from pathlib import Path

    from . import figures
    from .datasets import load_dataset
    from .engine import Engine
    from .sampling import sample

    train = load_dataset(args.dataset, **_dataset_options(args.option))
    engine = Engine(train, args.machine, args.device)
    shape = None if args.size is None else (train.channels, *args.size)

    def progress(frame):
        print(f"step {frame.i:>3}  t={frame.t:.3f}  k={frame.k}", file=sys.stderr)

    traj = sample(engine, steps=args.steps, k=args.k, label=args.label, seed=args.seed, shape=shape, callback=progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    last = traj.frames[-1]
    figures.picture(traj.final[0]).save(out / "final.png")
    (out / "run.gif").write_bytes(figures.animation_gif(traj))
    figures.provenance_picture(traj.final[0], last.source_index[0], last.source_pos[0], last.source_count[0]).save(
        out / "provenance.png")
    print(out)
    return 0
