"""A slow, obviously correct float64 reference of the machines in docs/THEORY.md.

Written straight from the definitions, independently of elsviz/engine.py, so the tests can compare
the fast engine against it. One query pixel at a time: list its keys (training image n, centre
(u, v)), cut every key window and the query window with plain index arithmetic, take the softmax
of -||Q - a_t K||^2 / (2 b_t^2) over the keys, and average the key centres.

Everything here is numpy float64; inputs may be torch tensors or arrays. Nothing is imported from
elsviz: even the noise schedule is restated below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MACHINES = ("is", "ls", "els", "bbels")

# docs/THEORY.md, "Locality schedules" (restated, not imported).
PRESET_MNIST_RESNET = [3, 3, 5, 5, 5, 7, 7, 7, 9, 9, 11, 11, 11, 11, 13, 15, 15, 15, 15, 15]


# -- noise schedule -------------------------------------------------------------------------------
def beta(t: float) -> float:
    """beta(t) = 1 - cos(t / 1.008 * pi / 2) ** 2."""
    return 1.0 - math.cos(t / 1.008 * math.pi / 2) ** 2


def a_b(t: float) -> tuple[float, float]:
    """(a_t, b_t) = (sqrt(1 - beta(t)), sqrt(beta(t)))."""
    return math.sqrt(1.0 - beta(t)), math.sqrt(beta(t))


def as_f64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


# -- windows ----------------------------------------------------------------------------------------
def window(img: np.ndarray, i: int, j: int, k: int, mode: str) -> np.ndarray:
    """The k x k window (all channels) of img [C, H, W] centred on (i, j), flattened to [C*k*k].

    mode "zeros": outside pixels read 0; "circular": indices wrap modulo H, W (any k);
    "inside": the window must lie fully inside the image.
    """
    C, H, W = img.shape
    d = k // 2
    rows = np.arange(i - d, i + d + 1)  # [k]
    cols = np.arange(j - d, j + d + 1)  # [k]
    if mode == "circular":
        return img[:, rows % H][:, :, cols % W].reshape(-1)
    inside_r = (rows >= 0) & (rows < H)
    inside_c = (cols >= 0) & (cols < W)
    if mode == "inside":
        assert inside_r.all() and inside_c.all(), "window sticks out of the image"
        return img[:, rows][:, :, cols].reshape(-1)
    assert mode == "zeros"
    out = np.zeros((C, k, k))
    for a, r in enumerate(rows):
        for b, c in enumerate(cols):
            if inside_r[a] and inside_c[b]:
                out[:, a, b] = img[:, r, c]
    return out.reshape(-1)


def stickout(i: int, j: int, k: int, H: int, W: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right): how far the window at (i, j) sticks out of an H x W image."""
    d = k // 2
    return (max(0, d - i), max(0, i + d - (H - 1)), max(0, d - j), max(0, j + d - (W - 1)))


# -- keys -------------------------------------------------------------------------------------------
def query_mode(machine: str) -> str:
    return {"ls": "zeros", "els": "circular", "bbels": "zeros"}[machine]


def key_mode(machine: str) -> str:
    return {"ls": "zeros", "els": "inside", "bbels": "zeros"}[machine]


def keys_for_pixel(machine, i, j, k, train_hw, out_hw, allowed) -> list[tuple[int, int, int]]:
    """All keys (n, u, v) of output pixel (i, j), in a fixed order (n, then u, then v)."""
    H, W = train_hw
    Ho, Wo = out_hw
    d = k // 2
    keys = []
    for n in allowed:
        if machine == "ls":
            keys.append((n, i, j))
        elif machine == "els":
            for u in range(d, H - d):
                for v in range(d, W - d):
                    keys.append((n, u, v))
        elif machine == "bbels":
            want = stickout(i, j, k, Ho, Wo)
            for u in range(H):
                for v in range(W):
                    if stickout(u, v, k, H, W) == want:
                        keys.append((n, u, v))
        else:
            raise ValueError(machine)
    return keys


def allowed_images(n_images: int, labels, label) -> list[int]:
    """Indices of the training images a (class-conditional) machine may use."""
    if label is None:
        return list(range(n_images))
    assert labels is not None, "label given on an unlabelled set"
    idx = [n for n, lab in enumerate(labels) if int(lab) == int(label)]
    assert idx, f"no image with label {label}"
    return idx


# -- one pixel --------------------------------------------------------------------------------------
@dataclass
class PixelResult:
    mean: np.ndarray  # [C]
    weights: np.ndarray  # [nkeys]
    keys: list  # [(n, u, v)]
    top: int  # index into keys of one heaviest key
    count: int  # keys whose window equals the top key's window (the top key included)
    entropy: float  # nats
    margin: float  # top weight / heaviest weight among keys with a *different* window (inf if none)
    top_window: np.ndarray  # [C*k*k] (IS: the whole image)


def softmax_pixel(q: np.ndarray, K: np.ndarray, centres: np.ndarray, t: float, keys) -> PixelResult:
    """q [D] query window, K [nkeys, D] key windows, centres [nkeys, C]."""
    a, b = a_b(t)
    dist = ((q[None, :] - a * K) ** 2).sum(axis=1)  # [nkeys]
    logits = -dist / (2 * b * b)
    w = np.exp(logits - logits.max())
    w = w / w.sum()
    mean = (w[:, None] * centres).sum(axis=0)  # [C]
    top = int(np.argmax(w))
    same = np.all(K == K[top][None, :], axis=1)  # [nkeys] identical windows
    count = int(same.sum())
    others = w[~same]
    with np.errstate(over="ignore"):  # a runner-up weight of 1e-310 gives inf: clearly ahead
        margin = float(w[top] / others.max()) if others.size and others.max() > 0 else math.inf
    pos = w > 0
    entropy = float(-(w[pos] * np.log(w[pos])).sum())
    return PixelResult(mean, w, keys, top, count, entropy, margin, K[top].copy())


# -- the machines -----------------------------------------------------------------------------------
@dataclass
class RefPosterior:
    mean: np.ndarray  # [B, C, H', W']
    score: np.ndarray  # [B, C, H', W']
    source_index: np.ndarray  # [B, H', W'] int
    source_pos: np.ndarray  # [B, H', W', 2] int
    source_weight: np.ndarray  # [B, H', W']
    source_count: np.ndarray  # [B, H', W'] int
    entropy: np.ndarray  # [B, H', W']
    margin: np.ndarray  # [B, H', W'] top weight / best weight of a different window
    pixels: list  # [B][H'][W'] PixelResult


class Reference:
    """The four machines of docs/THEORY.md on a training set images [N, C, H, W] (float64)."""

    def __init__(self, images, labels=None):
        self.images = as_f64(images)  # [N, C, H, W]
        assert self.images.ndim == 4 and self.images.shape[0] > 0
        self.labels = None if labels is None else [int(v) for v in as_f64(labels)]
        self._windows = {}

    @property
    def N(self):
        return self.images.shape[0]

    def key_window(self, machine: str, n: int, u: int, v: int, k: int) -> np.ndarray:
        """The window of key (n, u, v) as the machine sees it (IS: the whole image n)."""
        if machine == "is":
            return self.images[n].reshape(-1)
        return window(self.images[n], u, v, k, key_mode(machine))

    def _key_window_cached(self, machine, n, u, v, k):
        cache_key = (machine, n, u, v, k)
        if cache_key not in self._windows:
            self._windows[cache_key] = self.key_window(machine, n, u, v, k)
        return self._windows[cache_key]

    def pixel(self, machine, x, i, j, t, k, label=None) -> PixelResult:
        """Everything about output pixel (i, j) of one query x [C, H', W'] (not IS)."""
        _, H, W = self.images.shape[1:]
        allowed = allowed_images(self.N, self.labels, label)
        keys = keys_for_pixel(machine, i, j, k, (H, W), x.shape[1:], allowed)
        assert keys, f"{machine}: no key for pixel ({i}, {j}) at k={k}"
        q = window(x, i, j, k, query_mode(machine))  # [C*k*k]
        K = np.stack([self._key_window_cached(machine, n, u, v, k) for n, u, v in keys])  # [nkeys, D]
        centres = np.stack([self.images[n, :, u, v] for n, u, v in keys])  # [nkeys, C]
        return softmax_pixel(q, K, centres, t, keys)

    def image_is(self, x, t, label=None) -> PixelResult:
        """IS for one query x [C, H, W]: one weight per training image, the mean is a whole image."""
        assert x.shape == self.images.shape[1:], "IS needs x of the training size"
        allowed = allowed_images(self.N, self.labels, label)
        keys = [(n, None, None) for n in allowed]
        K = np.stack([self.images[n].reshape(-1) for n in allowed])  # [nkeys, C*H*W]
        res = softmax_pixel(x.reshape(-1), K, K, t, keys)
        res.mean = res.mean.reshape(x.shape)  # [C, H, W]
        return res

    def denoise(self, machine, x, t, k=1, label=None) -> RefPosterior:
        """The posterior mean and provenance for x [B, C, H', W'] at time t with window size k."""
        x = as_f64(x)
        assert machine in MACHINES
        assert 0 < t < 1 and k >= 1 and k % 2 == 1
        B, C, Ho, Wo = x.shape
        assert C == self.images.shape[1]
        if machine in ("is", "ls"):
            assert (Ho, Wo) == self.images.shape[2:], f"{machine} needs x of the training size"
        mean = np.zeros_like(x)
        index = np.zeros((B, Ho, Wo), dtype=np.int64)
        pos = np.zeros((B, Ho, Wo, 2), dtype=np.int64)
        weight = np.zeros((B, Ho, Wo))
        count = np.zeros((B, Ho, Wo), dtype=np.int64)
        entropy = np.zeros((B, Ho, Wo))
        margin = np.zeros((B, Ho, Wo))
        pixels = []
        for bi in range(B):
            rows = []
            if machine == "is":
                r = self.image_is(x[bi], t, label)
                mean[bi] = r.mean
            for i in range(Ho):
                row = []
                for j in range(Wo):
                    if machine != "is":
                        r = self.pixel(machine, x[bi], i, j, t, k, label)
                        mean[bi, :, i, j] = r.mean
                        n, u, v = r.keys[r.top]
                    else:
                        n, u, v = r.keys[r.top][0], i, j
                    index[bi, i, j] = n
                    pos[bi, i, j] = (u, v)
                    weight[bi, i, j] = r.weights[r.top]
                    count[bi, i, j] = r.count
                    entropy[bi, i, j] = r.entropy
                    margin[bi, i, j] = r.margin
                    row.append(r)
                rows.append(row)
            pixels.append(rows)
        a, b = a_b(t)
        score = -(x - a * mean) / b**2
        return RefPosterior(mean, score, index, pos, weight, count, entropy, margin, pixels)


# -- the reverse process (deterministic DDIM) -------------------------------------------------------
@dataclass
class RefFrame:
    i: int
    t: float
    k: int
    x: np.ndarray  # [B, C, H, W] the input of step i
    mean: np.ndarray  # [B, C, H, W] posterior mean at t = i / steps with k[i]


def reverse_process(ref: Reference, machine, x, steps, ks, label=None, start=None):
    """Run i = start .. 1 (start defaults to steps-1) from x, the input of step start.

    ks: one k per step (ks[i] used at step i; ks[0] never used). Returns (frames, final x).
    """
    x = as_f64(x)
    assert len(ks) == steps
    start = steps - 1 if start is None else start
    frames = []
    for i in range(start, 0, -1):
        t, t_next = i / steps, (i - 1) / steps
        a, b = a_b(t)
        _, b_next = a_b(t_next)
        post = ref.denoise(machine, x, t, ks[i], label)
        frames.append(RefFrame(i, t, ks[i], x.copy(), post.mean))
        eps = -b * post.score
        r = math.sqrt((1 - beta(t_next)) / (1 - beta(t)))
        x = r * x + (b_next - r * b) * eps
    return frames, x


def rel_l2(a, b) -> float:
    """||a - b|| / ||b|| (b the reference)."""
    a, b = as_f64(a), as_f64(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# -- test data --------------------------------------------------------------------------------------
def random_images(n, c, h, w, seed, levels=None):
    """float32 [n, c, h, w] in [-1, 1]. levels: quantise to that many grey values (repeated windows)."""
    g = np.random.default_rng(seed)
    x = g.uniform(-1, 1, size=(n, c, h, w))
    if levels:
        x = np.round((x + 1) / 2 * (levels - 1)) / (levels - 1) * 2 - 1
    return x.astype(np.float32)


def noisy_query(b, c, h, w, t, seed):
    """float32 [b, c, h, w]: a fresh random image pushed forward to time t (a_t x0 + b_t eps)."""
    g = np.random.default_rng(seed)
    a, s = a_b(t)
    x0 = g.uniform(-1, 1, size=(b, c, h, w))
    return (a * x0 + s * g.standard_normal((b, c, h, w))).astype(np.float32)


# -- the rival theories (docs/THEORIES.md) ------------------------------------------------------------
# Whole matrices, float64, straight from the definitions: x and the training images flattened to
# D = C*H*W entries. Each returns a RefPosterior (pixels=None) whose provenance follows the engine's
# documented conventions, with margin = the top weight / the best weight that would name another source.
THEORIES = ("nearest", "wiener", "pca", "pspc", "cfdm")


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    w = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return w / w.sum(axis=-1, keepdims=True)


def _entropy(w: np.ndarray) -> np.ndarray:
    """Entropy over the last axis, 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0).sum(axis=-1)


def _ratio(top: float, rival: float) -> float:
    """top / rival, inf where the rival weighs nothing."""
    return float(top / rival) if rival > 0 else math.inf


def _margin(w: np.ndarray, top: int, same: np.ndarray) -> float:
    """w[top] / the largest weight outside `same` (a boolean mask of the keys that name the same source)."""
    others = w[~same]
    return _ratio(w[top], others.max()) if others.size else math.inf


def gaussian(images: np.ndarray):
    """mu [D] and the population covariance S [D, D] (divided by N) of images [N, C, H, W]."""
    X = images.reshape(images.shape[0], -1)
    mu = X.mean(axis=0)
    return mu, (X - mu).T @ (X - mu) / X.shape[0]


def pca_mask(images: np.ndarray, t: float, threshold: float) -> np.ndarray:
    """M [D, D]: W = a^2 S (a^2 S + b^2 I)^-1, row n / W[n, n] (as is where |W[n, n]| < 1e-6),
    M[n, m] = 1 where |ratio| >= threshold * its largest magnitude."""
    a, b = a_b(t)
    _, S = gaussian(images)
    D = S.shape[0]
    W = a * a * S @ np.linalg.inv(a * a * S + b * b * np.eye(D))
    d = np.diag(W).copy()
    R = W / np.where(np.abs(d) < 1e-6, 1.0, d)[:, None]
    return (np.abs(R) >= threshold * np.abs(R).max()).astype(np.float64)


class Theories:
    """nearest, wiener, pca, pspc and cfdm on a training set images [N, C, H, W] (float64)."""

    def __init__(self, images, labels=None):
        self.images = as_f64(images)
        self.labels = None if labels is None else [int(v) for v in as_f64(labels)]

    def denoise(self, machine, x, t, k=None, label=None, threshold=0.02, eps=None, sigma=0.0) -> RefPosterior:
        """x [B, C, H, W] at the training size. eps [M, C, H, W]: cfdm's perturbations."""
        x = as_f64(x)
        allowed = allowed_images(self.images.shape[0], self.labels, label)
        imgs = self.images[allowed]  # [N, C, H, W]
        B, C, H, W = x.shape
        assert (C, H, W) == imgs.shape[1:]
        a, b = a_b(t)
        X = imgs.reshape(len(allowed), -1)  # [N, D]
        out = dict(mean=np.zeros_like(x), index=np.full((B, H, W), -1), pos=np.full((B, H, W, 2), -1),
                   weight=np.full((B, H, W), np.nan), count=np.zeros((B, H, W), dtype=np.int64),
                   entropy=np.full((B, H, W), np.nan), margin=np.full((B, H, W), np.inf))
        here = np.stack(np.meshgrid(np.arange(H), np.arange(W), indexing="ij"), -1)  # [H, W, 2]
        same_image = np.all(X[:, None, :] == X[None, :, :], axis=2)  # [N, N] identical whole images
        for bi in range(B):
            q = x[bi].reshape(-1)  # [D]
            if machine == "wiener":
                mu, S = gaussian(imgs)
                D = S.shape[0]
                out["mean"][bi] = (mu + a * S @ np.linalg.solve(a * a * S + b * b * np.eye(D), q - a * mu)).reshape(C, H, W)
                continue
            if machine in ("nearest", "cfdm"):
                if machine == "nearest":
                    dist = ((q[None] - a * X) ** 2).sum(1)  # [N]
                    n = int(np.argmin(dist))
                    w = np.zeros(len(allowed))
                    w[n] = 1.0
                    gap = np.sort(dist[~same_image[n]])[:1]
                    margin = math.inf if gap.size == 0 else float(gap[0] / max(dist[n], 1e-300))
                    entropy = 0.0
                else:
                    copies = q[None] + sigma * as_f64(eps).reshape(eps.shape[0], -1)  # [M, D]
                    dist = ((copies[:, None, :] - a * X[None]) ** 2).sum(2)  # [M, N]
                    w = _softmax(-dist / (2 * b * b)).mean(0)  # [N]
                    n = int(np.argmax(w))
                    margin = _margin(w, n, same_image[n])
                    entropy = float(_entropy(w))
                out["mean"][bi] = (w @ X).reshape(C, H, W)
                out["index"][bi], out["pos"][bi] = allowed[n], here
                out["weight"][bi] = 1.0 if machine == "nearest" else w[n]
                out["count"][bi], out["entropy"][bi], out["margin"][bi] = same_image[n].sum(), entropy, margin
                continue
            if machine == "pca":
                M = pca_mask(imgs, t, threshold)  # [D (n), D (m)]
                sqd = (q[None] - a * X) ** 2  # [N, D]
                w = _softmax((-(sqd @ M) / (2 * b * b)).T)  # [D (m), N]
                out["mean"][bi] = (w * X.T).sum(1).reshape(C, H, W)
                top_w = w.max(1).reshape(C, H, W)
                for i in range(H):
                    for j in range(W):
                        ch = int(np.argmax(top_w[:, i, j]))  # first channel on ties
                        m = (ch * H + i) * W + j
                        n = int(np.argmax(w[m]))
                        entries = [(c * H + i) * W + j for c in range(C)]
                        rivals = w[entries][:, ~same_image[n]]  # weights, in any channel, of other images
                        out["index"][bi, i, j], out["pos"][bi, i, j] = allowed[n], (i, j)
                        out["weight"][bi, i, j], out["count"][bi, i, j] = w[m, n], same_image[n].sum()
                        out["entropy"][bi, i, j] = _entropy(w[m])
                        out["margin"][bi, i, j] = _ratio(w[m, n], rivals.max()) if rivals.size else math.inf
                continue
            assert machine == "pspc" and k is not None and k <= min(H, W)
            acc, cover = np.zeros((C, H, W)), np.zeros((H, W))
            cands = [[[] for _ in range(W)] for _ in range(H)]  # per pixel: (weight, crop order, u, v, image)
            crops = [(u, v) for u in range(H - k + 1) for v in range(W - k + 1)]  # row-major by top-left
            for order, (u, v) in enumerate(crops):
                qc = x[bi][:, u:u + k, v:v + k].reshape(-1)
                Kc = imgs[:, :, u:u + k, v:v + k].reshape(len(allowed), -1)  # [N, C*k*k]
                w = _softmax(-((qc[None] - a * Kc) ** 2).sum(1) / (2 * b * b))  # [N]
                acc[:, u:u + k, v:v + k] += np.tensordot(w, imgs[:, :, u:u + k, v:v + k], axes=1)
                cover[u:u + k, v:v + k] += 1
                n = int(np.argmax(w))
                same = np.all(Kc == Kc[n][None], axis=1)
                for i in range(u, u + k):
                    for j in range(v, v + k):
                        cands[i][j].append((w, order, u, v, n, same, _entropy(w)))
            out["mean"][bi] = acc / cover
            for i in range(H):
                for j in range(W):
                    # the heaviest; on equal weights the crop centred nearest the pixel, then the first
                    best = max(cands[i][j], key=lambda c: (c[0][c[4]], -((c[2] + k // 2 - i) ** 2 + (c[3] + k // 2 - j) ** 2),
                                                            -c[1]))
                    w, order, u, v, n, same, ent = best
                    rivals = [c[0][c[4]] for c in cands[i][j] if c[1] != order]
                    rivals += [w[~same].max()] if (~same).any() else []
                    out["index"][bi, i, j], out["pos"][bi, i, j] = allowed[n], (u + k // 2, v + k // 2)
                    out["weight"][bi, i, j], out["count"][bi, i, j], out["entropy"][bi, i, j] = w[n], same.sum(), ent
                    out["margin"][bi, i, j] = _ratio(w[n], max(rivals)) if rivals else math.inf
        score = -(x - a * out["mean"]) / b**2
        return RefPosterior(out["mean"], score, out["index"], out["pos"], out["weight"], out["count"], out["entropy"],
                            out["margin"], None)
