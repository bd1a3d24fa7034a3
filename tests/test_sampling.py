"""sample() and branch() against the reverse process of docs/THEORY.md run on the float64 reference.

The float32 run and the float64 run start from the same x; every frame's mean and the final image
must agree to relative L2 <= 1e-3 (issue 2, section 3). Each frame is also checked on its own
(the reference's posterior mean at the frame's recorded x, to 1e-4), so a failure says whether one
step is wrong or the steps are chained wrongly.
"""
import numpy as np
import pytest
import torch

from elsviz import ElsvizError, branch, sample
from tests.reference import PRESET_MNIST_RESNET, as_f64, random_images, rel_l2, reverse_process


def expected_ks(k, steps):
    if k == "mnist-resnet":
        assert steps == 20
        return list(PRESET_MNIST_RESNET)
    return list(k) if isinstance(k, (list, tuple)) else [k] * steps


def check_against_reference(traj, ref, machine, steps, ks, label=None, first=None):
    """traj's frames (from step `first`, default steps-1, down to 1) against the reference run."""
    first = steps - 1 if first is None else first
    frames = [f for f in traj.frames if f.i <= first]
    ref_frames, ref_final = reverse_process(ref, machine, as_f64(frames[0].x), steps, ks, label, start=first)
    assert [f.i for f in frames] == [f.i for f in ref_frames] == list(range(first, 0, -1))
    for f, rf in zip(frames, ref_frames):
        assert f.t == pytest.approx(f.i / steps) and f.k == ks[f.i]
        one = ref.denoise(machine, f.x, f.t, f.k, label).mean  # the step on its own
        assert rel_l2(f.mean, one) <= 1e-4, f"{machine} step i={f.i} k={f.k}: mean off at its own x"
        assert rel_l2(f.x, rf.x) <= 1e-3, f"{machine} step i={f.i}: x drifted from the reference run"
        assert rel_l2(f.mean, rf.mean) <= 1e-3, f"{machine} step i={f.i} k={f.k}: mean off"
    assert rel_l2(traj.final, ref_final) <= 1e-3, f"{machine}: final off"
    torch.testing.assert_close(traj.final, frames[-1].mean)


# machine, C, (H, W), steps, k
RUNS = [
    ("is", 1, (5, 7), 8, 1),
    ("ls", 1, (5, 7), 8, 3),
    ("els", 3, (6, 5), 8, 3),
    ("bbels", 1, (5, 7), 8, 5),
    ("bbels", 1, (5, 7), 8, [1, 1, 3, 3, 5, 7, 9, 11]),  # k beyond the image: legal for bbELS
    ("ls", 3, (6, 5), 8, [1, 1, 3, 5, 7, 9, 13, 15]),
    ("els", 1, (5, 7), 8, [1, 1, 1, 3, 3, 3, 5, 5]),
    ("bbels", 1, (5, 7), 20, "mnist-resnet"),  # k up to 15 on 5 x 7 images
    ("ls", 3, (6, 5), 20, "mnist-resnet"),
]


@pytest.mark.parametrize("run", RUNS, ids=lambda r: f"{r[0]}-C{r[1]}-{r[2][0]}x{r[2][1]}-S{r[3]}-k{r[4]}".replace(" ", ""))
def test_sample_matches_reverse_process(make_pair, run):
    machine, C, hw, steps, k = run
    images = random_images(13, C, *hw, seed=RUNS.index(run))
    engine, ref = make_pair(machine, images)
    seed = 100 + RUNS.index(run)
    traj = sample(engine, seed=seed, steps=steps, k=k)
    ks = expected_ks(k, steps)
    assert traj.steps == steps and traj.seed == seed and len(traj.frames) == steps - 1
    assert list(traj.ks)[1:] == ks[1:]
    assert tuple(traj.final.shape) == (1, C, *hw)
    # x ~ N(0, I) from the device's generator seeded with `seed`, one training-sized image
    noise = torch.randn((1, C, *hw), generator=torch.Generator("cpu").manual_seed(seed))
    torch.testing.assert_close(traj.frames[0].x, noise)
    check_against_reference(traj, ref, machine, steps, ks)


def test_given_x_batch_and_label(make_pair):
    images = random_images(37, 3, 5, 7, seed=20)
    labels = np.arange(37) % 3
    x = torch.from_numpy(np.random.default_rng(21).standard_normal((2, 3, 5, 7)).astype(np.float32))
    for machine, k in [("bbels", 3), ("els", 3), ("ls", 5), ("is", 1)]:
        engine, ref = make_pair(machine, images, labels)
        traj = sample(engine, x, steps=6, k=k, label=2)
        torch.testing.assert_close(traj.frames[0].x, x)
        assert tuple(traj.final.shape) == (2, 3, 5, 7)
        assert set(torch.unique(traj.frames[-1].source_index).tolist()) <= {2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35}
        check_against_reference(traj, ref, machine, 6, [k] * 6, label=2)


@pytest.mark.parametrize("machine", ["els", "bbels"])
def test_shape_another_size(make_pair, machine):
    images = random_images(13, 1, 5, 7, seed=22)
    engine, ref = make_pair(machine, images)
    traj = sample(engine, seed=3, steps=6, k=3, shape=(2, 1, 8, 6))
    assert tuple(traj.final.shape) == (2, 1, 8, 6)
    check_against_reference(traj, ref, machine, 6, [3] * 6)


def test_shape_without_batch_axis(make_pair):
    engine, _ = make_pair("bbels", random_images(5, 3, 5, 7, seed=23))
    traj = sample(engine, seed=4, steps=4, k=3, shape=(3, 5, 7))
    assert tuple(traj.final.shape) == (1, 3, 5, 7)
    traj = sample(engine, seed=4, steps=4, k=3)
    assert tuple(traj.final.shape) == (1, 3, 5, 7)


def test_same_seed_same_result(make_pair):
    engine, _ = make_pair("bbels", random_images(13, 1, 5, 7, seed=24))
    a = sample(engine, seed=7, steps=6, k=3)
    b = sample(engine, seed=7, steps=6, k=3)
    c = sample(engine, seed=8, steps=6, k=3)
    assert torch.equal(a.final, b.final)
    assert all(torch.equal(fa.mean, fb.mean) and torch.equal(fa.x, fb.x) for fa, fb in zip(a.frames, b.frames))
    assert not torch.equal(a.frames[0].x, c.frames[0].x)
    # no seed: a fresh one is drawn and recorded, and it reproduces the run
    d = sample(engine, steps=6, k=3)
    assert isinstance(d.seed, int)
    assert torch.equal(sample(engine, seed=d.seed, steps=6, k=3).final, d.final)


def test_els_refuses_a_preset_beyond_the_training_images(make_pair):
    engine, _ = make_pair("els", random_images(13, 1, 5, 7, seed=25))
    with pytest.raises(ElsvizError, match="k"):
        sample(engine, seed=0, steps=20, k="mnist-resnet")  # k up to 15 > 5
    sample(engine, seed=0, steps=6, k=5)  # still usable; k = 5 fits


@pytest.mark.parametrize("new_k", [11, [1, 3, 3, 5, 5, 7, 7, 9, 9, 9]])
def test_branch(make_pair, new_k):
    images = random_images(13, 1, 5, 7, seed=26)
    engine, ref = make_pair("bbels", images)
    steps, at = 10, 4
    traj = sample(engine, seed=5, steps=steps, k=3)
    before = [(f.i, f.mean.clone()) for f in traj.frames]
    final_before = traj.final.clone()
    seen = []
    new = branch(traj, at_step=at, k=new_k, callback=seen.append)
    # the frames before at_step are kept as they were
    kept = [f for f in new.frames if f.i > at]
    assert [f.i for f in kept] == list(range(steps - 1, at, -1))
    for f, g in zip(kept, traj.frames):
        assert f.i == g.i and torch.equal(f.mean, g.mean) and torch.equal(f.x, g.x) and f.k == g.k
    assert [f.i for f in new.frames] == list(range(steps - 1, 0, -1))
    # step at_step starts from the recorded x, with the new schedule from there on
    start = next(f for f in new.frames if f.i == at)
    assert torch.equal(start.x, next(f for f in traj.frames if f.i == at).x)
    ks = [3] * steps
    for i in range(1, at + 1):
        ks[i] = new_k if isinstance(new_k, int) else new_k[i]
    assert list(new.ks)[1:] == ks[1:]
    check_against_reference(new, ref, "bbels", steps, ks, first=at)
    assert [f.i for f in seen] == list(range(at, 0, -1))
    # the original trajectory is untouched
    assert [(f.i) for f in traj.frames] == [i for i, _ in before]
    assert all(torch.equal(f.mean, m) for f, (_, m) in zip(traj.frames, before))
    assert torch.equal(traj.final, final_before)


def test_callback_sees_every_step(make_pair):
    engine, _ = make_pair("els", random_images(13, 1, 5, 7, seed=27))
    seen = []
    traj = sample(engine, seed=6, steps=7, k=3, callback=seen.append)
    assert [f.i for f in seen] == [6, 5, 4, 3, 2, 1]
    for f, g in zip(seen, traj.frames):
        assert f.i == g.i and torch.equal(f.mean, g.mean) and torch.equal(f.x, g.x)
        assert f.source_index is not None and tuple(f.source_index.shape) == (1, 5, 7)
        assert tuple(f.source_pos.shape) == (1, 5, 7, 2) and tuple(f.entropy.shape) == (1, 5, 7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("machine,k", [("bbels", "mnist-resnet"), ("els", 3), ("is", 1)])
def test_sample_on_cuda(make_pair, machine, k):
    images = random_images(13, 1, 5, 7, seed=28)
    engine, ref = make_pair(machine, images, device="cuda")
    traj = sample(engine, seed=9, steps=20, k=k)
    assert traj.final.is_cuda
    noise = torch.randn((1, 1, 5, 7), generator=torch.Generator("cuda").manual_seed(9), device="cuda")
    torch.testing.assert_close(traj.frames[0].x, noise)
    assert torch.equal(sample(engine, seed=9, steps=20, k=k).final, traj.final)
    check_against_reference(traj, ref, machine, 20, expected_ks(k, 20))
