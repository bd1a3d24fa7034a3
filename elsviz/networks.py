"""Trained denoisers to hold the theory against: a small convolutional ResNet and a small UNet.

    from elsviz import load_dataset, sample
    from elsviz.networks import train_network, load_network

    net = train_network(load_dataset("digits"), "nets/digits-resnet")   # or `elsviz train`
    net = load_network("nets/digits-resnet")
    traj = sample(net, seed=0, steps=20)            # the same reverse process and noise as the machines

Both networks predict the noise eps of x_t = a_t x_0 + b_t eps (docs/THEORY.md, "Noise schedule",
elsviz.schedule.alpha_sigma); as a denoiser their posterior mean is Tweedie's estimate
mean = (x - b_t eps) / a_t, so `sample` runs them exactly as it runs an Engine.

- `resnet`: the paper's kind of network. A 3x3 convolution up to `width` channels, `layers`
  residual blocks h <- h + relu(conv3x3(h + e_l(t))), a 3x3 convolution back down. Zero padding,
  no normalisation and no attention: every output pixel sees a (layers + 2) * 2 + 1 square of the
  input, and nothing else. This is what the ELS machine models.
- `unet`: two resolutions down and up with skip connections and one self-attention block at the
  lowest one, the paper's contrast case: attention lets every pixel see the whole image.

A checkpoint is a folder: config.json (architecture, training set, training progress, the name
and sha256 of the weights file), the weights as a state_dict (model-STEP.pt, the EMA weights that
sampling uses), the optimiser state for resuming (train-STEP.pt) and, after calibration,
schedule.json. Files are written under a temporary name and renamed; config.json is renamed last,
so a run killed at any moment leaves the previous checkpoint whole. Weights are read with
torch.load(weights_only=True): a file that would run code when loaded is refused.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .engine import resolve_device
from .errors import ElsvizError
from .schedule import alpha_sigma, check_t

FORMAT = "elsviz-network"
VERSION = 1
ARCHS = {
    "resnet": "convolutional ResNet: zero padding, no attention, no normalisation (what the ELS machine models)",
    "unet": "UNet with one self-attention block (every pixel can see the whole image)",
}
CONFIG = "config.json"
SCHEDULE = "schedule.json"
T_MIN = 1e-3  # training times t ~ U(T_MIN, 1): beta(0) = 0 leaves eps undefined at t = 0


# ----------------------------------------------------------------------------------------------
# Architectures
# ----------------------------------------------------------------------------------------------
def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t [B] in (0, 1) -> [B, dim] (frequencies 1 .. 1000 per unit of 1000 t)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / max(half - 1, 1))  # [half]
    arg = 1000.0 * t[:, None] * freqs[None, :]  # [B, half]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class Embedding(nn.Module):
    """t (and an optional class label) -> one vector [B, emb]: sinusoidal features, an MLP, plus a
    learned vector per class. Class `num_classes` means "any class" (labels are dropped to it in
    training, so a conditional network also generates unconditionally)."""

    def __init__(self, emb: int, num_classes: int | None):
        super().__init__()
        self.emb = emb
        self.mlp = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.classes = None if num_classes is None else nn.Embedding(num_classes + 1, emb)
        self.num_classes = num_classes

    def forward(self, t: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        e = self.mlp(time_features(t, self.emb))  # [B, emb]
        if self.classes is not None:
            if label is None:
                label = torch.full_like(t, self.num_classes, dtype=torch.int64)
            e = e + self.classes(label)
        return e


class ResNetDenoiser(nn.Module):
    """eps(x_t, t): up-projection, `layers` residual blocks h <- h + relu(conv(h + e_l)), down-projection.

    All 3x3 convolutions with zero padding; nothing mixes distant pixels, so each output pixel
    depends on a (2 * layers + 5)-wide square of x only.
    """

    def __init__(self, shape, width: int = 64, layers: int = 6, emb: int = 128, num_classes: int | None = None):
        super().__init__()
        c = shape[0]
        self.register_buffer("image_shape", torch.tensor(list(shape)))  # [C, H, W]: the weights know their data
        self.embed = Embedding(emb, num_classes)
        self.up = nn.Conv2d(c, width, 3, padding=1)
        self.shifts = nn.ModuleList([nn.Linear(emb, width) for _ in range(layers + 1)])
        self.convs = nn.ModuleList([nn.Conv2d(width, width, 3, padding=1) for _ in range(layers)])
        self.down = nn.Conv2d(width, c, 3, padding=1)
        nn.init.zeros_(self.down.weight)  # start by predicting eps = 0: the loss starts at 1, not far above
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        e = F.silu(self.embed(t, label))  # [B, emb]
        h = self.up(x)  # [B, width, H, W]
        for conv, shift in zip(self.convs, self.shifts):
            h = h + F.relu(conv(h + shift(e)[:, :, None, None]))
        return self.down(h + self.shifts[-1](e)[:, :, None, None])  # [B, C, H, W]


class _Block(nn.Module):
    """Two 3x3 convolutions with a time shift, GroupNorm and SiLU, plus a 1x1 skip."""

    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm1 = nn.GroupNorm(8, cout)
        self.norm2 = nn.GroupNorm(8, cout)
        self.shift = nn.Linear(emb, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = F.silu(self.norm1(self.conv1(x) + self.shift(e)[:, :, None, None]))
        h = F.silu(self.norm2(self.conv2(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Self-attention over all pixels of a feature map [B, C, H, W] (4 heads), residual."""

    def __init__(self, c: int, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(8, c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.out = nn.Conv2d(c, c, 1)
        self.heads = heads

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)  # [B, 3, heads, d, HW]
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # [B, heads, HW, d] each
        a = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, d]
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


class UNetDenoiser(nn.Module):
    """eps(x_t, t): blocks at H x W (width), H/2 (2 width) and H/4 (2 width, with self-attention), and back up."""

    def __init__(self, shape, width: int = 32, layers: int = 1, emb: int = 128, num_classes: int | None = None):
        super().__init__()
        c, h, w = shape
        if h % 4 or w % 4:
            raise ElsvizError(f"The UNet halves the image twice: it needs a height and width divisible by 4, got "
                              f"{h}x{w}. Resize the training set (size=...) or use the ResNet.")
        if width % 8:
            raise ElsvizError(f"The UNet's width must be a multiple of 8 (GroupNorm of 8 groups), got {width}.")
        self.register_buffer("image_shape", torch.tensor(list(shape)))
        self.embed = Embedding(emb, num_classes)
        w1, w2 = width, 2 * width
        self.inp = nn.Conv2d(c, w1, 3, padding=1)
        self.down1 = nn.ModuleList([_Block(w1, w1, emb) for _ in range(layers)])
        self.down2 = nn.ModuleList([_Block(w1 if i == 0 else w2, w2, emb) for i in range(layers)])
        self.mid = _Block(w2, w2, emb)
        self.attn = _Attention(w2)
        self.mid2 = _Block(w2, w2, emb)
        self.up2 = nn.ModuleList([_Block(2 * w2 if i == 0 else w2, w2, emb) for i in range(layers)])
        self.up1 = nn.ModuleList([_Block(w2 + w1 if i == 0 else w1, w1, emb) for i in range(layers)])
        self.outp = nn.Sequential(nn.GroupNorm(8, w1), nn.SiLU(), nn.Conv2d(w1, c, 3, padding=1))

    def forward(self, x, t, label=None):
        e = F.silu(self.embed(t, label))
        h1 = self.inp(x)  # [B, w1, H, W]
        for blk in self.down1:
            h1 = blk(h1, e)
        h2 = F.avg_pool2d(h1, 2)  # [B, w1, H/2, W/2]
        for blk in self.down2:
            h2 = blk(h2, e)  # [B, w2, H/2, W/2]
        m = self.mid(F.avg_pool2d(h2, 2), e)  # [B, w2, H/4, W/4]
        m = self.mid2(self.attn(m), e)
        u = torch.cat([F.interpolate(m, scale_factor=2.0, mode="nearest"), h2], 1)  # [B, 2 w2, H/2, W/2]
        for blk in self.up2:
            u = blk(u, e)
        u = torch.cat([F.interpolate(u, scale_factor=2.0, mode="nearest"), h1], 1)  # [B, w2 + w1, H, W]
        for blk in self.up1:
            u = blk(u, e)
        return self.outp(u)  # [B, C, H, W]


DEFAULTS = {"resnet": {"width": 48, "layers": 6, "emb": 128}, "unet": {"width": 32, "layers": 1, "emb": 128}}


def build_model(arch: str, shape, width: int | None = None, layers: int | None = None, emb: int | None = None,
                num_classes: int | None = None) -> nn.Module:
    """The eps-network of an architecture for images of shape (C, H, W)."""
    if arch not in ARCHS:
        raise ElsvizError(f"Unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}.")
    d = DEFAULTS[arch]
    width, layers, emb = int(width or d["width"]), int(layers or d["layers"]), int(emb or d["emb"])
    if width < 1 or layers < 1 or emb < 2 or emb % 2:
        raise ElsvizError(f"width and layers must be positive and emb an even number >= 2, got "
                          f"width={width}, layers={layers}, emb={emb}.")
    cls = ResNetDenoiser if arch == "resnet" else UNetDenoiser
    return cls(tuple(int(v) for v in shape), width=width, layers=layers, emb=emb, num_classes=num_classes)


def receptive_field(config: dict) -> int | None:
    """Side of the square of input pixels one output pixel of a ResNet depends on (None for the UNet, whose
    attention sees the whole image)."""
    if config["arch"] != "resnet":
        return None
    return 2 * (int(config["layers"]) + 2) + 1


# ----------------------------------------------------------------------------------------------
# The network as a denoiser
# ----------------------------------------------------------------------------------------------
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
        from .datasets import load_dataset

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


# ----------------------------------------------------------------------------------------------
# Checkpoints: atomic files, checked on the way in
# ----------------------------------------------------------------------------------------------
def _atomic_write(path: Path, write: Callable[[object], None]) -> None:
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _save_checkpoint(folder: Path, config: dict, weights: dict, state: dict) -> None:
    """Weights and training state under new names, then config.json pointing at them, then the old files go."""
    folder.mkdir(parents=True, exist_ok=True)
    step = int(config["training"]["steps_done"])
    wname, sname = f"model-{step:07d}.pt", f"train-{step:07d}.pt"
    _atomic_write(folder / wname, lambda f: torch.save(weights, f))
    _atomic_write(folder / sname, lambda f: torch.save(state, f))
    config = dict(config, weights=wname, weights_sha256=_sha256(folder / wname), train_state=sname)
    _atomic_write(folder / CONFIG, lambda f: f.write(json.dumps(config, indent=1).encode()))
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


def _load_weights(file: Path, what: str) -> dict:
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


def _fit(model: nn.Module, state: dict, config: dict, file: Path) -> None:
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


def _model_of(config: dict) -> nn.Module:
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
    state = _load_weights(file, "The weights file")
    if _sha256(file) != config["weights_sha256"]:
        raise ElsvizError(f"{file} does not match the checksum config.json records: it was changed or cut short. "
                          "Train the network again (or restore the file).")
    model = _model_of(config)
    _fit(model, state, config, file)
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
    _atomic_write(file, lambda f: f.write(json.dumps(data, indent=1).encode()))
    network.calibration = data
    return file


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainProgress:
    """Handed to the progress callback every `report_every` steps (and at the end)."""

    step: int
    steps: int
    loss: float  # running mean of the recent losses
    seconds: float  # this session's training time
    rate: float  # steps per second in this session

    @property
    def eta(self) -> float:
        return (self.steps - self.step) / self.rate if self.rate > 0 else float("inf")

    def describe(self) -> str:
        return (f"step {self.step:,}/{self.steps:,}  loss {self.loss:.4f}  {self.seconds:.0f} s"
                + (f", about {_duration(self.eta)} left" if self.step < self.steps and self.rate > 0 else ""))


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"


def _dataset_record(train, source: str | None, options: dict | None) -> dict:
    c, h, w = train.shape
    return {"name": train.name, "shape": [c, h, w], "n": len(train), "source": source or train.name,
            "options": dict(options or {}), "classes": train.classes}


def train_network(train, out, *, arch: str = "resnet", width: int | None = None, layers: int | None = None,
                  emb: int | None = None, conditional: bool = False, steps: int = 2000, batch: int = 64,
                  lr: float = 2e-3, ema: float = 0.999, seed: int = 0, save_every: int = 500,
                  resume: bool = False, device="auto", source: str | None = None, options: dict | None = None,
                  progress: Callable[[TrainProgress], None] | None = None, report_every: int = 25,
                  stop: Callable[[], bool] | None = None, threads: str | None = None) -> Network:
    """Train an eps-network on the ImageSet `train` and keep checkpoints in the folder `out`.

    Loss: mean |eps_theta(a_t x0 + b_t eps, t) - eps|^2, t ~ U(0.001, 1), the machines' schedule.
    AdamW with a short warm-up and cosine decay to lr / 10; the weights used for sampling are an
    exponential moving average (ema). A checkpoint is saved every `save_every` steps and at the end.

    resume=True continues the folder's run (to `steps` in all, which may be more than first asked);
    without it a folder that already holds a network is refused, never overwritten. `stop()`
    returning True ends training early after saving a checkpoint (resume it later); so does
    KeyboardInterrupt (which is then raised again). source/options: how load_dataset made `train`,
    so that compare and calibrate can load it again (default: train.name, no options).
    threads="auto" (CPU): every 500 steps, time a few steps with all of torch's threads and with
    one, and go on with the faster; on a machine that other jobs keep busy one thread can be several
    times faster (no thread waits for a descheduled partner). None leaves torch's setting alone,
    which keeps runs bit-for-bit reproducible.
    Returns the network with its EMA weights.
    """
    from .imageset import ImageSet

    if not isinstance(train, ImageSet):
        raise ElsvizError(f"train_network needs an ImageSet (load_dataset(...)), got {type(train).__name__}.")
    for name, v in (("steps", steps), ("batch", batch), ("save_every", save_every), ("report_every", report_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ElsvizError(f"{name} must be a positive integer, got {v!r}.")
    if not (lr > 0 and 0 <= ema < 1):
        raise ElsvizError(f"lr must be > 0 and ema in [0, 1), got lr={lr}, ema={ema}.")
    folder = Path(out).expanduser()
    dev = resolve_device(device)
    num_classes = None
    if conditional:
        if train.labels is None:
            raise ElsvizError(f"The training set {train.name!r} has no labels: a class-conditional network needs them. "
                              "Drop --conditional.")
        num_classes = int(train.labels.max()) + 1

    if resume:
        config = read_config(folder)
        asked = {"arch": arch, "width": width, "layers": layers, "emb": emb}
        clash = [f"{k}={v} (the checkpoint has {config[k]})" for k, v in asked.items()
                 if v is not None and k != "arch" and int(v) != int(config[k])]
        if arch != config["arch"]:
            clash.insert(0, f"arch={arch} (the checkpoint is a {config['arch']})")
        if bool(conditional) != bool(config.get("num_classes")):
            kind = "conditional" if config.get("num_classes") else "unconditional"
            clash.append(f"conditional={conditional} (the checkpoint is {kind})")
        if list(train.shape) != list(config["dataset"]["shape"]) or len(train) != int(config["dataset"]["n"]):
            clash.append(f"a training set of {len(train)} x {list(train.shape)} (the network was trained on "
                         f"{config['dataset']['n']} x {config['dataset']['shape']})")
        if clash:
            raise ElsvizError(f"Cannot resume {folder} with " + "; ".join(clash) + ". Drop those options, or train "
                              "into another folder.")
        model = _model_of(config)
        saved = _load_weights(folder / config["train_state"], "The training state") if "train_state" in config else None
        if saved is None or "model" not in saved:
            raise ElsvizError(f"{folder} has no training state to resume from; train into a new folder.")
        _fit(model, saved["model"], config, folder / config["train_state"])
        config["training"]["steps"] = int(steps)
    else:
        if (folder / CONFIG).exists():
            raise ElsvizError(f"{folder} already holds a network; nothing was overwritten. Resume it (--resume), or "
                              "give another folder.")
        if arch not in ARCHS:
            raise ElsvizError(f"Unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}.")
        d = DEFAULTS[arch]
        config = {"format": FORMAT, "version": VERSION, "arch": arch, "width": int(width or d["width"]),
                  "layers": int(layers or d["layers"]), "emb": int(emb or d["emb"]), "num_classes": num_classes,
                  "dataset": _dataset_record(train, source, options),
                  "training": {"steps": int(steps), "steps_done": 0, "batch": int(batch), "lr": float(lr),
                               "ema": float(ema), "seed": int(seed), "loss": None, "seconds": 0.0,
                               "device": dev.type, "schedule": "cosine (legacy), t ~ U(0.001, 1), eps-prediction"}}
        torch.manual_seed(seed)
        model = build_model(arch, train.shape, config["width"], config["layers"], config["emb"], num_classes)
        saved = None

    tr = config["training"]
    model = model.to(dev).train()
    averaged = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=tr["lr"], weight_decay=0.0)
    gen = torch.Generator(device="cpu").manual_seed(tr["seed"])
    if saved is not None:
        averaged.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
    for p in averaged.parameters():
        p.requires_grad_(False)
    images = train.images.to(dev)  # [N, C, H, W]
    labels = None if num_classes is None and not config.get("num_classes") else train.labels.to(dev)
    n = images.shape[0]
    start, total = int(tr["steps_done"]), int(tr["steps"])
    warm = min(200, max(1, total // 20))

    def lr_at(step):
        if step < warm:
            return tr["lr"] * (step + 1) / warm
        return tr["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm)))))

    def save(step, loss, seconds):
        tr.update(steps_done=step, loss=loss, seconds=round(tr["seconds"] + seconds, 1))
        state = {"model": model.state_dict(), "ema": averaged.state_dict(), "optimizer": opt.state_dict(),
                 "generator": gen.get_state()}
        _save_checkpoint(folder, config, averaged.state_dict(), state)

    pick = _ThreadPicker(threads == "auto" and dev.type == "cpu")
    t0 = time.perf_counter()
    recent: list[float] = []
    step, last_saved = start, start
    seconds_at_save = 0.0
    updating = False  # True while the weights are half-way through one update
    try:
        while step < total:
            pick.before(step - start)
            idx = torch.randint(0, n, (min(tr["batch"], n),), generator=gen).to(dev)
            x0 = images[idx]  # [b, C, H, W]
            t = T_MIN + (1 - T_MIN) * torch.rand(x0.shape[0], generator=gen).to(dev)  # [b]
            noise = torch.randn(x0.shape, generator=gen).to(dev)
            beta = 1 - torch.cos(t / 1.008 * math.pi / 2) ** 2  # the legacy cosine schedule (docs/THEORY.md)
            a, b = torch.sqrt(1 - beta)[:, None, None, None], torch.sqrt(beta)[:, None, None, None]
            lab = None
            if labels is not None:
                lab = labels[idx].clone()
                drop = torch.rand(lab.shape[0], generator=gen).to(dev) < 0.1  # "any class" now and then
                lab[drop] = config["num_classes"]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = F.mse_loss(model(a * x0 + b * noise, t, lab), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if not torch.isfinite(loss):
                raise ElsvizError(f"Training diverged at step {step + 1:,} (the loss is {float(loss)}); the checkpoint "
                                  f"of step {last_saved:,} is kept. Resume with a smaller lr (now {tr['lr']}).")
            updating = True
            opt.step()
            decay = min(ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for pa, pm in zip(averaged.parameters(), model.parameters()):
                    pa.lerp_(pm, 1 - decay)
            step += 1
            updating = False
            recent = (recent + [loss.item()])[-100:]
            seconds = time.perf_counter() - t0
            if step % save_every == 0 and step < total:
                save(step, sum(recent) / len(recent), seconds - seconds_at_save)
                seconds_at_save, last_saved = seconds, step
            if progress is not None and (step % report_every == 0 or step == total):
                rate = (step - start) / max(seconds, 1e-9)
                progress(TrainProgress(step, total, sum(recent) / len(recent), seconds, rate))
            if stop is not None and stop() and step < total:
                break
    except ElsvizError:
        pick.restore()
        raise
    except BaseException:
        pick.restore()
        # stopped from outside (Ctrl-C, the app's Stop button): keep what was learned, atomically, unless the
        # weights were caught half-way through an update (then the last checkpoint stays as it was)
        if step > last_saved and not updating:
            save(step, sum(recent) / len(recent) if recent else None, time.perf_counter() - t0 - seconds_at_save)
        raise
    pick.restore()
    if step > last_saved:
        save(step, sum(recent) / len(recent) if recent else tr["loss"], time.perf_counter() - t0 - seconds_at_save)
    return load_network(folder, device=dev)


class _ThreadPicker:
    """Every `every` steps, time `probe` steps with all threads and `probe` with one; keep the faster.

    The first `skip` steps of a session are left out (they pay for warming up)."""

    def __init__(self, on: bool, every: int = 500, probe: int = 4, skip: int = 2):
        self.most = torch.get_num_threads()
        self.on = on and self.most > 1
        self.every, self.probe, self.skip = every, probe, skip
        self.mark = 0.0
        self.times: list[float] = []

    def before(self, done: int) -> None:
        """Called before each step; `done` steps of this session are behind."""
        if not self.on or done < self.skip:
            return
        k = (done - self.skip) % self.every
        if k in (0, self.probe, 2 * self.probe):
            now = time.perf_counter()
            if k:
                self.times.append(now - self.mark)
            self.mark = now
            if k == 0:
                self.times = []
                torch.set_num_threads(self.most)
            elif k == self.probe:
                torch.set_num_threads(1)
            else:
                torch.set_num_threads(1 if self.times[1] < self.times[0] else self.most)

    def restore(self) -> None:
        if self.on:
            torch.set_num_threads(self.most)


def default_network_dir() -> Path:
    """Where the app keeps the networks it trains: $ELSVIZ_NETWORKS, else ~/.cache/elsviz/networks."""
    if os.environ.get("ELSVIZ_NETWORKS"):
        return Path(os.environ["ELSVIZ_NETWORKS"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "elsviz" / "networks"


BUNDLED = Path(__file__).resolve().parent.parent / "assets" / "networks"  # shipped with the repository


def catalogue() -> dict[str, Path]:
    """label -> folder of every network found: the bundled ones, then those in default_network_dir()."""
    found = {}
    for base, tag in ((BUNDLED, "bundled"), (default_network_dir(), "trained here")):
        if base.is_dir():
            for cfg in sorted(base.glob(f"*/{CONFIG}")):
                found[f"{cfg.parent.name} ({tag})"] = cfg.parent
    return found


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
