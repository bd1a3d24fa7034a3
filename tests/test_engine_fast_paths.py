"""The engine's fast path for big classes (elsviz/engine/keyset.py) against the float64 reference.

Distinct keys with their counts, blocks skipped by their bounds, queries in tiles, the batch in
slices: every one of them must leave the posterior (mean, heaviest key, its weight, tie count,
entropy) as the reference computes it. On the small test sets the path is forced (it normally
starts at millions of logits per class) and the blocks are made small, so that there are many.
"""
import numpy as np
import pytest
import torch

import elsviz.kernels.cpu as cpu_kernel
import elsviz.engine.paths as paths_mod
import elsviz.engine.plan as plan_mod
import elsviz.engine.keyset as keyset_mod
from tests.reference import noisy_query, random_images
from tests.test_engine_exact import check_posterior


@pytest.fixture
def fast_path(monkeypatch):
    """Every single-class group goes through the KeySet path, in blocks of 32 keys."""
    monkeypatch.setattr(plan_mod, "PRUNE_MIN_LOGITS", 0)
    monkeypatch.setattr(plan_mod, "PRUNE_MIN_WORK", 0)
    monkeypatch.setattr(keyset_mod, "BLOCK", 32)
    calls = {"blocks": 0, "keysets": 0}
    real_blocks, real_pruned = paths_mod._blocks, paths_mod.pruned

    def spy_blocks(sm, r, qa, ks, blocks, per_chunk):
        calls["blocks"] += int(blocks.shape[0]) * r.shape[0]
        return real_blocks(sm, r, qa, ks, blocks, per_chunk)

    def spy_pruned(sm, qwin, pix, ks, a, b, tile, chunk_elems):
        calls["keysets"] += 1
        calls["possible"] = calls.get("possible", 0) + ks.blocks * pix.shape[0] * qwin.shape[0]
        return real_pruned(sm, qwin, pix, ks, a, b, tile, chunk_elems)

    real_tiles = cpu_kernel.tile_blocks

    def spy_tiles(*args, **kwargs):  # the compiled kernel computes blocks inside, and counts them
        counted = real_tiles(*args, **kwargs)
        calls["blocks"] += int(counted.sum())
        calls["kernel_rows"] = calls.get("kernel_rows", 0) + counted.shape[0]
        return counted

    monkeypatch.setattr(paths_mod, "_blocks", spy_blocks)
    monkeypatch.setattr(paths_mod, "pruned", spy_pruned)
    monkeypatch.setattr(cpu_kernel, "tile_blocks", spy_tiles)
    return calls


def silhouettes(n, h, w, seed):
    """Blobs: white discs on black with an anti-aliased rim; many identical windows, like hands."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, 1, h, w), np.float32)
    for i in range(n):
        cy, cx, r = g.uniform(1, h - 2), g.uniform(1, w - 2), g.uniform(1.5, min(h, w) / 2)
        d = np.hypot(yy - cy, xx - cx)
        out[i, 0] = np.clip(r - d, 0, 1) * 2 - 1
    return np.round((out + 1) * 4) / 4 - 1  # 9 grey levels, exactly repeated


CASES = [  # machine, images maker, output size, k, labelled, B
    ("els", lambda: random_images(23, 1, 7, 9, seed=1, levels=3), (7, 9), 3, False, 2),
    ("els", lambda: random_images(17, 3, 8, 8, seed=2, levels=2), (6, 10), 3, True, 1),
    ("els", lambda: silhouettes(30, 9, 9, seed=3), (9, 9), 5, False, 2),
    ("bbels", lambda: random_images(23, 1, 7, 9, seed=4, levels=3), (7, 9), 3, False, 2),
    ("bbels", lambda: silhouettes(30, 10, 10, seed=5), (10, 10), 5, True, 1),
    ("bbels", lambda: random_images(19, 3, 9, 8, seed=6), (9, 8), 3, False, 1),
]


@pytest.mark.parametrize("t", [0.05, 0.3, 0.6, 0.95])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_fast_path_matches_reference(make_pair, fast_path, case, t):
    machine, make_images, out, k, labelled, bsz = CASES[case]
    images = make_images()
    labels = (np.arange(len(images)) % 3) if labelled else None
    engine, ref = make_pair(machine, images, labels)
    label = 1 if labelled else None
    x = noisy_query(bsz, images.shape[1], *out, t, seed=case + 10)
    post = engine.denoise(torch.from_numpy(x), t, k, label=label)
    assert fast_path["keysets"] > 0, "the fast path did not run"
    check_posterior(post, ref.denoise(machine, x, t, k, label=label), ref, machine, x, t, k, label)


def test_fast_path_agrees_with_the_dense_path(make_pair, monkeypatch):
    """Same heaviest key and tie count as the plain key table wherever the top key is clear."""
    images = silhouettes(40, 10, 10, seed=7)
    x = torch.from_numpy(noisy_query(3, 1, 10, 10, 0.2, seed=8))
    dense, _ = make_pair("bbels", images)
    want = dense.denoise(x, 0.2, 5)
    monkeypatch.setattr(plan_mod, "PRUNE_MIN_LOGITS", 0)
    monkeypatch.setattr(plan_mod, "PRUNE_MIN_WORK", 0)
    monkeypatch.setattr(keyset_mod, "BLOCK", 32)
    fast, _ = make_pair("bbels", images)
    got = fast.denoise(x, 0.2, 5)
    torch.testing.assert_close(got.mean, want.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.entropy, want.entropy, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.source_weight, want.source_weight, atol=1e-6, rtol=1e-4)
    assert torch.equal(got.source_count, want.source_count)
    unique = want.source_count == 1  # a single key: no other window shares its logit
    assert torch.equal(got.source_index[unique], want.source_index[unique])
    assert torch.equal(got.source_pos[unique], want.source_pos[unique])


def test_blocks_are_skipped_when_noise_is_low(make_pair, fast_path):
    """Late in the reverse process x is close to a patch mosaic of the training set and most keys
    weigh nothing: most blocks must be skipped (else the path is no faster). At large t every
    block counts."""
    from elsviz.schedule import alpha_sigma

    images = silhouettes(60, 10, 10, seed=9)
    engine, ref = make_pair("els", images)
    a, b = alpha_sigma(0.05)
    noise = torch.from_numpy(noisy_query(2, 1, 10, 10, 0.999, seed=10))
    x = a * torch.from_numpy(images[[3, 17]]) + b * noise  # two training hands, slightly noisy
    post = engine.denoise(x, 0.05, 3)  # also goes through the runs-of-32 path (few runs count)
    check_posterior(post, ref.denoise("els", x.numpy(), 0.05, 3), ref, "els", x.numpy(), 0.05, 3)
    low = fast_path["blocks"] / fast_path["possible"]
    if engine.kernel() == "cpu":  # the compiled kernel took every query of the class
        assert fast_path.get("kernel_rows", 0) == 2 * 100
    fast_path.update(blocks=0, possible=0)
    engine.denoise(torch.from_numpy(noisy_query(2, 1, 10, 10, 0.95, seed=11)), 0.95, 3)
    high = fast_path["blocks"] / fast_path["possible"]
    assert low < 0.5, f"{low:.0%} of the (query, block) pairs computed at t = 0.05"
    assert high == 1.0, "at t = 0.95 every block must be computed, once"


@pytest.mark.parametrize("machine,k", [("els", 3), ("bbels", 5), ("ls", 3)])
def test_batch_in_slices_is_the_same(make_pair, machine, k):
    """A tiny chunk_elems splits the batch into slices of one image: nothing changes."""
    images = silhouettes(20, 9, 9, seed=12)
    x = torch.from_numpy(noisy_query(5, 1, 9, 9, 0.4, seed=13))
    whole, _ = make_pair(machine, images)
    sliced, _ = make_pair(machine, images, chunk_elems=64)
    a, b = whole.denoise(x, 0.4, k), sliced.denoise(x, 0.4, k)
    torch.testing.assert_close(b.mean, a.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.entropy, a.entropy, atol=1e-4, rtol=1e-4)
    assert torch.equal(b.source_count, a.source_count)


def test_a_batch_takes_key_tables_where_one_image_takes_the_embedded_path(make_pair):
    """With the compiled kernel, a batch brings enough query rows per class to pay for a small
    class's key table where one image does not (the plan): the same answers either way."""
    k, t = 7, 0.3
    images = random_images(30, 1, 10, 10, seed=8)
    engine, ref = make_pair("bbels", images)
    kernel = engine.kernel() == "cpu"
    one = engine.plan(torch.zeros(1, 1, 10, 10), t, k).steps
    many = engine.plan(torch.zeros(16, 1, 10, 10), t, k).steps
    switched = [a.path == "embedded" and b.path != "embedded" for a, b in zip(one, many)]
    assert any(switched) == kernel  # (the torch path keeps torch's reading cost for every batch)
    x = noisy_query(16, 1, 10, 10, t, seed=9)
    post = engine.denoise(torch.from_numpy(x), t, k)
    check_posterior(post, ref.denoise("bbels", x, t, k), ref, "bbels", x, t, k)
    for b in (0, 7):  # one image alone (the embedded path) gives what the batch gave it
        alone = engine.denoise(torch.from_numpy(x[b:b + 1]), t, k)
        torch.testing.assert_close(alone.mean[0], post.mean[b], rtol=1e-5, atol=1e-6)
        assert torch.equal(alone.source_count[0], post.source_count[b])
