"""A trained network as a denoiser (Network) and its folder on disk: config.json, the weights with their
sha256, the training state and schedule.json, written atomically and checked on the way in; the catalogue."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..engine import resolve_device
from ..errors import ElsvizError
from ..schedule import alpha_sigma, check_t
from .models import ARCHS, build_model

FORMAT = "elsviz-network"
VERSION = 1
CONFIG = "config.json"
SCHEDULE = "schedule.json"


@dataclass
class NetworkPosterior:
    """What a network says about x at time t: mean [B, C, H, W] = (x - b_t eps) / a_t, its score and eps."""

    mean: torch.Tensor
    score: torch.Tensor
    eps: torch.Tensor
    t: float
    k: None = None


@dataclass(frozen=True)
class TrainedOn:
    """What a network was trained on: enough to draw noise of the right shape and to reload the set."""

    name: str
    shape: tuple[int, int, int]  # (C, H, W)
    n: int
    source: str  # what load_dataset takes: a built-in name or a path
    options: dict = field(default_factory=dict)
    classes: tuple[int, ...] = ()

    @property
    def channels(self) -> int:
        return self.shape[0]

    def load(self):
        """The training set itself (load_dataset(source, **options))."""
        from ..datasets import load_dataset

        return load_dataset(self.source, **self.options)


class Network:
    """A trained eps-network as a denoiser for `sample`: `denoise(x, t, k=None, label=None).mean`.

    k is ignored (a network has no window). `train` says what it was trained on (sample() takes
    the image shape from it), `schedule` is its calibrated locality schedule (or None), `path`
    its checkpoint folder.
    """

    def __init__(self, model: nn.Module, config: dict, path: Path | None = None, device="cpu",
                 schedule: dict | None = None):
        self.model = model.to(device).eval()
        self.config = config
        self.path = path
        self.device = torch.device(device)
        d = config["dataset"]
        self.train = TrainedOn(d["name"], tuple(d["shape"]), int(d["n"]), d["source"], dict(d.get("options") or {}),
                               tuple(d.get("classes") or ()))
        self.calibration = schedule

    # -- what it is ---------------------------------------------------------------------------
    @property
    def arch(self) -> str:
        return self.config["arch"]

    @property
    def num_classes(self) -> int | None:
        return self.config.get("num_classes")

    @property
    def schedule(self) -> list[int] | None:
        """The calibrated locality schedule k[0..steps-1], or None before `elsviz calibrate`."""
        return None if self.calibration is None else list(self.calibration["schedule"])

    @property
    def steps_done(self) -> int:
        return int(self.config["training"]["steps_done"])

    @property
    def steps_total(self) -> int:
        return int(self.config["training"]["steps"])

    @property
    def finished(self) -> bool:
        return self.steps_done >= self.steps_total

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> str:
        """One line: 'ResNet (6 layers, width 48, 0.20M parameters) on digits 16x16, 2,000 of 2,000 steps'."""
        c = self.config
        _, h, w = self.train.shape
        cond = ", class-conditional" if self.num_classes else ""
        done = f"{self.steps_done:,} of {self.steps_total:,} steps" + ("" if self.finished else " (unfinished)")
        name = "ResNet" if self.arch == "resnet" else "UNet + attention"
        return (f"{name} ({c['layers']} layers, width {c['width']}, {self.n_parameters() / 1e6:.2f}M parameters{cond}) "
                f"on {self.train.name} {h}x{w}, {done}")

    def __repr__(self):
        return f"Network({self.describe()!r}, path={str(self.path) if self.path else None!r})"

    # -- as a denoiser ------------------------------------------------------------------------
    def _check(self, x, label):
        if not isinstance(x, torch.Tensor):
            raise ElsvizError(f"x must be a torch tensor [B, C, H, W], got {type(x).__name__}.")
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[1] != self.train.channels:
            raise ElsvizError(f"x must be [B, {self.train.channels}, H, W] for this network "
                              f"(trained on {self.train.channels}-channel images), got {tuple(x.shape)}.")
        if self.arch == "unet" and (x.shape[-2] % 4 or x.shape[-1] % 4):
            raise ElsvizError(f"The UNet needs a height and width divisible by 4, got {tuple(x.shape[-2:])}.")
        if label is not None:
            if not self.num_classes:
                raise ElsvizError("This network is unconditional: it cannot generate one class. Drop the label, or "
                                  "train a class-conditional network (elsviz train --conditional).")
            if not (0 <= int(label) < self.num_classes):
                raise ElsvizError(f"label must be a class of the training set, 0 .. {self.num_classes - 1}, "
                                  f"got {label}.")
            label = torch.full((x.shape[0],), int(label), dtype=torch.int64, device=self.device)
        return x.to(self.device, torch.float32), label

    @torch.no_grad()
    def eps(self, x: torch.Tensor, t: float, label: int | None = None) -> torch.Tensor:
        """The predicted noise of x [B, C, H, W] at time t."""
        x, lab = self._check(x, label)
        tt = torch.full((x.shape[0],), check_t(t), device=self.device)
        return self.model(x, tt, lab)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, t: float, k=None, label: int | None = None) -> NetworkPosterior:
        """Tweedie's posterior mean (x - b_t eps) / a_t and the score -eps / b_t; k is ignored."""
        x, _ = self._check(x, None)
        eps = self.eps(x, t, label)
        a, b = alpha_sigma(float(t))
        return NetworkPosterior(mean=(x - b * eps) / a, score=-eps / b, eps=eps, t=float(t))


def atomic_write(path: Path, write: Callable[[object], None]) -> None:
    """write(file) into a temporary file beside path, flushed to disk, then renamed onto path."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def file_sha256(path: Path) -> str:
    """The sha256 of a file, as config.json records it for the weights."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(folder: Path, config: dict, weights: dict, state: dict) -> None:
    """Write one checkpoint into folder; a run killed at any moment leaves the previous one whole.

    A checkpoint is config.json (architecture, training set, training progress, the name and sha256 of
    the weights file), the EMA weights that sampling uses as a state_dict (model-STEP.pt) and the
    training state for resuming (train-STEP.pt); calibration adds schedule.json. Each file is written
    under a temporary name and renamed, config.json last (it points at the new files); then the
    previous step's files go.
    """
    folder.mkdir(parents=True, exist_ok=True)
    step = int(config["training"]["steps_done"])
    wname, sname = f"model-{step:07d}.pt", f"train-{step:07d}.pt"
    atomic_write(folder / wname, lambda f: torch.save(weights, f))
    atomic_write(folder / sname, lambda f: torch.save(state, f))
    config = dict(config, weights=wname, weights_sha256=file_sha256(folder / wname), train_state=sname)
    atomic_write(folder / CONFIG, lambda f: f.write(json.dumps(config, indent=1).encode()))
    for old in list(folder.glob("model-*.pt")) + list(folder.glob("train-*.pt")):
        if old.name not in (wname, sname):
            old.unlink(missing_ok=True)


def _folder(path) -> Path:
    p = Path(path).expanduser()
    if p.is_file():
        if p.name == CONFIG or (p.parent / CONFIG).is_file():
            return p.parent
        raise ElsvizError(f"{p} is a file, not a network folder. Give the folder `elsviz train --out` wrote (it holds "
                          "config.json and the weights); a bare weights file says nothing about its architecture.")
    return p


def read_config(path) -> dict:
    """The checked config.json of a network folder (ElsvizError when missing, corrupt or incomplete)."""
    folder = _folder(path)
    if not folder.exists():
        raise ElsvizError(f"{folder} does not exist. Train a network into it first: "
                          f"elsviz train --dataset digits --out {folder}")
    cfg_path = folder / CONFIG
    if not cfg_path.is_file():
        partial = any(folder.glob(".*.tmp-*")) or any(folder.glob("*.pt"))
        why = (" Training seems to have stopped before its first checkpoint was saved; train again."
               if partial else " Train one with: elsviz train --dataset digits --out " + str(folder))
        raise ElsvizError(f"{folder} holds no {CONFIG}, so it is not an elsviz network folder.{why}")
    try:
        config = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ElsvizError(f"{cfg_path} is corrupt ({exc}). Restore it, or train the network again.") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ElsvizError(f"{cfg_path} is not an elsviz network config (no \"format\": \"{FORMAT}\").")
    if int(config.get("version", 0)) > VERSION:
        raise ElsvizError(f"{cfg_path} was written by a newer elsviz (format version {config['version']}); "
                          "upgrade elsviz.")
    missing = [k for k in ("arch", "width", "layers", "emb", "dataset", "training", "weights", "weights_sha256")
               if k not in config]
    if missing:
        raise ElsvizError(f"{cfg_path} lacks {', '.join(missing)}: it is incomplete. Train the network again.")
    if config["arch"] not in ARCHS:
        raise ElsvizError(f"{cfg_path} names an unknown architecture {config['arch']!r} (known: {', '.join(ARCHS)}).")
    d = config["dataset"]
    if not isinstance(d, dict) or not all(k in d for k in ("name", "shape", "n", "source")) or len(d["shape"]) != 3:
        raise ElsvizError(f"{cfg_path} does not say what the network was trained on (dataset name, shape, n, source).")
    return config


def load_weights(file: Path, what: str) -> dict:
    """torch.load(file, weights_only=True), with every way it can fail said in one sentence."""
    if not file.is_file():
        raise ElsvizError(f"{what} {file.name} is missing from {file.parent}: the checkpoint is incomplete. "
                          "Train the network again (or restore the file).")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ElsvizError(f"{file} is not a plain set of weights: loading it would run code, so elsviz refuses it "
                          f"(torch.load weights_only=True: {str(exc).splitlines()[0][:200]}).") from None
    except Exception as exc:  # noqa: BLE001 - a file of any other kind fails in many ways inside torch.load
        raise ElsvizError(f"{file} is not a PyTorch checkpoint, or is cut short ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}).") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in _tensors(state)):
        raise ElsvizError(f"{file} does not hold a state_dict (a mapping of names to tensors).")
    return state


def _tensors(state: dict):
    for v in state.values():
        if isinstance(v, dict):
            yield from _tensors(v)
        elif isinstance(v, torch.Tensor):
            yield v


def fit_weights(model: nn.Module, state: dict, config: dict, file: Path) -> None:
    """Load state into model, or say plainly how the weights and config.json disagree."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        def some(names):
            return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")

        parts = ([f"missing {some(missing)}"] if missing else []) + ([f"unexpected {some(extra)}"] if extra else [])
        raise ElsvizError(f"{file} holds weights of another architecture than config.json describes "
                          f"({config['arch']}, {config['layers']} layers): {'; '.join(parts)}.")
    shape = tuple(int(v) for v in config["dataset"]["shape"])
    if tuple(state["image_shape"].tolist()) != shape:
        c, h, w = state["image_shape"].tolist()
        raise ElsvizError(f"{file} was trained on {c}-channel {h}x{w} images, but config.json says "
                          f"{shape[0]}-channel {shape[1]}x{shape[2]}: the weights belong to another network.")
    for name, tensor in own.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ElsvizError(f"{file} does not fit the network config.json describes: {name} is "
                              f"{tuple(state[name].shape)} in the file, {tuple(tensor.shape)} in the network "
                              "(another width, channel count or number of classes).")
    model.load_state_dict(state)


def model_of(config: dict) -> nn.Module:
    """A freshly initialised network of the architecture config.json describes."""
    return build_model(config["arch"], config["dataset"]["shape"], config["width"], config["layers"], config["emb"],
                       config.get("num_classes"))


def load_network(path, device="cpu") -> Network:
    """The network in a checkpoint folder (written by `elsviz train` / train_network), ready for sample().

    Its calibrated schedule (schedule.json, from `elsviz calibrate`) comes with it when present.
    Raises ElsvizError for a folder that is not a complete, consistent checkpoint.
    """
    folder = _folder(path)
    config = read_config(folder)
    file = folder / config["weights"]
    state = load_weights(file, "The weights file")
    if file_sha256(file) != config["weights_sha256"]:
        raise ElsvizError(f"{file} does not match the checksum config.json records: it was changed or cut short. "
                          "Train the network again (or restore the file).")
    model = model_of(config)
    fit_weights(model, state, config, file)
    return Network(model, config, folder, resolve_device(device), read_schedule(folder, config))


def read_schedule(folder, config: dict | None = None) -> dict | None:
    """The calibration saved beside a network (schedule.json), or None. A stale or corrupt one is ignored
    only when absent; a corrupt one raises ElsvizError."""
    file = Path(folder) / SCHEDULE
    if not file.is_file():
        return None
    try:
        cal = json.loads(file.read_text())
        ks = [int(k) for k in cal["schedule"]]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ElsvizError(f"{file} is corrupt ({type(exc).__name__}: {exc}). Delete it and run elsviz calibrate "
                          "again.") from None
    if any(k < 1 or k % 2 == 0 for k in ks):
        raise ElsvizError(f"{file} holds a k that is not an odd number >= 1; run elsviz calibrate again.")
    if config is not None and cal.get("weights_sha256") not in (None, config.get("weights_sha256")):
        cal["stale"] = True  # calibrated for earlier weights (training went on): still shown, with a note
    return cal


def save_schedule(network: Network, calibration: dict) -> Path:
    """Write a calibration (a dict with "schedule") beside the network's weights; atomic. Returns the file."""
    if network.path is None:
        raise ElsvizError("This network has no checkpoint folder to save its schedule in; save the network first.")
    data = dict(calibration, weights=network.config["weights"], weights_sha256=network.config["weights_sha256"])
    file = Path(network.path) / SCHEDULE
    atomic_write(file, lambda f: f.write(json.dumps(data, indent=1).encode()))
    network.calibration = data
    return file


def default_network_dir() -> Path:
    """Where the app keeps the networks it trains: $ELSVIZ_NETWORKS, else ~/.cache/elsviz/networks."""
    if os.environ.get("ELSVIZ_NETWORKS"):
        return Path(os.environ["ELSVIZ_NETWORKS"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "elsviz" / "networks"


BUNDLED = Path(__file__).resolve().parents[2] / "assets" / "networks"  # the repository's assets/, beside elsviz/


def catalogue() -> dict[str, Path]:
    """label -> folder of every network found: the bundled ones, then those in default_network_dir()."""
    found = {}
    for base, tag in ((BUNDLED, "bundled"), (default_network_dir(), "trained here")):
        if base.is_dir():
            for cfg in sorted(base.glob(f"*/{CONFIG}")):
                found[f"{cfg.parent.name} ({tag})"] = cfg.parent
    return found


def network_for(name: str, networks: dict[str, Path] | None = None, shape=None) -> str | None:
    """The label in `networks` (default: the catalogue) of the network trained on the set called `name`
    (and, given shape (C, H, W), at that image shape): a ResNet (the convolutional network the machines
    model) before a UNet, then a bundled one before one trained here, then in the order given; None when
    none was. A folder whose config.json cannot be read is passed over (choosing it says why)."""
    found = []
    for n, (label, folder) in enumerate((catalogue() if networks is None else networks).items()):
        try:
            config = read_config(folder)
        except ElsvizError:
            continue
        data = config["dataset"]
        if data["name"] == name and (shape is None or tuple(data["shape"]) == tuple(shape)):
            found.append((config["arch"] != "resnet", not label.endswith("(bundled)"), n, label))
    return min(found)[-1] if found else None


def calibrated_schedules() -> dict[str, tuple[list[int], str]]:
    """'calibrated: NAME' -> (k per step, a note) for every network of the catalogue with a schedule.json."""
    out = {}
    for folder in catalogue().values():
        try:
            cal = json.loads((folder / SCHEDULE).read_text())
            ks = [int(k) for k in cal["schedule"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if len(ks) >= 2 and all(k >= 1 and k % 2 for k in ks):
            seeds = len(cal.get("seeds") or [])
            out[f"calibrated: {folder.name}"] = (ks, f"fitted to the network {folder.name}, "
                                                     f"{cal.get('machine', 'bbels')}, {seeds} samples")
    return out
