"""The rival theories of diffusion creativity, computed exactly (docs/THEORIES.md): nearest, wiener,
pca, pspc and cfdm. One function per machine; each takes the tensors it needs (the engine caches
what lasts: the Gaussian model per set, the pca mask per t, crop norms per k) and goes over the
training images in chunks of about chunk_elems numbers, so that memory does not grow with the set.

Notation as in docs/THEORIES.md: x [B, C, H, W] the noisy images at t, X_i the N training images
flattened to D = C*H*W entries, a = a_t, b = b_t. Softmax weights over training images are kept
as streaming statistics (softmax.Softmax / combine: running max m, sum s of exp(l - m), entropy
term, first index holding the max); where a machine needs the normalised weights themselves (pspc
averages crops, cfdm averages weights over copies) a second pass over the chunks recomputes the
logits once m and s are final.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .posterior import Posterior, make
from .softmax import Softmax, combine

# |W[n, n]| below this: entry n has (nearly) no variance, its row of the Wiener filter is left as
# is (the authors' code's eps)
PCA_DIAG_EPS = 1e-6
# exp(-80) ~ 2e-35 adds nothing next to the max's 1 (as in Softmax.rows), and below it exp() leaves
# the CPU's fast path (denormals)
FLOOR = -80.0


def _per_chunk(chunk_elems: int, per_image: int) -> int:
    """Training images per chunk so that a chunk's work tensor holds about chunk_elems numbers."""
    return max(1, chunk_elems // max(per_image, 1))


# -- nearest ----------------------------------------------------------------------------------------
def nearest(x: torch.Tensor, a: float, flat: torch.Tensor, sq: torch.Tensor, chunk_elems: int):
    """The training image with the smallest |x - a X_i|^2, per batch item: [B] (the first on ties),
    and its score <x, X_i> - a |X_i|^2 / 2 [B] (the largest: what shards compare).

    |x - a X_i|^2 = |x|^2 - 2a (<x, X_i> - a |X_i|^2 / 2), so the closest image has the largest
    <x, X_i> - a |X_i|^2 / 2. x [B, C, H, W], flat [N, D] the images, sq [N] = |X_i|^2."""
    q = x.flatten(1)  # [B, D]
    best_v = torch.full((q.shape[0],), -math.inf, device=x.device)
    best_i = torch.zeros(q.shape[0], dtype=torch.int64, device=x.device)
    step = _per_chunk(chunk_elems, max(q.shape))  # scores [B, n] and images [n, D] bounded
    for n0 in range(0, flat.shape[0], step):
        score = torch.addmm(sq[n0:n0 + step].unsqueeze(0), q, flat[n0:n0 + step].T, beta=-a / 2, alpha=1.0)  # [B, n]
        v, i = score.max(-1)  # first index on ties within the chunk
        better = v > best_v  # strictly: an earlier chunk keeps a tie
        best_v, best_i = torch.where(better, v, best_v), torch.where(better, i + n0, best_i)
    return best_i, best_v


# -- wiener -----------------------------------------------------------------------------------------
def gaussian_model(flat: torch.Tensor, chunk_elems: int):
    """The Gaussian model of the images flat [N, D]: (mean [D], eigenvalues [D] >= 0 ascending,
    eigenvectors [D, D] as columns), all float64, of the population covariance
    S = (1/N) sum_i (X_i - mu)(X_i - mu)^T. Accumulated in float64 over chunks of images."""
    return gaussian(*moments(flat, chunk_elems), flat.shape[0])


def moments(flat: torch.Tensor, chunk_elems: int):
    """(mu [D], M2 [D, D]) of the images flat [N, D] in float64: their mean and the sum of
    (X_i - mu)(X_i - mu)^T, accumulated over chunks of images (the Ray engine merges them across
    shards exactly: merge.moments)."""
    n, dim = flat.shape
    step = _per_chunk(chunk_elems, dim)
    mu = torch.zeros(dim, dtype=torch.float64, device=flat.device)
    for n0 in range(0, n, step):
        mu += flat[n0:n0 + step].double().sum(0)
    mu /= n
    m2 = torch.zeros(dim, dim, dtype=torch.float64, device=flat.device)
    for n0 in range(0, n, step):
        c = flat[n0:n0 + step].double() - mu  # [n, D]
        m2.addmm_(c.T, c)
    return mu, m2


def gaussian(mu: torch.Tensor, m2: torch.Tensor, n: int):
    """gaussian_model from moments of n images: (mu, eigenvalues >= 0, eigenvectors) of S = M2 / n."""
    vals, vecs = torch.linalg.eigh(m2 / n)  # S = V diag(vals) V^T
    return mu, vals.clamp(min=0.0), vecs  # (rounding leaves eigenvalues of ~-1e-16 where S is singular)


def wiener(x: torch.Tensor, a: float, b: float, mu: torch.Tensor, vals: torch.Tensor,
           vecs: torch.Tensor) -> torch.Tensor:
    """mu + a S (a^2 S + b^2 I)^-1 (x - a mu) = mu + V diag(a l / (a^2 l + b^2)) V^T (x - a mu):
    x [B, C, H, W] -> [B, C, H, W]. mu [D], vals [D] float64; vecs [D, D] (float32 is enough here:
    two products, 1e-6 relative)."""
    gain = (a * vals / (a * a * vals + b * b)).to(vecs.dtype)  # [D]
    y = (x.flatten(1).to(vecs.dtype) - a * mu.to(vecs.dtype)) @ vecs  # [B, D] in the eigenbasis
    return (mu.to(vecs.dtype) + (y * gain) @ vecs.T).to(x.dtype).view_as(x)


# -- pca --------------------------------------------------------------------------------------------
def pca_mask(vals: torch.Tensor, vecs: torch.Tensor, a: float, b: float, threshold: float) -> torch.Tensor:
    """M [D, D] float32 of 0 and 1 (Lukoianov et al.): the Wiener filter W = a^2 S (a^2 S + b^2 I)^-1
    = V diag(a^2 l / (a^2 l + b^2)) V^T, each row n divided by W[n, n] (left as is where
    |W[n, n]| < PCA_DIAG_EPS); M[n, m] = 1 where that ratio's magnitude is at least threshold times
    its largest magnitude over all (n, m). Float64 throughout: an entry flips only where it lies
    within float64 rounding of the threshold."""
    gain = a * a * vals / (a * a * vals + b * b)  # [D]
    w = (vecs * gain) @ vecs.T  # [D, D], symmetric
    diag = w.diagonal().clone()
    w /= torch.where(diag.abs() < PCA_DIAG_EPS, 1.0, diag).unsqueeze(1)  # row n / W[n, n]
    w.abs_()
    return (w >= threshold * w.max()).to(torch.float32)


def pca(x: torch.Tensor, a: float, b: float, flat: torch.Tensor, mask: torch.Tensor, chunk_elems: int) -> Softmax:
    """Softmax statistics of every output entry (b, m) over the training images: rows B*D (b-major),
    values X_i[m]. Entry m's logit of image i is -sum_n M[n, m] (x[n] - a X_i[n])^2 / (2 b^2); less
    the term sum_n M[n, m] x[n]^2, the same for every i, it is

        sum_n M[n, m] X_i[n] (a x[n] - a^2 X_i[n] / 2) / b^2

    one product [images, D] @ M per chunk (the mask is dense, B * N * D^2 multiply-adds)."""
    bsz, dim = x.shape[0], x[0].numel()
    q = x.flatten(1)  # [B, D]
    sm = Softmax(bsz * dim, 1, x.device)
    # batch items per slice: their logits [b, D, n] hold chunk_elems numbers with chunks of at least
    # 64 images (fewer columns make the products slow)
    per_slice = max(1, min(bsz, chunk_elems // (dim * 64)))
    for b0 in range(0, bsz, per_slice):
        qs = q[b0:b0 + per_slice]  # [b, D]
        nb = qs.shape[0]
        part = Softmax(nb * dim, 1, x.device)
        step = _per_chunk(chunk_elems, nb * dim)  # logits [b, D, n] bounded
        for n0 in range(0, flat.shape[0], step):
            xc = flat[n0:n0 + step]  # [n, D]
            v = xc.unsqueeze(0) * (a * qs.unsqueeze(1) - (a * a / 2) * xc.unsqueeze(0))  # [b, n, D]
            # [b, n, D] @ M, then entries first: on the CPU 7x faster than M^T @ v^T, the same product
            # (digits: 1.6 ms against 11 ms)
            logits = torch.matmul(v, mask).div_(b * b).transpose(1, 2).contiguous()  # [b, D (entry m), n]
            vals = xc.T  # [D, n]: value of image i at entry m
            m, s, acc, ent, arg = Softmax.rows(logits, lambda e: (e * vals).sum(-1, keepdim=True))
            part.merge(None, m.flatten(), s.flatten(), acc.reshape(-1, 1), ent.flatten(), arg.flatten() + n0)
        sm.put(b0 * dim, part)
    return sm


def pca_pick(sm: Softmax, shape):
    """Per pixel of x [B, C, H, W] = shape, from pca's statistics: mean [B, C, H, W], and of the
    channel whose heaviest image weighs most (the first on ties) that image's weight, the image
    (an id as sm.best holds them) and the entropy, each [B, H, W]."""
    bsz, c, h, w = shape
    mean = (sm.acc[:, 0] / sm.s).view(bsz, c, h, w)
    weight = (1.0 / sm.s).view(bsz, c, h, w)
    chan = weight.argmax(1, keepdim=True)  # [B, 1, H, W] the channel with the heaviest image (first on ties)
    pick = lambda v: torch.gather(v.reshape(bsz, c, h, w), 1, chan).squeeze(1)  # noqa: E731
    return mean, pick(weight), pick(sm.best), pick((torch.log(sm.s) - sm.ent / sm.s).clamp(min=0.0))


# -- pspc -------------------------------------------------------------------------------------------
def _box(v: torch.Tensor, k: int) -> torch.Tensor:
    """Sums over every k x k window that lies inside v [n, H, W] -> [n, H - k + 1, W - k + 1]: k
    shifted slices added along the rows, then k along the columns (plain sums, as exact as a
    product's; on the CPU 10-60x faster than avg_pool2d's or conv2d's sums of the same windows:
    1,000 x 32x32 at k = 7, 0.9 ms against 31 and 73 ms)."""
    hc, wc = v.shape[-2] - k + 1, v.shape[-1] - k + 1
    rows = v[..., :hc, :].clone()
    for dy in range(1, k):
        rows += v[..., dy:dy + hc, :]
    out = rows[..., :wc].clone()
    for dx in range(1, k):
        out += rows[..., dx:dx + wc]
    return out


def _spread(v: torch.Tensor, k: int) -> torch.Tensor:
    """For crop values v [n, Hc, Wc] (crop at top-left (u, v)), the sum at each pixel of the values of
    the crops that hold it -> [n, Hc + k - 1, Wc + k - 1]."""
    return _box(F.pad(v, (k - 1, k - 1, k - 1, k - 1)), k)


def nearest_first(k: int, device=None) -> torch.Tensor:
    """The k*k offsets dy * k + dx of a pixel's candidate crops, ordered by the squared distance
    (dy - d)^2 + (dx - d)^2 of their centre from the pixel, then by dy, then dx."""
    d = k // 2
    off = sorted(range(k * k), key=lambda o: ((o // k - d) ** 2 + (o % k - d) ** 2, o))
    return torch.tensor(off, dtype=torch.int64, device=device)


def crop_sq(imgs: torch.Tensor, k: int) -> torch.Tensor:
    """|crop(X_i)|^2 of every k x k crop inside every image: [N, H - k + 1, W - k + 1]."""
    return _box((imgs * imgs).sum(1), k)


def pspc(x: torch.Tensor, a: float, b: float, imgs: torch.Tensor, k: int, sq: torch.Tensor, chunk_elems: int):
    """Patch-set posterior composites (Niedoba et al.). Every k x k crop inside the image (stride 1;
    crop (u, v) by its top-left corner) gets the softmax over i of -|crop(x) - a crop(X_i)|^2 / (2 b^2)
    and its posterior mean sum_i w_i crop(X_i); a pixel is the average of the crops that hold it.

    <crop(x), crop(X_i)> is a box sum of x * X_i, so a chunk of images costs a few passes over
    [b, n, H, W] (2k additions per entry for the sums). Pass 1 gathers each crop's softmax
    statistics; pass 2 turns them into weights w = exp(l - m) / s (with the logits again where the
    images take several chunks) and adds each image's pixels weighted by the sum of w over the crops
    holding the pixel (_spread).

    x [B, C, H, W], imgs [N, C, H, W], sq [N, Hc, Wc] = crop_sq(imgs, k). Returns mean [B, C, H, W]
    and, per pixel [B, H, W], the heaviest crop holding it (pspc_sources): its heaviest training
    image, that image's weight in the crop, the crop's entropy, and the crop's centre [B, H, W, 2].
    The Ray engine's shards run the passes apart (pspc_crops, pspc_sums): pass 2 needs every
    shard's m and s.
    """
    bsz, c, h, w = x.shape
    hc, wc = h - k + 1, w - k + 1
    mean = torch.zeros(bsz, c, h, w, device=x.device)
    crops = [torch.empty(bsz, hc, wc, device=x.device) for _ in range(3)] + \
        [torch.empty(bsz, hc, wc, dtype=torch.int64, device=x.device)]  # m, s, ent, best
    for rows, xs, step in _pspc_slices(x, imgs, chunk_elems):
        *stats, e = _pspc_pass1(xs, a, b, imgs, k, sq, step)
        for into, v in zip(crops, stats):
            into[rows] = v
        mean[rows] = _pspc_pass2(xs, a, b, imgs, k, sq, step, stats[0], stats[1], e)
    mean /= crop_cover(k, (h, w), x.device)
    _, s, ent, best = crops
    return (mean, *pspc_sources(s, (torch.log(s) - ent / s).clamp(min=0.0), best, k, (h, w), chunk_elems))


def crop_cover(k: int, hw: tuple[int, int], device=None) -> torch.Tensor:
    """How many k x k crops inside an image of size hw hold each pixel: [H, W]."""
    h, w = hw
    return _spread(torch.ones(1, h - k + 1, w - k + 1, device=device), k)[0]


def pspc_crops(x, a, b, imgs, k, sq, chunk_elems):
    """pspc's pass 1 alone: per crop [B, Hc, Wc] the softmax statistics m, s, ent (the entropy term)
    and best (the first image holding the max) over the images imgs."""
    out = []
    for _, xs, step in _pspc_slices(x, imgs, chunk_elems):
        out.append(_pspc_pass1(xs, a, b, imgs, k, sq, step)[:4])
    return tuple(torch.cat(v) for v in zip(*out))


def pspc_sums(x, a, b, imgs, k, sq, chunk_elems, m, s):
    """pspc's pass 2 alone, with the crops' m and s over the whole set: sum over the images imgs
    of each pixel's weights (summed over the crops holding it) times the image [B, C, H, W] (the
    mean times the number of crops holding the pixel, where imgs are all the images)."""
    return torch.cat([_pspc_pass2(xs, a, b, imgs, k, sq, step, m[rows], s[rows])
                      for rows, xs, step in _pspc_slices(x, imgs, chunk_elems)])


def _pspc_slices(x, imgs, chunk_elems):
    """(rows, x[rows], images per chunk) for the slices of the batch whose work fits chunk_elems."""
    bsz, c, h, w = x.shape
    per_slice = max(1, min(bsz, chunk_elems // (c * h * w)))
    for b0 in range(0, bsz, per_slice):
        xs = x[b0:b0 + per_slice]
        yield slice(b0, b0 + xs.shape[0]), xs, _per_chunk(chunk_elems, xs.shape[0] * c * h * w)


def _pspc_logits(xs, a, b, imgs, k, sq, n0, step):
    """The crops' logits [b, n, Hc, Wc] of the images n0 .. n0 + step."""
    xc = imgs[n0:n0 + step]
    dots = (xs.unsqueeze(1) * xc.unsqueeze(0)).sum(2)  # [b, n, H, W]
    return _box(dots, k).mul_(a / (b * b)).add_(sq[n0:n0 + step].unsqueeze(0), alpha=-a * a / (2 * b * b))


def _pspc_pass1(xs, a, b, imgs, k, sq, step):
    """Per crop m, s, entropy term, heaviest image (over dim 1), and the last chunk's exp(l - m)
    (pass 2 reuses it where the images took one chunk)."""
    stats, e = None, None
    for n0 in range(0, imgs.shape[0], step):
        lg = _pspc_logits(xs, a, b, imgs, k, sq, n0, step)
        m, arg = lg.max(1)  # [b, Hc, Wc], the first image on ties
        lm = lg.sub_(m.unsqueeze(1)).clamp_(min=FLOOR)  # l - m, as in Softmax.rows
        e = torch.exp(lm)
        part = (m, e.sum(1), e.new_zeros(*m.shape, 0), (e * lm).sum(1), arg + n0)
        stats = part if stats is None else combine(stats, part)
    m, s, _, ent, best = stats
    return m, s, ent, best, e


def _pspc_pass2(xs, a, b, imgs, k, sq, step, m, s, e=None):
    """Normalised weights spread over the pixels, times the images: [b, C, H, W]. e: pass 1's
    exp(l - m) where the images took one chunk and m is pass 1's own."""
    n = imgs.shape[0]
    out = torch.zeros(xs.shape, device=xs.device)
    for n0 in range(0, n, step):
        if e is None or step < n:  # the logits again, now that m and s are final
            e = torch.exp(_pspc_logits(xs, a, b, imgs, k, sq, n0, step).sub_(m.unsqueeze(1)).clamp_(min=FLOOR))
        spread = _spread(e / s.unsqueeze(1), k)  # [b, n, H, W]
        out += (spread.unsqueeze(2) * imgs[n0:n0 + step].unsqueeze(0)).sum(1)  # [b, C, H, W]
    return out


def pspc_sources(crop_s, crop_ent, crop_best, k: int, hw: tuple[int, int], chunk_elems: int):
    """Per pixel [B, H, W] the heaviest crop holding it (the largest heaviest-image weight 1/s over
    those crops; on equal weights the crop centred nearest the pixel, then the first in row-major
    order): its heaviest image, that image's weight, the crop's entropy, and its centre [B, H, W, 2].
    crop_s, crop_ent, crop_best [B, Hc, Wc]."""
    bsz, hc, wc = crop_s.shape
    h, w = hw
    # the candidates of pixel (r, c) are the crops at (r - k + 1 + dy, c - k + 1 + dx), dy, dx in
    # [0, k), centred (dy - d, dx - d) away from it. Taken in the order of that distance (then dy,
    # then dx), argmax's first maximum is, among crops of equal weight, the one centred nearest the
    # pixel (at small t every crop's weight rounds to 1). Weights are > 0; the padding (-1) is never chosen.
    weight = 1.0 / crop_s  # [B, Hc, Wc]
    padded = F.pad(weight, (k - 1, k - 1, k - 1, k - 1), value=-1.0).unsqueeze(1)  # [B, 1, Hc + 2k - 2, ...]
    order = nearest_first(k, crop_s.device)  # [k*k] offsets dy * k + dx
    per = max(1, chunk_elems // (k * k * h * w))  # batch items whose candidates [b, k*k, H*W] fit chunk_elems
    offset = torch.cat([order[F.unfold(padded[b0:b0 + per], k)[:, order].argmax(1)]
                        for b0 in range(0, bsz, per)]).view(bsz, h, w)  # [B, H, W]: dy * k + dx
    rows = torch.arange(h, device=crop_s.device).view(1, h, 1) + offset // k - (k - 1)  # crop's top row
    cols = torch.arange(w, device=crop_s.device).view(1, 1, w) + offset % k - (k - 1)
    crop = (rows * wc + cols).flatten(1)  # [B, H*W] flat crop index
    pick = lambda v: torch.gather(v.flatten(1), 1, crop).view(bsz, h, w)  # noqa: E731
    centre = torch.stack([rows + k // 2, cols + k // 2], -1)  # [B, H, W, 2]
    return pick(crop_best), pick(weight), pick(crop_ent), centre


# -- cfdm -------------------------------------------------------------------------------------------
def perturbations(samples: int, shape: tuple[int, ...], seed: int, device) -> torch.Tensor:
    """The cfdm copies' noise eps [samples, C, H, W]: torch.randn from torch.Generator().manual_seed(seed)
    on the CPU (the same numbers on every device), moved to device."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((samples, *shape), generator=gen).to(device)


def cfdm(x: torch.Tensor, a: float, b: float, flat: torch.Tensor, sq: torch.Tensor, eps: torch.Tensor,
         sigma: float, chunk_elems: int, lse: torch.Tensor | None = None):
    """The smoothed closed-form denoiser (Scarvelis et al.): the ideal posterior mean averaged over the
    copies x + sigma eps_j, j = 1..M:

        w_j = softmax_i(-|x + sigma eps_j - a X_i|^2 / (2 b^2)),  wbar = mean_j w_j,  mean = sum_i wbar_i X_i

    (the average of the copies' means is the mean of the averaged weights). Pass 1 gathers each
    copy's log-sum-exp over the chunks of images; pass 2 recomputes the logits, averages the
    normalised weights over the copies and adds wbar_i X_i, wbar's largest entry and its entropy.
    x [B, C, H, W], flat [N, D], sq [N], eps [M, C, H, W] (sigma = 0: one copy, IS).
    Returns mean [B, D], the heaviest image [B] (first on ties), its weight wbar [B] and the
    entropy of wbar [B]. lse [B * M]: pass 1's log-sum-exps over a larger set (the Ray engine's
    shards: cfdm_norms of each, merged), and then the sums run over the images given."""
    bsz = x.shape[0]
    n, dim = flat.shape
    mean = torch.zeros(bsz, dim, device=x.device)
    best_w = torch.full((bsz,), -math.inf, device=x.device)
    best_i = torch.zeros(bsz, dtype=torch.int64, device=x.device)
    entropy = torch.zeros(bsz, device=x.device)
    for rows, copies, q, logits_of, step in _cfdm_slices(x, a, b, flat, sq, eps, sigma, chunk_elems):
        nb, lg = rows.stop - rows.start, None
        if lse is None:
            m, total, lg = _cfdm_pass1(logits_of, n, step, q.shape[0], x.device)
            part = m + torch.log(total)
        else:
            part = lse[rows.start * copies:rows.stop * copies]
        for n0 in range(0, n, step):  # pass 2
            if lg is None or step < n:  # the logits again (else pass 1's serve)
                lg = logits_of(n0)
            wbar = torch.exp((lg - part.unsqueeze(1)).clamp_(min=FLOOR)).view(nb, copies, -1).mean(1)  # [b, n]
            mean[rows] += wbar @ flat[n0:n0 + step]
            entropy[rows] -= torch.xlogy(wbar, wbar).sum(-1)
            v, i = wbar.max(-1)
            better = v > best_w[rows]
            best_w[rows] = torch.where(better, v, best_w[rows])
            best_i[rows] = torch.where(better, i + n0, best_i[rows])
    return mean, best_i, best_w, entropy.clamp(min=0.0)


def cfdm_norms(x, a, b, flat, sq, eps, sigma: float, chunk_elems: int):
    """cfdm's pass 1 alone: each copy's largest logit m and sum of exp(l - m) over the images flat
    ([B * M] each). Shards' merge as softmax statistics do; m + log(s) is the log-sum-exp (lse)."""
    parts = [_cfdm_pass1(logits_of, flat.shape[0], step, q.shape[0], x.device)[:2]
             for _, _, q, logits_of, step in _cfdm_slices(x, a, b, flat, sq, eps, sigma, chunk_elems)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _cfdm_slices(x, a, b, flat, sq, eps, sigma, chunk_elems):
    """(rows, M, the copies q [b*M, D], logits_of(n0) -> [b*M, n], images per chunk) per slice of the batch."""
    bsz = x.shape[0]
    dim = flat.shape[1]
    noise = eps.flatten(1)[:1] * 0.0 if sigma == 0.0 else sigma * eps.flatten(1)  # [M, D]
    copies = noise.shape[0]
    c1, c2 = a / (b * b), -a * a / (2 * b * b)
    per_slice = max(1, min(bsz, chunk_elems // (copies * dim)))
    for b0 in range(0, bsz, per_slice):
        q = (x[b0:b0 + per_slice].flatten(1).unsqueeze(1) + noise).flatten(0, 1)  # [b*M, D]
        step = _per_chunk(chunk_elems, max(q.shape))
        logits_of = (lambda q, step: lambda n0: torch.addmm(sq[n0:n0 + step].unsqueeze(0), q,  # noqa: E731
                                                            flat[n0:n0 + step].T, beta=c2, alpha=c1))(q, step)
        yield slice(b0, b0 + q.shape[0] // copies), copies, q, logits_of, step


def _cfdm_pass1(logits_of, n: int, step: int, rows: int, device):
    """Each copy's largest logit m and sum of exp(l - m) over the chunks of images [rows], and the
    last chunk's logits."""
    m, total, lg = torch.full((rows,), -math.inf, device=device), torch.zeros(rows, device=device), None
    for n0 in range(0, n, step):
        lg = logits_of(n0)
        top = lg.amax(-1)
        # (l - m clamped: exp of far keys leaves the fast path, 8x slower here)
        part = torch.exp((lg - top.unsqueeze(1)).clamp_(min=FLOOR)).sum(-1)
        new = torch.maximum(m, top)
        total = total * torch.exp(m - new) + part * torch.exp(top - new)
        m = new
    return m, total, lg


# -- a call's posterior, with provenance ---------------------------------------------------------
def posterior(step, x, a, b, t, k, imgs, subset, label, reads, options: dict, chunk_elems: int) -> Posterior:
    """A rival theory's posterior: the step's path computes the mean, then provenance per pixel.

    nearest, cfdm: one training image per batch item, for every pixel (as IS); pca: per pixel the
    heaviest image of its entries' softmaxes (the channel with the heaviest one); pspc: per pixel
    the heaviest crop holding it, source_pos the crop's centre; wiener: no source (index and
    position -1, weight and entropy NaN, count 0). source_count: training images identical to the
    source (whole images; pspc: identical crops at the same place). Of identical sources the first
    is named (reads.canonical)."""
    bsz, c, h, w = x.shape
    flat = imgs.flatten(1)  # [N, D]
    if step.path == "wiener":
        mu, vals, _, vecs = reads.gaussian(label, imgs)
        return no_source(x, a, b, t, k, wiener(x, a, b, mu, vals, vecs))
    mult = reads.multiplicity(None, label)  # [N] identical whole images
    if step.path in ("nearest", "cfdm"):
        sq = reads.squares(label, flat)  # [N]
        if step.path == "nearest":
            best = reads.canonical(nearest(x, a, flat, sq, chunk_elems)[0], None, label)  # [B]
            mean, weight, entropy = imgs[best], torch.ones(bsz, device=x.device), torch.zeros(bsz, device=x.device)
        else:
            mean, best, weight, entropy = cfdm(x, a, b, flat, sq, cfdm_noise(reads.cache, options, x), options["sigma"],
                                               chunk_elems)
            mean, best = mean.view(bsz, c, h, w), reads.canonical(best, None, label)
        return whole_images(x, a, b, t, k, mean, best, weight, mult[best], entropy, subset)
    if step.path == "pca":
        mask = reads.cache.get(("pca-mask", label, t, options["threshold"]),
                               lambda: pca_mask(*reads.gaussian(label, imgs)[1:3], a, b, options["threshold"]))
        mean, weight, best, entropy = pca_pick(pca(x, a, b, flat, mask, chunk_elems), x.shape)  # rows (b, entry)
        best = reads.canonical(best.flatten(), None, label).view_as(best)
        return make(x, mean, a, b, t, k, best, here(x), weight, mult[best], entropy, subset)
    # pspc
    sq = reads.cache.get(("pspc-sq", k, label), lambda: crop_sq(imgs, k))  # [N, Hc, Wc]
    mean, best, weight, entropy, centre = pspc(x, a, b, imgs, k, sq, chunk_elems)
    key = best * (h * w) + centre[..., 0] * w + centre[..., 1]  # the crop's key: its centre's k x k window
    best = reads.canonical(key.flatten(), k, label, "ls").view_as(best) // (h * w)
    count = reads.multiplicity(k, label, "ls")[best, centre[..., 0], centre[..., 1]]  # identical crops, same place
    return make(x, mean, a, b, t, k, best, centre, weight, count, entropy, subset)


def cfdm_noise(cache, options: dict, x) -> torch.Tensor:
    """cfdm's perturbations for x's shape, kept in cache (the same on every device and shard)."""
    c, h, w = x.shape[1:]
    o = options
    return cache.get(("cfdm-eps", o["seed"], o["samples"], c, h, w),
                     lambda: perturbations(o["samples"], (c, h, w), o["seed"], x.device))


def here(x) -> torch.Tensor:
    """Each pixel's own place [B, H, W, 2] for x [B, C, H, W]."""
    bsz, _, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1).expand(bsz, h, w)
    cols = torch.arange(w, device=x.device).view(1, 1, w).expand(bsz, h, w)
    return torch.stack([rows, cols], dim=-1)


def whole_images(x, a, b, t, k, mean, best, weight, count, entropy, subset) -> Posterior:
    """The Posterior of a machine that names one training image per batch item (best, weight, count,
    entropy [B]) for every pixel of it."""
    bsz, _, h, w = x.shape
    per_pixel = lambda v: v.view(bsz, 1, 1).expand(bsz, h, w).contiguous()  # noqa: E731  [B] -> [B, H, W]
    return make(x, mean, a, b, t, k, per_pixel(best), here(x), per_pixel(weight), per_pixel(count),
                per_pixel(entropy), subset)


def no_source(x, a, b, t, k, mean) -> Posterior:
    """The Posterior of a machine that copies nothing (wiener): index and position -1, weight and
    entropy NaN, count 0."""
    bsz, _, h, w = x.shape
    nan = torch.full((bsz, h, w), math.nan, device=x.device)
    none = torch.full((bsz, h, w), -1, dtype=torch.int64, device=x.device)
    return make(x, mean, a, b, t, k, none, torch.full((bsz, h, w, 2), -1, dtype=torch.int64, device=x.device), nan,
                none + 1, nan, None)
