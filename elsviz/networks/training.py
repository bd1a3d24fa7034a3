"""train_network: the arguments checked, a new or a resumed checkpoint's config, one training session
(batches, optimiser, EMA, saving) and the loop that runs it, stops it and reports its progress."""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..engine import resolve_device
from ..errors import ElsvizError
from ..schedule import alpha_sigma
from .checkpoints import (CONFIG, FORMAT, VERSION, Network, fit_weights, load_network, load_weights, model_of,
                          read_config, save_checkpoint)
from .models import model_sizes

T_MIN = 1e-3  # training times t ~ U(T_MIN, 1): beta(0) = 0 leaves eps undefined at t = 0
LABEL_DROP = 0.1  # share of labels replaced by "any class", so a conditional network also generates unconditionally
LOSS_WINDOW = 100  # the reported loss is the mean of this many recent steps


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
    _check_arguments(train, steps=steps, batch=batch, save_every=save_every, report_every=report_every,
                     lr=lr, ema=ema)
    folder = Path(out).expanduser()
    dev = resolve_device(device)
    num_classes = _classes(train, conditional)
    if resume:
        config, model, saved = _resumed(folder, train, arch, width, layers, emb, conditional, steps)
    else:
        config = _new_config(folder, train, arch, width, layers, emb, num_classes, source, options,
                             steps=steps, batch=batch, lr=lr, ema=ema, seed=seed, device=dev.type)
        torch.manual_seed(seed)  # the initial weights
        model, saved = model_of(config), None
    session = _Session(folder, config, model, saved, train, dev, ema)
    pick = _ThreadPicker(threads == "auto" and dev.type == "cpu")
    _Loop(session, save_every, report_every, progress, stop, pick).run()
    return load_network(folder, device=dev)


# -- the arguments and the config they make ------------------------------------------------------
def _check_arguments(train, lr: float, ema: float, **counts: int) -> None:
    from ..imageset import ImageSet

    if not isinstance(train, ImageSet):
        raise ElsvizError(f"train_network needs an ImageSet (load_dataset(...)), got {type(train).__name__}.")
    for name, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ElsvizError(f"{name} must be a positive integer, got {v!r}.")
    if not (lr > 0 and 0 <= ema < 1):
        raise ElsvizError(f"lr must be > 0 and ema in [0, 1), got lr={lr}, ema={ema}.")


def _classes(train, conditional: bool) -> int | None:
    """The number of classes a conditional network is trained on (None: unconditional)."""
    if not conditional:
        return None
    if train.labels is None:
        raise ElsvizError(f"The training set {train.name!r} has no labels: a class-conditional network needs them. "
                          "Drop --conditional.")
    return int(train.labels.max()) + 1


def _new_config(folder: Path, train, arch: str, width, layers, emb, num_classes: int | None, source: str | None,
                options: dict | None, **training) -> dict:
    """config.json of a network not trained yet (refused where a network is already kept)."""
    if (folder / CONFIG).exists():
        raise ElsvizError(f"{folder} already holds a network; nothing was overwritten. Resume it (--resume), or "
                          "give another folder.")
    c, h, w = train.shape
    dataset = {"name": train.name, "shape": [c, h, w], "n": len(train), "source": source or train.name,
               "options": dict(options or {}), "classes": train.classes}
    return {"format": FORMAT, "version": VERSION, "arch": arch, **model_sizes(arch, width, layers, emb),
            "num_classes": num_classes, "dataset": dataset,
            "training": {"steps": int(training["steps"]), "steps_done": 0, "batch": int(training["batch"]),
                         "lr": float(training["lr"]), "ema": float(training["ema"]), "seed": int(training["seed"]),
                         "loss": None, "seconds": 0.0, "device": training["device"],
                         "schedule": "cosine (legacy), t ~ U(0.001, 1), eps-prediction"}}


def _resumed(folder: Path, train, arch: str, width, layers, emb, conditional: bool,
             steps: int) -> tuple[dict, nn.Module, dict]:
    """The config, model and training state of the checkpoint in folder, to go on to `steps` in all."""
    config = read_config(folder)
    clash = _clashes(config, train, arch, {"width": width, "layers": layers, "emb": emb}, conditional)
    if clash:
        raise ElsvizError(f"Cannot resume {folder} with " + "; ".join(clash) + ". Drop those options, or train "
                          "into another folder.")
    model = model_of(config)
    file = folder / config["train_state"] if "train_state" in config else None
    saved = load_weights(file, "The training state") if file is not None else None
    if saved is None or "model" not in saved:
        raise ElsvizError(f"{folder} has no training state to resume from; train into a new folder.")
    fit_weights(model, saved["model"], config, file)
    config["training"]["steps"] = int(steps)
    return config, model, saved


def _clashes(config: dict, train, arch: str, sizes: dict, conditional: bool) -> list[str]:
    """What the call asks that the checkpoint to resume is not, one phrase each."""
    clash = [f"{k}={v} (the checkpoint has {config[k]})" for k, v in sizes.items()
             if v is not None and int(v) != int(config[k])]
    if arch != config["arch"]:
        clash.insert(0, f"arch={arch} (the checkpoint is a {config['arch']})")
    if bool(conditional) != bool(config.get("num_classes")):
        kind = "conditional" if config.get("num_classes") else "unconditional"
        clash.append(f"conditional={conditional} (the checkpoint is {kind})")
    if list(train.shape) != list(config["dataset"]["shape"]) or len(train) != int(config["dataset"]["n"]):
        clash.append(f"a training set of {len(train)} x {list(train.shape)} (the network was trained on "
                     f"{config['dataset']['n']} x {config['dataset']['shape']})")
    return clash


# -- one training session ---------------------------------------------------------------------------
class _Session:
    """The model, its moving average, the optimiser and the random stream of batches, from step `start`
    to `total`: one step is `backward` (a batch, the loss and its gradient), then `apply` (the update)."""

    def __init__(self, folder: Path, config: dict, model: nn.Module, saved: dict | None, train, dev, ema: float):
        self.folder, self.config = folder, config
        self.ema = ema  # this call's; on resume config.json's lr, batch and seed hold, but not its ema
        self.tr = tr = config["training"]
        self.model = model.to(dev).train()
        self.averaged = copy.deepcopy(self.model).eval()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=tr["lr"], weight_decay=0.0)
        self.gen = torch.Generator(device="cpu").manual_seed(tr["seed"])
        if saved is not None:
            self.averaged.load_state_dict(saved["ema"])
            self.opt.load_state_dict(saved["optimizer"])
            self.gen.set_state(saved["generator"])
        for p in self.averaged.parameters():
            p.requires_grad_(False)
        self.dev = dev
        self.images = train.images.to(dev)  # [N, C, H, W]
        self.labels = train.labels.to(dev) if config.get("num_classes") else None
        self.step = self.start = int(tr["steps_done"])
        self.total = int(tr["steps"])
        self.warm = min(200, max(1, self.total // 20))  # warm-up steps: 5% of the run, at most 200
        self.updating = False  # True while the weights are half-way through one update

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay from lr to lr / 10."""
        lr = self.tr["lr"]
        if step < self.warm:
            return lr * (step + 1) / self.warm
        done = min(1.0, (step - self.warm) / max(1, self.total - self.warm))
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))

    def draw(self):
        """A batch from the session's random stream: x0 [b, C, H, W], t [b], noise like x0, labels [b] or None."""
        gen, dev = self.gen, self.dev
        n = self.images.shape[0]
        idx = torch.randint(0, n, (min(self.tr["batch"], n),), generator=gen).to(dev)
        x0 = self.images[idx]  # [b, C, H, W]
        t = T_MIN + (1 - T_MIN) * torch.rand(x0.shape[0], generator=gen).to(dev)  # [b]
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        if self.labels is None:
            return x0, t, noise, None
        lab = self.labels[idx].clone()
        lab[torch.rand(lab.shape[0], generator=gen).to(dev) < LABEL_DROP] = self.config["num_classes"]
        return x0, t, noise, lab

    def backward(self) -> torch.Tensor:
        """The loss of one batch at this step's learning rate, its gradient in the model."""
        x0, t, noise, lab = self.draw()
        a, b = alpha_sigma(t)  # [b] each
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        loss = F.mse_loss(self.model(a[:, None, None, None] * x0 + b[:, None, None, None] * noise, t, lab), noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    def apply(self) -> None:
        """The optimiser's step and the moving average's; the step counts once both are done."""
        self.updating = True
        self.opt.step()
        decay = min(self.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for pa, pm in zip(self.averaged.parameters(), self.model.parameters()):
                pa.lerp_(pm, 1 - decay)
        self.step += 1
        self.updating = False

    def save(self, loss: float | None, seconds: float) -> None:
        """A checkpoint of this step; `seconds` of training since the last one are added to the record."""
        self.tr.update(steps_done=self.step, loss=loss, seconds=round(self.tr["seconds"] + seconds, 1))
        state = {"model": self.model.state_dict(), "ema": self.averaged.state_dict(),
                 "optimizer": self.opt.state_dict(), "generator": self.gen.get_state()}
        save_checkpoint(self.folder, self.config, self.averaged.state_dict(), state)


class _Loop:
    """Runs a session to its end: a checkpoint every `save_every` steps and at the end, progress every
    `report_every`, an early end when `stop()` says so, and what was learned kept when interrupted."""

    def __init__(self, session: _Session, save_every: int, report_every: int, progress, stop, pick):
        self.s = session
        self.save_every, self.report_every = save_every, report_every
        self.progress, self.stop, self.pick = progress, stop, pick
        self.recent: list[float] = []
        self.last_saved = session.step
        self.saved_at = 0.0  # seconds into this session of the last checkpoint
        self.t0 = time.perf_counter()

    def run(self) -> None:
        s = self.s
        try:
            while s.step < s.total:
                self.pick.before(s.step - s.start)
                loss = s.backward()
                if not torch.isfinite(loss):
                    raise ElsvizError(f"Training diverged at step {s.step + 1:,} (the loss is {float(loss)}); the "
                                      f"checkpoint of step {self.last_saved:,} is kept. Train again into a new folder "
                                      f"with a smaller lr (this run's is {s.tr['lr']}; a resumed run keeps its "
                                      f"checkpoint's lr).")
                s.apply()
                self.recent = (self.recent + [loss.item()])[-LOSS_WINDOW:]
                if self.after_step():
                    break
        except ElsvizError:
            self.pick.restore()
            raise
        except BaseException:
            self.pick.restore()
            # stopped from outside (Ctrl-C, the app's Stop button): keep what was learned, atomically, unless the
            # weights were caught half-way through an update (then the last checkpoint stays as it was)
            if s.step > self.last_saved and not s.updating:
                self.save(self.mean_loss(None))
            raise
        self.pick.restore()
        if s.step > self.last_saved:
            self.save(self.mean_loss(s.tr["loss"]))

    def after_step(self) -> bool:
        """Save and report as due; True when asked to stop before the end."""
        step, total = self.s.step, self.s.total
        seconds = time.perf_counter() - self.t0
        if step % self.save_every == 0 and step < total:
            self.save(self.mean_loss(None), seconds)
        if self.progress is not None and (step % self.report_every == 0 or step == total):
            rate = (step - self.s.start) / max(seconds, 1e-9)
            self.progress(TrainProgress(step, total, self.mean_loss(None), seconds, rate))
        return self.stop is not None and self.stop() and step < total

    def save(self, loss: float | None, seconds: float | None = None) -> None:
        seconds = time.perf_counter() - self.t0 if seconds is None else seconds
        self.s.save(loss, seconds - self.saved_at)
        self.saved_at, self.last_saved = seconds, self.s.step

    def mean_loss(self, otherwise: float | None) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else otherwise


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
