"""The `elsviz` command (also `python -m elsviz`).

    elsviz fetch  mnist|fashion-mnist|cifar10 [--dir DIR] [--base-url URL]
    elsviz info   NAME_OR_PATH [-O key=value ...]
    elsviz sheet  NAME_OR_PATH [-o sheet.png] [--force] [-O key=value ...]
    elsviz sample NAME_OR_PATH [--machine M] [--k K] [--steps S] [--seed N] [-o FOLDER] [--mp4] [--npz] [--force] ...
                  [--ray [ADDRESS]] [--shards N]  (on a Ray cluster, docs/SCALING.md)
    elsviz app    [streamlit options, e.g. --server.port 8502]

Exit codes: 0 done; 2 bad usage (the command line does not parse; argparse prints the usage);
1 the command failed, with one line `elsviz NAME: error: ...` on stderr (the traceback only with
`--debug`, before or after the command name); 130 interrupted.

Adding a sub-command: write a function that takes the parsed arguments and returns an exit code,
and register it with the decorator, naming its arguments with `arg` (same parameters as argparse's
add_argument):

    @command("sample", "run the reverse process and save the frames",
             arg("dataset"), arg("--steps", type=int, default=20))
    def _sample(args) -> int:
        ...
        return 0

Commands defined in another module register themselves when that module is imported: list the
module in COMMAND_MODULES. Any exception a command raises becomes the one-line message and exit 1
(write an ElsvizError whose message says what to do); main() does that for every command.

Files a command writes go through `output_files`: a file that exists is refused unless --force
(add FORCE to the command's arguments), and everything is written to temporary files beside its
place and renamed into place only when the command succeeds, so a failure leaves nothing behind:

    @command("sheet", "...", arg("-o", "--output"), FORCE)
    def _sheet(args) -> int:
        with output_files([args.output], force=args.force) as tmp:
            picture.save(tmp[args.output])
        return 0

A command that hands unknown options on to another program (`elsviz app` to streamlit) is
registered with passthrough=True and finds them in args.passthrough.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import os
import secrets
import signal
import subprocess
import sys
import tomllib
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import ElsvizError

COMMAND_MODULES: tuple[str, ...] = ("elsviz.cli.networks",)  # modules whose @command functions join the CLI


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    args: tuple[tuple[tuple, dict], ...]
    run: Callable[[argparse.Namespace], int | None]
    passthrough: bool = False  # unknown options go to args.passthrough instead of being refused


COMMANDS: dict[str, Command] = {}


def arg(*names, **kwargs) -> tuple[tuple, dict]:
    """One argument of a sub-command, as for argparse's add_argument."""
    return names, kwargs


def command(name: str, help: str, *args: tuple[tuple, dict], passthrough: bool = False):
    """Register the decorated function as `elsviz NAME`; it gets the parsed arguments."""
    def register(fn):
        if name in COMMANDS:
            raise ValueError(f"elsviz sub-command {name!r} is defined twice")
        COMMANDS[name] = Command(name, help, args, fn, passthrough)
        return fn
    return register


DEBUG_HELP = "on an error, print the traceback as well as the message"


def build_parser() -> argparse.ArgumentParser:
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="elsviz", description="Watch and question the Equivariant Local "
                                     "Score machine (Kamb & Ganguli, ICML 2025).")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        sub = subs.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for names, kwargs in cmd.args:
            sub.add_argument(*names, **kwargs)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        sub.set_defaults(_run=cmd.run, _passthrough=cmd.passthrough)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `elsviz ARGV...`; returns the exit code (0 done, 1 failed, 2 bad usage, 130 interrupted)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "_passthrough", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse printed the usage (bad usage, 2) or the help (0)
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2
    args.passthrough = extra
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"elsviz {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure is one line (the traceback on request)
        if args.debug:
            traceback.print_exc()
        print(f"elsviz {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 1


def one_line(exc: BaseException) -> str:
    """The message of an exception on one line; a non-elsviz error is named and points to --debug."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (ElsvizError, OSError)):
        return text
    return f"{type(exc).__name__}: {text} (run with --debug for the traceback)"


# -- output files ----------------------------------------------------------------------------------
FORCE = arg("--force", action="store_true", help="overwrite output files that exist already")
DEVICE = arg("--device", default="auto",
             help="where the engine runs: auto (a CUDA GPU when there is one, else the CPU), cpu or cuda (default auto)")


class _Temporary:
    """tmp[path]: the temporary file to write in place of `path` (as given to output_files)."""

    def __init__(self, temps: dict[Path, Path]):
        self._temps = temps

    def __getitem__(self, path) -> Path:
        return self._temps[Path(path)]


@contextmanager
def output_files(paths: Iterable, *, force: bool = False) -> Iterator[_Temporary]:
    """Write the files `paths` all or none.

    Refuses (ElsvizError) when one of them exists, unless force. Inside the block the command
    writes tmp[path] (a hidden file beside path, with the same suffix, so writers that go by the
    suffix still work); when the block ends normally every file is renamed into place, and when it
    raises, the temporary files and the folders made for them are removed.
    """
    finals = [Path(p) for p in paths]
    for path in finals:
        if path.is_dir():
            raise ElsvizError(f"{path} is a folder; give a file name for the output.")
    if not force:
        existing = [str(p) for p in finals if p.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise ElsvizError(f"{existing[0]}{more} exists already; pass --force to overwrite, or write elsewhere.")
    made: list[Path] = []  # folders created here, outermost first
    for path in finals:
        missing, folder = [], path.parent.absolute()
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            folder.mkdir()
            made.append(folder)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    temps = {p: p.with_name(f".{p.name}.{token}.partial{p.suffix}") for p in finals}
    try:
        yield _Temporary(temps)
        for path, tmp in temps.items():
            if not tmp.is_file():
                raise RuntimeError(f"the command wrote no {path}")
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise


# -- datasets ------------------------------------------------------------------------------------
def dataset_options(pairs: list[str]) -> dict:
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
    from ..datasets.fetch import fetch

    folder = fetch(args.name, args.dir, base_url=args.base_url,
                   progress=lambda msg: print(f"{args.name}: {msg}", file=sys.stderr))
    print(folder)
    return 0


@command("info", "describe a training set: size, classes, source", *DATASET_ARGS)
def _info(args) -> int:
    from ..datasets import load_dataset

    ims = load_dataset(args.dataset, **dataset_options(args.option))
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
         arg("--zoom", type=int, default=3, help="pixels per image pixel (default 3)"), FORCE)
def _sheet(args) -> int:
    from ..datasets import contact_sheet, load_dataset

    ims = load_dataset(args.dataset, **dataset_options(args.option))
    out = args.output or f"dataset_{ims.name}.png"
    with output_files([out], force=args.force) as tmp:
        contact_sheet(ims, zoom=args.zoom).save(tmp[out], format="PNG")
    print(out)
    return 0


# -- runs ------------------------------------------------------------------------------------------
def k_arg(value: str):
    """--k: an odd int, a preset name, or a comma-separated schedule of `steps` ints."""
    if "," in value:
        return [int(v) for v in value.split(",")]
    try:
        return int(value)
    except ValueError:
        return value


@command("sample", "run the reverse process; save the output, an animation and its provenance map",
         *DATASET_ARGS,
         arg("--machine", default="bbels", choices=["is", "ls", "els", "bbels"],
             help="is: the ideal score (gives back training images); ls: local; els: local and equivariant; "
                  "bbels: els with the border broken, as a zero-padded network (default bbels)"),
         arg("--k", type=k_arg, default="mnist-resnet",
             help="window size k (odd), a preset (e.g. mnist-resnet) or k[0..steps-1] comma-separated "
                  "(default mnist-resnet)"),
         arg("--steps", type=int, default=20, help="reverse-diffusion steps (default 20, as the paper)"),
         arg("--seed", type=int, default=0, help="seed of the starting noise: the same seed, the same run (default 0)"),
         arg("--label", type=int, default=None, help="class label (conditional generation)"),
         arg("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="output size (ELS, bbELS)"),
         DEVICE,
         arg("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
             help="run on a Ray cluster, the training set split into shards (pip install elsviz[cluster]): at ADDRESS "
                  "(host:port), or without one at $ELSVIZ_RAY_ADDRESS, else on a new local cluster; "
                  "$ELSVIZ_RAY_ADDRESS alone also turns it on (docs/SCALING.md)"),
         arg("--shards", type=int, default=None,
             help="with --ray: shards of the training set (default one per GPU of the cluster, else per CPU)"),
         arg("-o", "--out", default="elsviz-run",
             help="folder for final.png, run.gif, provenance.png (and run.mp4, run.npz)"),
         arg("--mp4", action="store_true", help="also write run.mp4: the run as a video for slides (H.264, the "
                                                "app's 'MP4' download; needs PyAV: pip install av)"),
         arg("--npz", action="store_true", help="also write run.npz: every step's images and provenance as arrays "
                                                "(the app's 'Numbers' download; its README entry describes them)"),
         FORCE)
def _sample(args) -> int:
    from .. import export, figures
    from ..datasets import load_dataset
    from ..engine import Engine
    from ..app.runs import RunSpec
    from ..sampling import sample

    train = load_dataset(args.dataset, **dataset_options(args.option))
    engine = run_engine(Engine, train, args)
    shape = None if args.size is None else (train.channels, *args.size)

    def progress(frame):
        print(f"step {frame.i:>3}  t={frame.t:.3f}  k={frame.k}", file=sys.stderr)

    out = Path(args.out)
    if args.mp4:
        export.video_codec()  # without PyAV: say so before the run
    files = ([out / "final.png", out / "run.gif", out / "provenance.png"] + ([out / "run.mp4"] if args.mp4 else [])
             + ([out / "run.npz"] if args.npz else []))
    with output_files(files, force=args.force) as tmp:  # refused before the run if they exist
        traj = sample(engine, steps=args.steps, k=args.k, label=args.label, seed=args.seed, shape=shape,
                      callback=progress)
        last = traj.frames[-1]
        figures.picture(traj.final[0]).save(tmp[out / "final.png"])
        tmp[out / "run.gif"].write_bytes(export.run_gif(traj))
        if args.mp4:  # the same file as the app's download of this run
            tmp[out / "run.mp4"].write_bytes(export.run_mp4(traj))
        figures.provenance_picture(traj.final[0], last.source_index[0], last.source_pos[0],
                                   last.source_count[0]).save(tmp[out / "provenance.png"])
        if args.npz:  # the same file as the app's download of this run
            k = tuple(args.k) if isinstance(args.k, list) else args.k
            spec = RunSpec(machine=args.machine, k=k, steps=args.steps, seed=args.seed, label=args.label,
                           size=None if args.size is None else tuple(args.size))
            tmp[out / "run.npz"].write_bytes(export.npz_bytes(traj, spec=spec, dataset=train.name))
    print(out)
    return 0


def run_engine(engine_class, train, args):
    """The engine of a run: on a Ray cluster where --ray or $ELSVIZ_RAY_ADDRESS asks for it (where it
    runs goes to stderr), else on --device."""
    from ..cluster import ENV

    address = args.ray if args.ray is not None else os.environ.get(ENV)
    if address is None:
        if args.shards is not None:
            raise ElsvizError(f"--shards splits the training set over a Ray cluster: add --ray (or set {ENV}).")
        return engine_class(train, args.machine, args.device)
    engine = engine_class(train, args.machine, device="ray", shards=args.shards, address=address or None)
    print(f"runs on: {engine.describe()}", file=sys.stderr)
    return engine


# -- the app ---------------------------------------------------------------------------------------
def app_script() -> Path:
    """The app.py that belongs to this elsviz (beside the package, with app_pages/ and .streamlit/)."""
    script = Path(__file__).resolve().parents[2] / "app.py"
    if not (script.is_file() and (script.parent / "app_pages").is_dir()):
        raise ElsvizError(f"The app's files (app.py, app_pages/) are not beside this elsviz package ({script.parent}): "
                          "install elsviz from a clone with `pip install -e .`, or run `streamlit run app.py` there.")
    return script


def app_settings(script: Path) -> list[str]:
    """The app's own .streamlit/config.toml as streamlit options, so that `elsviz app` started from
    any folder runs the app as `streamlit run app.py` in the clone does (no file watcher, ...)."""
    config = script.parent / ".streamlit" / "config.toml"
    if not config.is_file():
        return []
    flags = []
    for section, options in tomllib.loads(config.read_text()).items():
        for key, value in options.items():
            if isinstance(value, (bool, int, float, str)):
                text = str(value).lower() if isinstance(value, bool) else str(value)
                flags.append(f"--{section}.{key}={text}")
    return flags


@command("app", "start the app (streamlit run app.py); other options go to streamlit, e.g. --server.port 8502",
         passthrough=True)
def _app(args) -> int:
    script = app_script()
    # the user's options come last: they win over the app's settings
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), *app_settings(script), *args.passthrough]
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C: a normal end
        try:  # in a terminal streamlit had the signal too; a second one while it stops would kill it
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # only this process was interrupted: pass it on
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
        return 0 if code == -signal.SIGINT else code
