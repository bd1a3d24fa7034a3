"""Sanity checks of the float64 reference itself, on cases small enough to compute by hand.

If the reference were wrong, every engine comparison would be meaningless; these tests pin it to
closed forms (tanh for two opposite keys, N = 1 sets, DDIM on the forward path).
"""
import math

import numpy as np
import pytest

from tests.reference import (
    Reference,
    a_b,
    beta,
    noisy_query,
    random_images,
    reverse_process,
    stickout,
    window,
)


def test_schedule_endpoints():
    assert beta(0.0) == 0.0
    a, b = a_b(0.5)
    assert a**2 + b**2 == pytest.approx(1.0)
    assert b == pytest.approx(math.sin(0.5 / 1.008 * math.pi / 2))
    assert a_b(0.999)[1] < 1.0


def test_window_modes_by_hand():
    img = np.arange(12, dtype=np.float64).reshape(1, 3, 4)  # rows [0..3], [4..7], [8..11]
    assert window(img, 1, 1, 3, "inside").tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    assert window(img, 0, 0, 3, "zeros").tolist() == [0, 0, 0, 0, 0, 1, 0, 4, 5]
    assert window(img, 0, 0, 3, "circular").tolist() == [11, 8, 9, 3, 0, 1, 7, 4, 5]
    # circular wraps more than once when k exceeds the image: row -2 of 3 rows is row 1
    assert window(img, 0, 0, 5, "circular").reshape(5, 5)[0].tolist() == [6, 7, 4, 5, 6]
    assert stickout(0, 3, 3, 3, 4) == (1, 0, 0, 1)
    assert stickout(1, 1, 5, 3, 4) == (1, 1, 1, 0)


def test_single_image_is_copied_by_every_machine():
    """N = 1: IS and LS copy the image; so does bbELS once every pixel is its own class (k >= 7)."""
    img = random_images(1, 3, 5, 7, seed=1)
    ref = Reference(img)
    x = noisy_query(2, 3, 5, 7, 0.7, seed=2)
    for machine, k in [("is", 1), ("ls", 3), ("ls", 15), ("bbels", 7), ("bbels", 9)]:
        post = ref.denoise(machine, x, 0.7, k)
        np.testing.assert_allclose(post.mean, np.broadcast_to(img, x.shape), atol=1e-12)
        assert (post.source_weight == 1).all() and (post.entropy == 0).all() and (post.source_index == 0).all()
        assert (post.source_count == 1).all()
        if machine in ("is", "ls"):  # the key sits where the pixel is
            assert (post.source_pos[..., 0] == np.arange(5)[:, None]).all()
            assert (post.source_pos[..., 1] == np.arange(7)[None, :]).all()


@pytest.mark.parametrize("t", [0.05, 0.5, 0.95])
def test_two_opposite_keys_give_tanh(t):
    """ELS, k = 1, one 1 x 2 image [-1, +1]: two keys, mean = tanh(a q / b^2) for query value q."""
    ref = Reference(np.array([[[[-1.0, 1.0]]]]))
    a, b = a_b(t)
    x = np.array([[[[0.3, -0.05]]]])
    post = ref.denoise("els", x, t, 1)
    np.testing.assert_allclose(post.mean[0, 0, 0], np.tanh(a * x[0, 0, 0] / b**2), rtol=1e-12)
    z = 2 * a * 0.3 / b**2  # log w(+1) - log w(-1)
    logp = np.array([-np.log1p(np.exp(-z)), -z - np.log1p(np.exp(-z))])
    p = np.exp(logp)
    assert post.entropy[0, 0, 0] == pytest.approx(-(p * logp).sum(), rel=1e-9)
    assert post.source_weight[0, 0, 0] == pytest.approx(p.max(), rel=1e-12)
    assert tuple(post.source_pos[0, 0, 0]) == (0, 1)  # q > 0 picks the +1 pixel
    np.testing.assert_allclose(post.score, -(x - a * post.mean) / b**2, rtol=1e-12)


def test_is_two_flat_images_and_duplicates():
    """IS with images +1, -1, -1 (a duplicate): w(+1) : w(-1) = exp(2 a sum(x) / b^2) : 1 each."""
    imgs = np.stack([np.full((1, 3, 4), v) for v in (1.0, -1.0, -1.0)])
    ref = Reference(imgs)
    t = 0.6
    a, b = a_b(t)
    x = np.full((1, 1, 3, 4), -0.02)
    post = ref.denoise("is", x, t)
    e = np.exp(2 * a * x.sum() / b**2)
    w = np.array([e, 1, 1]) / (e + 2)
    np.testing.assert_allclose(post.mean, w[0] - w[1] - w[2], rtol=1e-12)
    assert (post.source_count == 2).all()  # the two identical -1 images tie
    assert post.source_weight[0, 0, 0] == pytest.approx(w[1], rel=1e-12)
    assert post.source_index[0, 0, 0] == 1  # the first of the tied ones (any is fine for the engine)
    assert post.entropy[0, 0, 0] == pytest.approx(-(w * np.log(w)).sum(), rel=1e-9)


def test_ls_with_a_window_covering_everything_is_is():
    imgs = random_images(6, 1, 4, 3, seed=3)
    ref = Reference(imgs)
    x = noisy_query(1, 1, 4, 3, 0.5, seed=4)
    is_ = ref.denoise("is", x, 0.5)
    ls = ref.denoise("ls", x, 0.5, 7)  # 2 * 4 - 1: every zero-padded window holds the whole image
    np.testing.assert_allclose(ls.mean, is_.mean, rtol=1e-10)
    np.testing.assert_allclose(ls.entropy, is_.entropy, rtol=1e-10)


@pytest.mark.parametrize("k", [5, 7, 9])
def test_bbels_equals_ls_once_k_covers_the_image(k):
    imgs = random_images(5, 1, 5, 4, seed=5)
    ref = Reference(imgs)
    x = noisy_query(1, 1, 5, 4, 0.4, seed=6)
    np.testing.assert_allclose(ref.denoise("bbels", x, 0.4, k).mean, ref.denoise("ls", x, 0.4, k).mean, rtol=1e-10)


def test_bbels_and_els_agree_at_k1_and_key_counts():
    imgs = random_images(3, 1, 4, 5, seed=7)
    ref = Reference(imgs)
    x = noisy_query(1, 1, 4, 5, 0.3, seed=8)
    np.testing.assert_allclose(ref.denoise("bbels", x, 0.3, 1).mean, ref.denoise("els", x, 0.3, 1).mean, rtol=1e-10)
    assert len(ref.pixel("els", x[0].astype(float), 0, 0, 0.3, 3).keys) == 3 * 2 * 3  # interior centres only
    assert len(ref.pixel("bbels", x[0].astype(float), 1, 2, 0.3, 3).keys) == 3 * 2 * 3  # interior pixel
    assert len(ref.pixel("bbels", x[0].astype(float), 0, 2, 0.3, 3).keys) == 3 * 3  # top band: row 0, interior cols
    assert len(ref.pixel("bbels", x[0].astype(float), 0, 0, 0.3, 3).keys) == 3  # corner: the corner only


def test_labels_restrict_to_the_subset():
    imgs = random_images(7, 3, 4, 4, seed=9)
    labels = np.array([0, 1, 1, 0, 2, 1, 0])
    ref = Reference(imgs, labels)
    sub = Reference(imgs[labels == 1])
    x = noisy_query(1, 3, 4, 4, 0.5, seed=10)
    for machine in ("is", "ls", "els", "bbels"):
        a = ref.denoise(machine, x, 0.5, 3, label=1)
        b = sub.denoise(machine, x, 0.5, 3)
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
        assert set(np.unique(a.source_index)) <= {1, 2, 5}
        np.testing.assert_array_equal(np.array([1, 2, 5])[b.source_index], a.source_index)


def test_els_is_circularly_equivariant():
    imgs = random_images(4, 1, 5, 5, seed=11)
    ref = Reference(imgs)
    x = noisy_query(1, 1, 6, 7, 0.5, seed=12)
    shifted = np.roll(x, (2, -3), axis=(2, 3))
    np.testing.assert_allclose(
        ref.denoise("els", shifted, 0.5, 3).mean, np.roll(ref.denoise("els", x, 0.5, 3).mean, (2, -3), axis=(2, 3)), rtol=1e-12
    )


def test_ddim_step_keeps_the_forward_path():
    """With one training image m and x = a_t m + b_t e, one step lands on a_t' m + b_t' e; the end is m."""
    m = random_images(1, 1, 3, 4, seed=13).astype(np.float64)
    ref = Reference(m)
    e = np.random.default_rng(14).standard_normal((1, 1, 3, 4))
    steps = 5
    a, b = a_b(4 / steps)
    frames, final = reverse_process(ref, "is", a * m + b * e, steps, [1] * steps)
    assert [f.i for f in frames] == [4, 3, 2, 1]
    for f in frames:
        a, b = a_b(f.t)
        np.testing.assert_allclose(f.x, a * m + b * e, atol=1e-12)
    np.testing.assert_allclose(final, m, atol=1e-12)
    np.testing.assert_allclose(frames[-1].mean, final, atol=1e-12)


def test_reverse_process_final_is_the_last_mean():
    imgs = random_images(5, 1, 4, 5, seed=15)
    ref = Reference(imgs)
    x = np.random.default_rng(16).standard_normal((1, 1, 4, 5))
    frames, final = reverse_process(ref, "bbels", x, 6, [3, 3, 3, 5, 5, 7])
    assert [f.k for f in frames] == [7, 5, 5, 3, 3]
    np.testing.assert_allclose(final, frames[-1].mean, atol=1e-10)
