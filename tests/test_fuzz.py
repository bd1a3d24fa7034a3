"""A seeded fuzz of the public API: every call either works or raises ElsvizError, never a bare
ValueError, TypeError, IndexError or a crash deep inside torch (issue 10).

Each example starts from legal arguments and replaces none, one or two of them with hostile values:
strings for numbers, floats for integers, bools, huge or negative numbers, NaN, wrong shapes,
wrong types, and the values each argument in particular must refuse (an even k, a pixel outside
the image). Values that are legal but merely expensive (a 1,000-step run, a 1,024-pixel output)
are left out: they are not errors. Hypothesis runs derandomized (the same examples every run), on
30 digits of 16x16.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elsviz import ElsvizError, Engine, ImageSet, branch, export, figures, load_dataset, sample
from elsviz.schedule import locality_schedule
from elsviz.validate import MAX_SEED

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def noise(shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), -1), st.integers(2**63, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4), st.binary(max_size=3),
    st.lists(st.integers(-3, 20), max_size=3), st.tuples(st.floats(-2, 20), st.integers(-3, 20)),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.sampled_from([object(), np.float32(0.5), np.int64(-3), torch.tensor(0.5), torch.tensor([1, 2]),
                     torch.tensor(True), np.array(["a"]), complex(1, 1), math.nan, "3", "0.5", b"3", 1.0, 3.0,
                     noise((2, 2)), print]),
)


def arguments(data, valid: dict, bad: dict | None = None) -> dict:
    """Legal values for every argument, then none, one or two of them made hostile."""
    args = {name: data.draw(strategy, label=name) for name, strategy in valid.items()}
    how_many = data.draw(st.sampled_from([0, 1, 1, 1, 1, 2]), label="hostile arguments")
    for name in data.draw(st.permutations(list(valid)), label="order")[:how_many]:
        own = (bad or {}).get(name)
        args[name] = data.draw(HOSTILE if own is None else st.one_of(own, HOSTILE), label=f"hostile {name}")
    return args


def refused_or_done(call):
    try:
        call()
    except ElsvizError as err:
        assert str(err), "an ElsvizError needs a message"


@pytest.fixture(scope="module")
def train():
    return load_dataset("digits", limit=30)


@pytest.fixture(scope="module")
def engines(train):
    return {m: Engine(train, m, device="cpu") for m in ("is", "ls", "els", "bbels")}


@pytest.fixture(scope="module")
def run(engines):
    return sample(engines["bbels"], seed=0, steps=4, k=3)


MACHINE = st.sampled_from(["is", "ls", "els", "bbels"])
K = st.sampled_from([1, 3, 5, 7])
BAD_K = st.sampled_from([0, 2, -1, 17, 33, "mnist-resnet"])
T = st.floats(0.01, 0.99)
BAD_T = st.sampled_from([0.0, 1.0, -0.5, 2.0, math.inf, "0.5"])
LABEL = st.one_of(st.none(), st.integers(0, 9))
BAD_LABEL = st.sampled_from([12, -1, "3", 3.0, True])
SEED = st.one_of(st.integers(0, 1000), st.just(MAX_SEED))
BAD_SEED = st.sampled_from([MAX_SEED + 1, -1, "7", 1.5, True])
X16 = st.just(noise((1, 1, 16, 16)))
BAD_X = st.sampled_from([noise((1, 16, 16)), noise((2, 1, 16, 16)), noise((1, 1, 0, 16)), noise((16, 16)),
                         noise((1, 3, 16, 16)), noise((1, 1, 9, 11)), noise((1, 1, 16, 16)).to(torch.complex64),
                         torch.full((1, 1, 16, 16), math.nan), torch.zeros(1, 1, 16, 16, dtype=torch.int64),
                         np.zeros((1, 1, 16, 16), np.float32)])
PIXEL = st.tuples(st.integers(0, 15), st.integers(0, 15))
BAD_PIXEL = st.sampled_from([(1.5, 2), (1,), (1, 2, 3), (16, 0), (-1, 0), "8,8", (True, 1), np.array([3.0, 4.0])])


@FUZZ
@given(data=st.data())
def test_load_dataset(data, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ELSVIZ_DATA", str(tmp_path_factory.getbasetemp() / "no-data"))  # nothing fetched
    name = data.draw(st.sampled_from(["digits", "hands", "photos"]), label="name")
    valid = {"size": st.sampled_from([None, 8, 12, (10, 14)]) if name == "digits" else st.sampled_from([None, 24, 28]),
             "limit": st.integers(1, 12), "seed": SEED, "channels": st.sampled_from([None, 1, 3]),
             "classes": st.none(), "max_bytes": st.integers(2**20, 2**40)}
    if name != "digits":
        valid["n"] = st.integers(9, 12)
    if name == "hands":
        valid["fingers"] = st.sampled_from([5, 4, [4, 6]])
    args = arguments(data, valid, {"size": st.sampled_from([0, 2000, (8,), (8, 8, 8), "16"]),
                                   "channels": st.sampled_from([2, 4, True]), "seed": BAD_SEED,
                                   "classes": st.sampled_from([12, "seven", [1, "x"], [], 1.5]),
                                   "n": st.sampled_from([0, -1, 5.0]), "fingers": st.sampled_from([2, 9, 5.0, [], [5, "x"]]),
                                   "max_bytes": st.sampled_from([0, 1, -1])})
    name = data.draw(st.one_of(st.just(name), st.just(name), st.sampled_from(["no-such-set", "mnist"]), HOSTILE),
                     label="name or hostile")
    refused_or_done(lambda: load_dataset(name, **args))


@FUZZ
@given(data=st.data())
def test_imageset(data):
    args = arguments(data, {
        "images": st.builds(lambda n, c, s: np.zeros((n, c, s, s), np.float32), st.integers(2, 3), st.sampled_from([1, 3]),
                            st.integers(1, 5)),
        "labels": st.one_of(st.none(), st.just([0, 1])), "class_names": st.one_of(st.none(), st.just(["a", "b"])),
        "name": st.just("set")}, {
        "images": st.sampled_from([np.full((2, 1, 4, 4), 2.0), np.full((2, 1, 4, 4), np.nan), np.zeros((2, 4, 4)),
                                   np.zeros((0, 1, 4, 4)), np.zeros((2, 2, 4, 4)), np.zeros((2, 1, 4, 4), np.complex64),
                                   np.zeros((2, 1, 4, 4), object), torch.zeros(2, 1, 4, 4, dtype=torch.bool)]),
        "labels": st.sampled_from([[0], [-1, 0], [0.5, 1.0], ["a", "b"], [True, False], np.zeros((2, 2), int)]),
        "class_names": st.sampled_from(["ab", 3])})
    use = arguments(data, {"pick": st.lists(st.integers(0, 1), min_size=1, max_size=3), "label": LABEL},
                    {"pick": st.sampled_from([[], [5], [-5], [0.5], [[0]], "0", torch.tensor([True, False])]),
                     "label": BAD_LABEL})

    def call():
        s = ImageSet(args["images"], args["labels"], args["class_names"], args["name"])
        s.subset(use["pick"])
        s.indices_for(use["label"])

    refused_or_done(call)


@FUZZ
@given(data=st.data())
def test_engine(train, data):
    args = arguments(data, {"machine": MACHINE, "device": st.sampled_from(["cpu", "auto", None, torch.device("cpu")]),
                            "cache_bytes": st.one_of(st.none(), st.integers(0, 2**30)),
                            "chunk_elems": st.one_of(st.none(), st.integers(2**10, 2**22)), "compile": st.just(False)},
                     {"machine": st.sampled_from(["elz", "BBELS ", ""]),
                      "device": st.sampled_from(["cuda", "cuda:7", "meta", "tpu", 3, 3.5])})
    train_or_not = data.draw(st.one_of(st.just(train), st.just(train), HOSTILE), label="train")

    def call():
        engine = Engine(train_or_not, args["machine"], args["device"], cache_bytes=args["cache_bytes"],
                        chunk_elems=args["chunk_elems"], compile=args["compile"])
        engine.denoise(noise((1, 1, 16, 16)), 0.5, 3)

    refused_or_done(call)


@FUZZ
@given(data=st.data())
def test_denoise(engines, data):
    machine = data.draw(MACHINE, label="machine")
    args = arguments(data, {"x": X16, "t": T, "k": K, "label": LABEL},
                     {"x": BAD_X, "t": BAD_T, "k": BAD_K, "label": BAD_LABEL})
    refused_or_done(lambda: engines[machine].denoise(**args))


@FUZZ
@given(data=st.data())
def test_explain(engines, data):
    machine = data.draw(MACHINE, label="machine")
    args = arguments(data, {"x": X16, "t": T, "k": K, "pixel": PIXEL, "top": st.integers(1, 12), "label": LABEL},
                     {"x": BAD_X, "t": BAD_T, "k": BAD_K, "pixel": BAD_PIXEL,
                      "top": st.sampled_from([0, -1, "3", True, 2.0]), "label": BAD_LABEL})
    refused_or_done(lambda: engines[machine].explain(**args))


@FUZZ
@given(data=st.data())
def test_sample(engines, data):
    machine = data.draw(MACHINE, label="machine")
    args = arguments(data, {
        "x": st.none(), "steps": st.integers(2, 4), "k": st.one_of(K, st.just("mnist-resnet")), "label": LABEL,
        "callback": st.sampled_from([None, lambda frame: None]), "seed": SEED,
        "shape": st.one_of(st.none(), st.tuples(st.integers(1, 2), st.just(1), st.just(16), st.just(16)))}, {
        "x": BAD_X, "steps": st.sampled_from([1, 0, True, 3.0, "20", 10**6]), "k": st.one_of(BAD_K, st.just([3, 3, 3])),
        "label": BAD_LABEL, "callback": st.sampled_from(["print", 3]), "seed": BAD_SEED,
        "shape": st.sampled_from([(1, 16.5, 16), (1, 16), (0, 1, 16, 16), (1, 2, 16, 16), (1, 1, 4000, 16), "16x16"])})
    refused_or_done(lambda: sample(engines[machine], **args))
    refused_or_done(lambda: sample(data.draw(HOSTILE, label="not a denoiser"), steps=4, k=3))


@FUZZ
@given(data=st.data())
def test_branch(run, engines, data):
    args = arguments(data, {"at_step": st.integers(1, 3), "k": st.one_of(st.none(), K, st.just("mnist-resnet")),
                            "callback": st.none(), "denoiser": st.sampled_from([None, engines["els"]])},
                     {"at_step": st.sampled_from([0, 4, -1, True, 2.0, "2"]), "k": BAD_K})
    refused_or_done(lambda: branch(run, **args))
    refused_or_done(lambda: branch(data.draw(HOSTILE, label="not a run"), 2))


@FUZZ
@given(data=st.data())
def test_locality_schedule(data):
    args = arguments(data, {"k": st.one_of(K, st.sampled_from(["mnist-resnet", "cifar10-unet"]),
                                           st.just(np.int64(3)), st.just(torch.tensor(5))),
                            "steps": st.integers(2, 30)},
                     {"k": st.one_of(BAD_K, st.sampled_from([[3, 3], np.array([3.0, 5.0]), torch.ones(2, 2), "nope"])),
                      "steps": st.sampled_from([1, 0, True, 2.5, "20", 10**6])})
    refused_or_done(lambda: locality_schedule(**args))


@FUZZ
@given(data=st.data())
def test_figures(run, data):
    last = run.frames[-1]
    pic = arguments(data, {"img": st.sampled_from([run.final[0], noise((3, 8, 8)), noise((1, 1, 16, 16))]),
                           "target": st.integers(16, 200)},
                    {"img": st.sampled_from([noise((2, 16, 16)), noise((16, 16)), np.zeros((1, 4, 4), object),
                                             noise((1, 0, 4)), [[0.0]]]),
                     "target": st.sampled_from([0, -5, "big", 10**6])})
    refused_or_done(lambda: figures.picture(**pic))
    prov = arguments(data, {"img": st.just(run.final[0]), "source_index": st.just(last.source_index[0]),
                            "source_pos": st.just(last.source_pos[0]), "source_count": st.just(last.source_count[0]),
                            "target": st.integers(16, 200), "alpha": st.floats(0, 1),
                            "mark": st.one_of(st.none(), PIXEL)},
                     {"img": st.sampled_from([noise((1, 8, 8)), noise((2, 16, 16))]),
                      "source_index": st.sampled_from([last.source_index, last.source_pos[0], noise((16, 16))]),
                      "source_pos": st.sampled_from([last.source_index[0]]), "alpha": st.sampled_from([1.5, -0.1]),
                      "mark": BAD_PIXEL})
    refused_or_done(lambda: figures.provenance_picture(**prov))
    gif = arguments(data, {"traj": st.just(run), "target": st.integers(16, 64), "frame_ms": st.integers(10, 500),
                           "batch": st.just(0)},
                    {"traj": st.sampled_from([run.frames, run.final]), "batch": st.sampled_from([1, -1]),
                     "frame_ms": st.sampled_from([0, -10])})
    refused_or_done(lambda: figures.animation_gif(gif.pop("traj"), **gif))
    fig = arguments(data, {"traj": st.just(run), "height": st.integers(200, 600), "frame_ms": st.integers(10, 500),
                           "batch": st.just(0)}, {"traj": st.sampled_from([run.frames, run.final]),
                                                  "batch": st.sampled_from([1, -1]), "height": st.sampled_from([0, 10**6])})
    refused_or_done(lambda: figures.animation_figure(fig.pop("traj"), **fig))


@settings(FUZZ, max_examples=20)  # each done call encodes a video
@given(data=st.data())
def test_run_mp4(run, data):
    args = arguments(data, {"traj": st.just(run), "target": st.integers(1, 48), "batch": st.just(0)},
                     {"traj": st.sampled_from([run.frames, run.final]), "batch": st.sampled_from([1, -1]),
                      "target": st.sampled_from([0, -5, 10**6])})
    refused_or_done(lambda: export.run_mp4(args.pop("traj"), **args))
