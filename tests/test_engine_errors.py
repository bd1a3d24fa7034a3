"""Bad input (issue 2, section 5): a clear ElsvizError, and the engine still works afterwards with
the same answers as before (no state half-changed)."""
import math
import re

import numpy as np
import pytest
import torch

from elsviz import ElsvizError, Engine, ImageSet, branch, sample
from tests.reference import noisy_query, random_images

TRAIN_HW = (5, 7)


@pytest.fixture(scope="module")
def sets():
    images = torch.from_numpy(random_images(12, 1, *TRAIN_HW, seed=1))
    return {
        "plain": ImageSet(images),
        "labelled": ImageSet(images, torch.arange(12) % 3),
    }


def ok_call(engine):
    x = torch.from_numpy(noisy_query(1, 1, *TRAIN_HW, 0.5, seed=2))
    return engine.denoise(x, 0.5, 3).mean


def assert_refused(engine, call, pattern):
    """call() raises an ElsvizError whose message matches pattern; the engine still answers as before."""
    before = ok_call(engine)
    with pytest.raises(ElsvizError) as err:
        call()
    msg = str(err.value)
    assert len(msg) > 25, f"message too terse to act on: {msg!r}"
    assert re.search(pattern, msg, re.IGNORECASE), f"message {msg!r} does not mention {pattern!r}"
    torch.testing.assert_close(ok_call(engine), before, atol=0, rtol=0)


def x_of(shape, fill=None, seed=3):
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    if fill is not None:
        x[0, 0, 1, 2] = fill
    return x


X = (1, 1, *TRAIN_HW)

# machine, what is wrong, call(engine), a word the message must contain
DENOISE_CASES = [
    ("bbels", "even k", lambda e: e.denoise(x_of(X), 0.5, 2), r"\bk\b|odd"),
    ("ls", "even k", lambda e: e.denoise(x_of(X), 0.5, 4), r"\bk\b|odd"),
    ("els", "k = 0", lambda e: e.denoise(x_of(X), 0.5, 0), r"\bk\b|odd"),
    ("bbels", "negative k", lambda e: e.denoise(x_of(X), 0.5, -1), r"\bk\b|odd"),
    ("ls", "negative k", lambda e: e.denoise(x_of(X), 0.5, -3), r"\bk\b|odd"),
    ("els", "k > training height", lambda e: e.denoise(x_of(X), 0.5, 7), r"\bk\b|window"),
    ("els", "k > training images", lambda e: e.denoise(x_of(X), 0.5, 9), r"\bk\b|window"),
    ("els", "k > training, other size", lambda e: e.denoise(x_of((1, 1, 9, 9)), 0.5, 7), r"\bk\b|window"),
    ("bbels", "other size, k > training", lambda e: e.denoise(x_of((1, 1, 9, 9)), 0.5, 7), r"\bk\b|window"),
    ("bbels", "other size, k > output", lambda e: e.denoise(x_of((1, 1, 4, 4)), 0.5, 5), r"\bk\b|window"),
    ("bbels", "t = 0", lambda e: e.denoise(x_of(X), 0.0, 3), r"\bt\b"),
    ("els", "t = 1", lambda e: e.denoise(x_of(X), 1.0, 3), r"\bt\b"),
    ("ls", "t < 0", lambda e: e.denoise(x_of(X), -0.1, 3), r"\bt\b"),
    ("is", "t > 1", lambda e: e.denoise(x_of(X), 1.5, 3), r"\bt\b"),
    ("bbels", "t nan", lambda e: e.denoise(x_of(X), math.nan, 3), r"\bt\b"),
    ("is", "3 channels", lambda e: e.denoise(x_of((1, 3, *TRAIN_HW)), 0.5, 3), r"channel"),
    ("ls", "3 channels", lambda e: e.denoise(x_of((1, 3, *TRAIN_HW)), 0.5, 3), r"channel"),
    ("els", "3 channels", lambda e: e.denoise(x_of((1, 3, *TRAIN_HW)), 0.5, 3), r"channel"),
    ("bbels", "3 channels", lambda e: e.denoise(x_of((1, 3, 8, 8)), 0.5, 3), r"channel"),
    ("ls", "other size", lambda e: e.denoise(x_of((1, 1, 7, 5)), 0.5, 3), r"size|shape"),
    ("is", "other size", lambda e: e.denoise(x_of((1, 1, 5, 8)), 0.5, 3), r"size|shape"),
    ("bbels", "nan in x", lambda e: e.denoise(x_of(X, math.nan), 0.5, 3), r"nan|finite"),
    ("els", "inf in x", lambda e: e.denoise(x_of(X, math.inf), 0.5, 3), r"inf|finite"),
    ("ls", "-inf in x", lambda e: e.denoise(x_of(X, -math.inf), 0.5, 3), r"inf|finite"),
    ("is", "nan in x", lambda e: e.denoise(x_of(X, math.nan), 0.5, 3), r"nan|finite"),
    ("els", "explain, even k", lambda e: e.explain(x_of(X), 0.5, 2, pixel=(1, 1)), r"\bk\b|odd"),
]


@pytest.mark.parametrize("machine,what,call,pattern", DENOISE_CASES, ids=[f"{c[0]}-{c[1]}" for c in DENOISE_CASES])
def test_denoise_refuses(sets, machine, what, call, pattern):
    engine = Engine(sets["plain"], machine=machine, device="cpu")
    assert_refused(engine, lambda: call(engine), pattern)


@pytest.mark.parametrize("machine", ["is", "ls", "els", "bbels"])
def test_labels_refused(sets, machine):
    labelled = Engine(sets["labelled"], machine=machine, device="cpu")
    assert_refused(labelled, lambda: labelled.denoise(x_of(X), 0.5, 3, label=7), r"label|7")
    assert_refused(labelled, lambda: sample(labelled, seed=0, steps=4, k=3, label=5), r"label|5")
    plain = Engine(sets["plain"], machine=machine, device="cpu")
    assert_refused(plain, lambda: plain.denoise(x_of(X), 0.5, 3, label=0), r"label")
    assert_refused(plain, lambda: sample(plain, seed=0, steps=4, k=3, label=0), r"label")


def test_legal_neighbours_of_the_refused_cases(sets):
    """The limits are where docs/THEORY.md puts them: these are all fine."""
    els = Engine(sets["plain"], machine="els", device="cpu")
    els.denoise(x_of(X), 0.5, 5)  # k = training height
    bb = Engine(sets["plain"], machine="bbels", device="cpu")
    bb.denoise(x_of(X), 0.5, 15)  # training size: any k
    bb.denoise(x_of((1, 1, 9, 9)), 0.5, 5)  # other size, k within both
    Engine(sets["plain"], machine="ls", device="cpu").denoise(x_of(X), 0.5, 21)
    Engine(sets["plain"], machine="is", device="cpu").denoise(x_of(X), 0.5, 3)


def test_sample_refuses(sets):
    engine = Engine(sets["plain"], machine="bbels", device="cpu")
    assert_refused(engine, lambda: sample(engine, seed=0, steps=20, k="mnist-resnett"), r"preset|mnist-resnett")
    assert_refused(engine, lambda: sample(engine, seed=0, steps=6, k=4), r"\bk\b|odd")
    assert_refused(engine, lambda: sample(engine, seed=0, steps=6, k=[3, 3, 3]), r"step|schedule|6")
    assert_refused(engine, lambda: sample(engine, x_of(X, math.nan), steps=6, k=3), r"nan|finite")
    assert_refused(engine, lambda: sample(engine, x_of((1, 3, *TRAIN_HW)), steps=6, k=3), r"channel")
    traj = sample(engine, seed=0, steps=6, k=3)
    frames = [f.mean.clone() for f in traj.frames]
    assert_refused(engine, lambda: branch(traj, at_step=3, k=4), r"\bk\b|odd")
    assert_refused(engine, lambda: branch(traj, at_step=3, k="nope"), r"preset|nope")
    assert all(torch.equal(f.mean, m) for f, m in zip(traj.frames, frames))
    els = Engine(sets["plain"], machine="els", device="cpu")
    assert_refused(els, lambda: sample(els, seed=0, steps=20, k="mnist-resnet"), r"\bk\b|window|ELS")


def test_engine_construction_refused(sets):
    with pytest.raises(ElsvizError, match=r"(?i)machine|elz"):
        Engine(sets["plain"], machine="elz")
    if not torch.cuda.is_available():
        with pytest.raises(ElsvizError, match=r"(?i)cuda"):
            Engine(sets["plain"], machine="bbels", device="cuda")
    Engine(sets["plain"], machine="bbels", device="auto").denoise(x_of(X), 0.5, 3)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_imageset_refuses_non_finite_images(bad):
    images = torch.from_numpy(random_images(4, 1, *TRAIN_HW, seed=4))
    images[2, 0, 3, 3] = bad
    with pytest.raises(ElsvizError, match=r"(?i)nan|inf|finite"):
        ImageSet(images)


def test_imageset_refuses_an_empty_set():
    with pytest.raises(ElsvizError, match=r"(?i)empty|at least"):
        ImageSet(torch.zeros(0, 1, *TRAIN_HW))
