"""The exact properties of docs/THEORY.md, on the engine: circular-shift equivariance (ELS), locality
(LS, ELS, bbELS), IS memorisation, and the collapse of the weights onto one window at the last step
(or onto a set of identical windows, as on flat background)."""
import math

import numpy as np
import pytest
import torch

from tests.reference import a_b, noisy_query, random_images

MACHINES_LOCAL = ("ls", "els", "bbels")


@pytest.mark.parametrize("out", [(5, 7), (6, 8)])
@pytest.mark.parametrize("shift", [(2, -3), (1, 1), (0, 4)])
def test_els_is_circularly_equivariant(make_pair, shift, out):
    images = random_images(13, 3, 5, 7, seed=1)
    engine, ref = make_pair("els", images)
    x = torch.from_numpy(noisy_query(2, 3, *out, 0.4, seed=2))  # [B, C, H', W']
    post = engine.denoise(x, 0.4, 3)
    moved = engine.denoise(torch.roll(x, shift, dims=(2, 3)), 0.4, 3)
    torch.testing.assert_close(moved.mean, torch.roll(post.mean, shift, dims=(2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moved.entropy, torch.roll(post.entropy, shift, dims=(1, 2)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(moved.source_weight, torch.roll(post.source_weight, shift, dims=(1, 2)), atol=1e-5, rtol=1e-4)
    # the named source moves with the pixel where the reference says the winner is clear
    clear = torch.from_numpy(ref.denoise("els", x.numpy(), 0.4, 3).margin > 1.01)  # [B, H', W']
    clear = torch.roll(clear, shift, dims=(1, 2))
    assert clear.float().mean() > 0.5
    assert torch.equal(moved.source_index[clear], torch.roll(post.source_index, shift, dims=(1, 2))[clear])
    rolled_pos = torch.roll(post.source_pos, shift, dims=(1, 2))
    assert torch.equal(moved.source_pos[clear], rolled_pos[clear])


def outside_mask(machine, i, j, k, H, W):
    """[H, W] bool: pixels outside the k x k window around (i, j) (circular for ELS)."""
    d = k // 2
    rows, cols = np.arange(H)[:, None], np.arange(W)[None, :]
    if machine == "els":  # circular distance
        dr = np.minimum((rows - i) % H, (i - rows) % H)
        dc = np.minimum((cols - j) % W, (j - cols) % W)
    else:
        dr, dc = np.abs(rows - i), np.abs(cols - j)
    return (dr > d) | (dc > d)


@pytest.mark.parametrize("pixel", [(2, 3), (0, 6), (4, 0)])
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("machine", MACHINES_LOCAL)
def test_locality(make_pair, machine, k, pixel):
    H, W = 5, 7
    images = random_images(13, 3, H, W, seed=3)
    engine, _ = make_pair(machine, images)
    t = 0.5
    x = noisy_query(1, 3, H, W, t, seed=4)  # [1, C, H, W]
    i, j = pixel
    base = engine.denoise(torch.from_numpy(x), t, k)

    out = outside_mask(machine, i, j, k, H, W)
    assert out.any()
    far = x.copy()
    far[:, :, out] += np.random.default_rng(5).normal(0, 1.0, size=far[:, :, out].shape).astype(np.float32)
    post = engine.denoise(torch.from_numpy(far), t, k)
    torch.testing.assert_close(post.mean[..., i, j], base.mean[..., i, j], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(post.entropy[..., i, j], base.entropy[..., i, j], atol=1e-5, rtol=1e-5)
    assert torch.equal(post.source_index[..., i, j], base.source_index[..., i, j])
    assert torch.equal(post.source_pos[..., i, j, :], base.source_pos[..., i, j, :])
    # the pixels that did see the change did change (the test is not vacuous)
    changed = (post.mean - base.mean).abs().amax(dim=1)[0]  # [H, W]
    assert changed.max() > 1e-3

    near = x.copy()
    ni, nj = (i + 1) % H if machine == "els" else min(i + 1, H - 1), j  # a neighbour inside the window
    if (ni, nj) == (i, j):
        ni = i - 1
    near[:, :, ni, nj] += 0.8
    post = engine.denoise(torch.from_numpy(near), t, k)
    assert (post.mean[..., i, j] - base.mean[..., i, j]).abs().max() > 1e-4, "a pixel inside the window had no effect"


def test_ls_and_bbels_are_local_on_another_size_too(make_pair):
    """bbELS at another output size: still local."""
    images = random_images(13, 1, 5, 7, seed=6)
    engine, _ = make_pair("bbels", images)
    x = noisy_query(1, 1, 8, 9, 0.5, seed=7)
    i, j, k = 4, 4, 3
    base = engine.denoise(torch.from_numpy(x), 0.5, k)
    far = x.copy()
    out = outside_mask("bbels", i, j, k, 8, 9)
    far[:, :, out] = -far[:, :, out]
    post = engine.denoise(torch.from_numpy(far), 0.5, k)
    torch.testing.assert_close(post.mean[..., i, j], base.mean[..., i, j], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_is_memorises(make_pair, seed):
    """An IS run ends on a training image (the paper's foil)."""
    from elsviz import sample

    images = random_images(9, 3, 5, 7, seed=8)
    engine, _ = make_pair("is", images)
    traj = sample(engine, seed=seed, steps=20, k=1)
    final = traj.final[0].numpy()  # [C, H, W]
    dist = np.abs(images - final[None]).reshape(9, -1).max(axis=1)  # [N]
    assert dist.min() < 1e-3, f"IS final is {dist.min():.3g} away from every training image"
    n = int(dist.argmin())
    assert (traj.frames[-1].source_index == n).all()


@pytest.mark.parametrize(
    "machine,k",
    [("ls", 3), ("els", 3), ("els", 5), ("bbels", "mnist-resnet"), ("bbels", 3), ("ls", "mnist-resnet")],
)
def test_last_step_copies_the_heaviest_key(make_pair, machine, k):
    """At t = 1/20 each pixel's mean is the centre pixel of its heaviest key, up to the weight
    left on other windows: |mean - centre| <= 2 (1 - weight * count) exactly (pixel values lie in
    [-1, 1]); and the weights have (mostly) collapsed by then."""
    from elsviz import sample

    images = random_images(13, 1, 5, 7, seed=9, levels=5)
    engine, _ = make_pair(machine, images)
    for seed in range(3):
        traj = sample(engine, seed=seed, steps=20, k=k)
        f = traj.frames[-1]
        assert f.i == 1
        idx, pos = f.source_index[0].numpy(), f.source_pos[0].numpy()  # [H, W], [H, W, 2]
        centre = images[idx, :, pos[..., 0], pos[..., 1]]  # [H, W, C]
        mass = (f.source_weight * f.source_count)[0].double().numpy()  # [H, W]
        assert (mass <= 1 + 1e-5).all()
        gap = np.abs(f.mean[0].numpy().transpose(1, 2, 0) - centre).max(axis=2)  # [H, W]
        assert (gap <= 2 * (1 - mass) + 1e-4).all(), f"mean far from its heaviest key's centre: {gap.max():.3g}"
        assert np.median(mass) > 0.99 and (mass > 0.99).mean() >= 0.75, "weights have not collapsed at t = 1/20"
        torch.testing.assert_close(traj.final, f.mean)


@pytest.mark.parametrize("machine", MACHINES_LOCAL)
def test_flat_background_is_shared(make_pair, machine):
    """Images that are mostly flat -1 with a small random blob: background pixels of a flat query
    draw on many identical all -1 windows; they tie (source_count > 1, weight * count ~ 1, entropy
    ~ log count) and the count is the number of such windows among the pixel's keys."""
    g = np.random.default_rng(10)
    N, H, W, k = 6, 7, 9, 3
    images = -np.ones((N, 1, H, W), np.float32)
    for n in range(N):
        r, c = g.integers(0, H - 1), g.integers(0, W - 1)
        images[n, :, r : r + 2, c : c + 2] = g.uniform(-0.5, 1, size=(2, 2))
    engine, ref = make_pair(machine, images)
    t = 0.05
    a, b = a_b(t)
    x = (a * -np.ones((1, 1, H, W)) + b * 0.5 * g.standard_normal((1, 1, H, W))).astype(np.float32)
    post = engine.denoise(torch.from_numpy(x), t, k)
    rp = ref.denoise(machine, x, t, k)
    flat = (rp.source_count > 1) & (rp.margin > 1.01)  # the reference's shared pixels
    assert flat.mean() > 0.5
    cnt = post.source_count.numpy()
    np.testing.assert_array_equal(cnt[flat], rp.source_count[flat])
    mass = (post.source_weight * post.source_count).numpy()
    assert (mass[flat] > 0.99).all()
    np.testing.assert_allclose(post.entropy.numpy()[flat], np.log(cnt[flat]), atol=0.05)
    # the named key of a shared pixel is one of the identical all -1 windows
    for bi, i, j in zip(*np.nonzero(flat)):
        n, (u, v) = int(post.source_index[bi, i, j]), post.source_pos[bi, i, j].tolist()
        assert np.array_equal(ref.key_window(machine, n, u, v, k), rp.pixels[bi][i][j].top_window)
    assert math.isclose(float(post.mean.numpy()[0, 0][flat[0]].mean()), -1.0, abs_tol=1e-2)
