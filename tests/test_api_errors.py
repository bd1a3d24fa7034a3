"""The public API refuses wrong arguments, types included, with an ElsvizError that says what to pass.

The cases a seeded fuzz of the API found answered with a bare ValueError or TypeError (issue 10):
a seed that is a string or >= 2**63, a label that is not an int, a pixel like (1.5, 2) or (1,),
top="3", and a bool where an int is expected. tests/test_fuzz.py hunts for more.
"""
import numpy as np
import pytest
import torch

from elsviz import ElsvizError, Engine, ImageSet, branch, figures, load_dataset, sample
from elsviz.schedule import locality_schedule


@pytest.fixture(scope="module")
def engine():
    return Engine(load_dataset("digits", limit=30), "bbels", device="cpu")


@pytest.fixture(scope="module")
def x():
    return torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))


CASES = [  # what is wrong, call(engine, x), words the message must hold
    ("seed is a string", lambda e, x: sample(e, seed="7", steps=2, k=3), ["seed", "integer"]),
    ("seed is 2**63", lambda e, x: sample(e, seed=2**63, steps=2, k=3), ["seed", "2**63 - 1"]),
    ("seed is negative", lambda e, x: sample(e, seed=-1, steps=2, k=3), ["seed", "from 0"]),
    ("seed is a float", lambda e, x: sample(e, seed=1.5, steps=2, k=3), ["seed", "integer"]),
    ("seed is a bool", lambda e, x: sample(e, seed=True, steps=2, k=3), ["seed", "integer"]),
    ("label is a string", lambda e, x: e.denoise(x, 0.5, 3, label="3"), ["label", "integer"]),
    ("label is a float", lambda e, x: e.denoise(x, 0.5, 3, label=3.0), ["label", "integer"]),
    ("label is a bool", lambda e, x: sample(e, steps=2, k=3, label=True), ["label", "integer"]),
    ("pixel (1.5, 2)", lambda e, x: e.explain(x, 0.5, 3, pixel=(1.5, 2)), ["pixel", "(row, col)", "integers"]),
    ("pixel (1,)", lambda e, x: e.explain(x, 0.5, 3, pixel=(1,)), ["pixel", "(row, col)"]),
    ("pixel a string", lambda e, x: e.explain(x, 0.5, 3, pixel="8,8"), ["pixel", "(row, col)"]),
    ("pixel outside", lambda e, x: e.explain(x, 0.5, 3, pixel=(16, 0)), ["pixel", "outside the 16x16"]),
    ('top="3"', lambda e, x: e.explain(x, 0.5, 3, pixel=(8, 8), top="3"), ["top", "integer"]),
    ("top=True", lambda e, x: e.explain(x, 0.5, 3, pixel=(8, 8), top=True), ["top", "integer"]),
    ("top=0", lambda e, x: e.explain(x, 0.5, 3, pixel=(8, 8), top=0), ["top", "from 1"]),
    ("steps=True", lambda e, x: sample(e, steps=True, k=3), ["steps", "integer"]),
    ("steps=2.0", lambda e, x: locality_schedule(3, 2.0), ["steps", "integer"]),
    ("k=True", lambda e, x: e.denoise(x, 0.5, True), ["k", "odd integer"]),
    ("k=3.0", lambda e, x: sample(e, steps=2, k=3.0), ["k", "odd integer"]),
    ('t="0.5"', lambda e, x: e.denoise(x, "0.5", 3), ["t", "number"]),
    ("machine=5", lambda e, x: Engine(e.train, 5), ["machine", "'bbels'"]),
    ("compile=1", lambda e, x: Engine(e.train, "els", compile=1), ["compile", "True or False"]),
    ("shape with a float", lambda e, x: sample(e, steps=2, k=3, shape=(1, 16.5, 16)), ["shape", "integer"]),
    ("callback not callable", lambda e, x: sample(e, steps=2, k=3, callback="print"), ["callback", "function"]),
    ("not a denoiser", lambda e, x: sample("bbels", steps=2, k=3), ["denoiser"]),
    ("branch of no run", lambda e, x: branch(None, 2), ["Trajectory"]),
    ("load_dataset seed", lambda e, x: load_dataset("digits", limit=5, seed="0"), ["seed", "integer"]),
    ("load_dataset channels=True", lambda e, x: load_dataset("digits", channels=True), ["channels", "1", "3"]),
    ("load_dataset name=5", lambda e, x: load_dataset(5), ["name", "path"]),
    ("load_dataset classes=1.5", lambda e, x: load_dataset("digits", classes=1.5), ["classes"]),
    ("hands fingers=5.0", lambda e, x: load_dataset("hands", n=4, fingers=5.0), ["fingers", "integer"]),
    ("ImageSet labels of text", lambda e, x: ImageSet(np.zeros((2, 1, 4, 4)), ["a", "b"]), ["labels", "integers"]),
    ("ImageSet name=5", lambda e, x: ImageSet(np.zeros((2, 1, 4, 4)), name=5), ["name", "string"]),
    ("picture target='big'", lambda e, x: figures.picture(x[0], target="big"), ["target", "integer"]),
    ("picture of a list", lambda e, x: figures.picture([[0.0]]), ["img", "[C, H, W]"]),
]


@pytest.mark.parametrize("what,call,words", CASES, ids=[c[0] for c in CASES])
def test_refused_with_a_message_that_says_what_to_pass(engine, x, what, call, words):
    with pytest.raises(ElsvizError) as err:
        call(engine, x)
    message = str(err.value)
    for word in words:
        assert word in message, f"{message!r} does not say {word!r}"


def test_the_legal_neighbours_still_work(engine, x):
    assert len(engine.explain(x, 0.5, 3, pixel=(np.int64(8), torch.tensor(8)), top=np.int64(2))) == 2
    assert len(engine.explain(x, 0.5, 3, pixel=[0, 15], top=1)) == 1
    engine.denoise(x, np.float32(0.5), np.int64(3), label=None)
    traj = sample(engine, seed=2**63 - 1, steps=2, k=np.int64(3), shape=torch.Size([1, 16, 16]))
    assert traj.final.shape == (1, 1, 16, 16)
    assert locality_schedule(np.array([3, 5, 7]), 3) == [3, 5, 7]
    assert locality_schedule(torch.tensor(5), 2) == [5, 5]
    labelled = Engine(load_dataset("digits", limit=60), "bbels", device="cpu")
    labelled.denoise(x, 0.5, 3, label=np.int64(3))
