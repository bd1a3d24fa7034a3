"""The ways a plan's step computes its softmax statistics: ideal, embedded, pruned, key tables
through torch, the compiled CPU kernel or the Triton kernel, and windows gathered from the images
inside the Triton kernel (docs/ENGINE.md). Each takes the tensors it needs (tables already built)
and merges into running statistics; none decides anything.

rows_fn(logits, vals, eager_values, grouped) -> per-row statistics of a chunk of logits: the
engine's choice of the compiled CPU pass, torch.compile or torch's passes (Engine._rows).
"""
from __future__ import annotations

import torch

from ..kernels import cpu as cpu_kernel
from ..kernels import triton as triton_kernel
from .keyset import MICRO, PRUNE_GAP, KeySet
from .softmax import Softmax, combine, weighted
from .tables import CHUNK


def ideal(x, a, b, flat, sq, chunk_elems: int) -> Softmax:
    """IS: whole images are the keys; one softmax per batch item. flat [N, CHW], sq [N] = |X_n|^2."""
    q = x.flatten(1)  # [B, CHW]
    sm = Softmax(q.shape[0], q.shape[1], x.device)
    step = max(1, chunk_elems // max(q.shape))  # logits [B, step] and images [step, CHW] bounded
    for n0 in range(0, flat.shape[0], step):
        chunk = flat[n0:n0 + step]  # [n, CHW]
        logits = torch.addmm(sq[n0:n0 + step].unsqueeze(0), q, chunk.T, beta=-a * a / (2 * b * b), alpha=a / (b * b))  # [B, n]
        m, s, acc, ent, arg = Softmax.rows(logits, lambda e: e @ chunk)
        sm.merge(None, m, s, acc, ent, arg + n0)
    return sm


def embedded(sm, qwin, step, imgs, k, c1, c2, sq_all, centres, chunk_elems: int, rows_fn) -> None:
    """<Q, K> = <X_n, E(Q, s)>: each query window is placed, at each key position, into an
    otherwise empty training-sized image and multiplied with the whole training images.
    Rows (image of the batch, query pixel, key position) go in tiles of bounded size.
    sq_all [H*W, N]: |K|^2 per position and image; centres [H*W, C, N]."""
    bsz, pq, dim = qwin.shape
    n, c, h, w = imgs.shape
    d = k // 2
    ng, p = step.pix.shape
    s = step.pos.shape[1]
    # pairs (query pixel, key position) of all classes of the group: M = G * P * S
    pix = step.pix.unsqueeze(-1).expand(ng, p, s).flatten()  # [M]
    pos = step.pos.unsqueeze(1).expand(ng, p, s).flatten()  # [M]
    m_pairs = pix.shape[0]
    # where each window entry (channel, dy, dx) lands in the flattened image, or the dummy slot
    off = torch.arange(k, device=imgs.device) - d
    rr = (pos // w).view(-1, 1, 1) + off.view(1, k, 1)  # [M, k, 1]
    cc = (pos % w).view(-1, 1, 1) + off.view(1, 1, k)  # [M, 1, k]
    inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)  # [M, k, k]
    spot = rr * w + cc  # [M, k, k]
    chan = torch.arange(c, device=imgs.device).view(1, c, 1, 1) * (h * w)
    target = torch.where(inside.unsqueeze(1), chan + spot.unsqueeze(1), c * h * w).reshape(m_pairs, dim)  # [M, D]
    flat = imgs.flatten(1)  # [N, CHW]
    rt = max(1, chunk_elems // (c * h * w))  # rows per tile: the embedded queries hold chunk_elems
    per = max(1, chunk_elems // min(rt, bsz * m_pairs))  # training images per chunk
    for r0 in range(0, bsz * m_pairs, rt):
        rid = torch.arange(r0, min(r0 + rt, bsz * m_pairs), device=imgs.device)
        bi, mi = rid // m_pairs, rid % m_pairs  # image of the batch, pair
        emb = torch.zeros(rid.shape[0], c * h * w + 1, device=imgs.device)
        emb.scatter_(1, target[mi], qwin[bi, pix[mi]])  # [R, CHW + 1]
        emb = emb[:, :-1]  # [R, CHW]
        q_idx = bi * pq + pix[mi]  # [R]
        for n0 in range(0, n, per):
            xc = flat[n0:n0 + per]  # [n, CHW]
            sq = sq_all[pos[mi], n0:n0 + per]  # [R, n]
            logits = torch.addmm(sq, emb, xc.T, beta=c2, alpha=c1)  # [R, n]
            vals = centres[pos[mi], :, n0:n0 + per]  # [R, C, n] key centres
            per_c = vals.transpose(0, 1)  # [C, R, n]
            m, ssum, acc, ent, arg = rows_fn(logits, per_c,
                                             lambda e: torch.stack([torch.linalg.vecdot(e, v) for v in per_c], -1),
                                             vals)
            best = (arg + n0) * (h * w) + pos[mi]  # [R]
            sm.merge(q_idx, m, ssum, acc, ent, best)


def queries_of(qwin, step, c1, c2):
    """The augmented queries (c1 Q, c2) of a step's classes [G, B*P, D + 1] and the query index of
    each row [G, B*P] (b * P' + pixel)."""
    bsz, pq, dim = qwin.shape
    ng, p = step.pix.shape
    queries = qwin[:, step.pix].permute(1, 0, 2, 3).reshape(ng, bsz * p, dim)  # [G, B*P, D]
    queries = torch.cat([c1 * queries, torch.full_like(queries[..., :1], c2)], -1)  # [G, B*P, D + 1]
    q_idx = (torch.arange(bsz, device=qwin.device).view(1, bsz, 1) * pq + step.pix.view(ng, 1, p)).view(ng, bsz * p)
    return queries, q_idx


def table_torch(sm, queries, q_idx, pos, chunks, n: int, hw: int, rt: int, rows_fn) -> None:
    """<Q, K> from a key table by batched matrix products: logits [G, rows, keys], rows in tiles of
    rt. chunks() yields the table's (keys [G, D + 1, kc], centres [G, C, kc]) in the dense order
    (tables.torch_table)."""
    ng = queries.shape[0]
    for r0 in range(0, queries.shape[1], rt):
        qt = queries[:, r0:r0 + rt]  # [G, R, D + 1]
        j0 = 0
        for keys, vals in chunks():  # [G, D + 1, kc] [G, C, kc]
            logits = torch.mm(qt[0], keys[0]).unsqueeze(0) if ng == 1 else torch.bmm(qt, keys)  # [G, R, kc]
            m, ssum, acc, ent, arg = rows_fn(logits, vals.transpose(0, 1).unsqueeze(2), lambda e: weighted(e, vals), vals)
            j = arg + j0  # [G, R] key index in the table
            at = torch.gather(pos, 1, j // n)  # [G, R] training position
            best = (j % n) * hw + at
            sm.merge_at(q_idx[:, r0:r0 + rt].flatten(), m.flatten(), ssum.flatten(), acc.flatten(0, 1),
                        ent.flatten(), best.flatten())
            j0 += keys.shape[-1]


def table_cpu(sm, queries, q_idx, pieces) -> None:
    """<Q, K> through the compiled CPU kernel: pieces yields tables of the group (tables.cpu_table:
    chunks, centres [G, C, NK], rep [G, NK]) in the dense order, merged piece after piece (ties: the
    earlier key stays, as in one table). A class per thread where there are enough classes, else
    the rows of each class shared out over the threads."""
    running = (sm.m, sm.s, sm.acc, sm.ent, sm.best)
    ng = queries.shape[0]
    for chunks, centres, rep in pieces:
        if ng >= torch.get_num_threads():
            cpu_kernel.tile_classes(queries, chunks, CHUNK, centres, rep, q_idx, running)
            continue
        nk = centres.shape[-1]
        blocks = torch.arange(nk // CHUNK, device=queries.device)
        for gj in range(ng):
            cpu_kernel.tile_blocks(queries[gj], chunks, CHUNK, centres[gj], None, rep[gj], blocks, q_idx[gj], running,
                                   first=gj * nk)


def table_triton(sm, queries, q_idx, pos, chunks, n: int, hw: int, rt: int, distinct=None) -> None:
    """<Q, K> through the fused Triton kernel (kernels/triton.py): every chunk of the table
    (chunks() yields keys [G, D + 1, kc], centres [G, C, kc], each built once) against the query
    rows in tiles of rt. distinct: (log counts [1, Kd] or None, rep [Kd]) where the table holds one
    key per distinct window (rep: the first key of each, in the dense order)."""
    logc, rep = distinct if distinct is not None else (None, None)
    tiles = range(0, queries.shape[1], rt)
    results, j0 = dict.fromkeys(tiles), 0
    for keys, vals in chunks():
        for r0 in tiles:
            part = triton_kernel.local_stats(queries[:, r0:r0 + rt], keys.transpose(1, 2), vals.transpose(1, 2), logc)
            part = (*part[:4], part[4] + j0)
            results[r0] = part if results[r0] is None else combine(results[r0], part)
        j0 += keys.shape[-1]
    for r0, part in results.items():
        _merge_keyed(sm, q_idx[:, r0:r0 + rt], part, pos, n, hw, rep)


def gather_triton(sm, queries, q_idx, pos, layout, k: int, rt: int, distinct=None) -> None:
    """<Q, K> through the Triton kernel that reads the keys' windows from the training images
    itself (no key table): layout = (images [H + 2d, W + 2d, C, N], |K|^2 [H*W, N])
    (tables.gather_layout); the query rows in tiles of rt. distinct: (log counts [1, Kd] or None,
    rep [Kd]) to take one key per distinct window (rep: the first key of each, in the dense order)."""
    images, sq = layout
    logc, rep = distinct if distinct is not None else (None, None)
    n, hw = images.shape[-1], sq.shape[0]
    for r0 in range(0, queries.shape[1], rt):
        part = triton_kernel.gather_stats(queries[:, r0:r0 + rt], images, sq, k, pos=None if rep is not None else pos,
                                          ids=rep, logc=logc)
        _merge_keyed(sm, q_idx[:, r0:r0 + rt], part, pos, n, hw, rep)


def _merge_keyed(sm, rows, part, pos, n: int, hw: int, rep) -> None:
    """Merge a kernel's statistics of the rows [G, R] into sm; the heaviest key j is its index in
    the dense order (image j % n at pos[:, j // n]), or in rep (the listed key ids)."""
    m, ssum, acc, ent, j = part
    if rep is not None:
        best = rep[j]
    else:
        at = torch.gather(pos, 1, j // n)  # [G, R] training position
        best = (j % n) * hw + at
    sm.merge_at(rows.flatten(), m.flatten(), ssum.flatten(), acc.flatten(0, 1), ent.flatten(), best.flatten())


def pruned(sm, qwin, pix, ks: KeySet, a, b, tile: int, chunk_elems: int) -> None:
    """One big class (docs/ENGINE.md, "Big classes"). With the compiled CPU kernel (the KeySet holds
    its chunks), one call: queries sorted by the block their bound likes best; each takes that block
    first, then every block whose bound comes within PRUNE_GAP of the largest logit found there
    (large t: every block), six queries at a time. Otherwise queries go in small tiles; per tile
    their best blocks are computed first (a logit close to the maximum), then every other block
    whose bound comes within PRUNE_GAP of it. Where the first tile needs more than 30% of the
    blocks (gathering them would cost more than it saves) the rest go without bounds, in larger
    tiles. pix [P]: the class's query pixels."""
    bsz, pq, dim = qwin.shape
    queries = qwin[:, pix].reshape(-1, dim)  # [Q = B*P, D]
    rows = (torch.arange(bsz, device=qwin.device).view(bsz, 1) * pq + pix.view(1, -1)).flatten()  # [Q] rows of sm
    qsq = (queries * queries).sum(-1)  # [Q]
    c1, c2 = a / (b * b), -a * a / (2 * b * b)
    aug = torch.cat([c1 * queries, torch.full_like(queries[:, :1], c2)], -1)  # [Q, D + 1]
    nq, nb = queries.shape[0], ks.blocks
    everything = torch.arange(nb, device=qwin.device)
    if ks.chunks is not None:
        proj = queries @ ks.basis.T  # [Q, r]
        bounds = cpu_kernel.Bounds(proj, (queries - proj @ ks.basis).norm(dim=-1), qsq, ks.bound_t, a, b, PRUNE_GAP)
        order = torch.argsort(cpu_kernel.block_home(bounds, nb), stable=True)  # (queries that need a block together)
        cpu_kernel.tile_blocks(aug[order], ks.chunks, ks.block, ks.centres, ks.logc if ks.duplicates else None,
                               ks.rep, everything, rows[order], (sm.m, sm.s, sm.acc, sm.ent, sm.best),
                               bounds.take(order))
        return
    piece = max(1, chunk_elems // (nb * ks.basis.shape[0]))  # queries per bound computation
    home = torch.cat([ks.upper_logits(queries[i:i + piece], qsq[i:i + piece], a, b).argmax(-1)
                      for i in range(0, nq, piece)])  # [Q] block with the best bound
    order = torch.argsort(home)
    t0, size = 0, min(nq, tile)
    while t0 < nq:
        sel = order[t0:t0 + size]  # [T]
        r, qa = rows[sel], aug[sel]
        per_chunk = max(1, chunk_elems // (sel.shape[0] * ks.block))  # blocks per chunk of logits
        if size > tile:  # dense: every block
            _blocks(sm, r, qa, ks, everything, per_chunk)
            t0 += size
            continue
        probe = torch.unique(home[sel])
        _blocks(sm, r, qa, ks, probe, per_chunk)
        ub = ks.upper_logits(queries[sel], qsq[sel], a, b)  # [T, J]
        need = (ub >= (sm.m[r] - PRUNE_GAP).unsqueeze(1)).any(0)  # [J]
        need[probe] = False
        kept = need.nonzero().squeeze(1)
        _blocks(sm, r, qa, ks, kept, per_chunk)
        t0 += size
        if t0 == size and kept.shape[0] > 0.3 * nb:  # bounds do not pay at this t (gathers cost)
            size = tile * 8


def _blocks(sm, r, qa, ks: KeySet, blocks, per_chunk) -> None:
    """Merge the keys of `blocks` into the softmax of the queries r (augmented queries qa [T, D + 1]),
    per_chunk blocks at a time (the torch path)."""
    nblk = blocks.shape[0]
    if nblk == 0:
        return
    breaks = torch.nonzero(torch.diff(blocks) != 1).squeeze(1) + 1
    if breaks.shape[0] <= 16:  # a few runs of consecutive blocks: views of the table
        edges = [0, *breaks.tolist(), nblk]
        firsts = blocks[edges[:-1]].tolist()
        pieces = [ks.span(f + i, f + min(i + per_chunk, e - s_))
                  for f, s_, e in zip(firsts, edges[:-1], edges[1:]) for i in range(0, e - s_, per_chunk)]
    else:  # scattered: gathered chunk by chunk
        pieces = (ks.rows(blocks[i:i + per_chunk]) for i in range(0, nblk, per_chunk))
    for keys_t, vals, rep, logc, centres in pieces:
        logits = torch.mm(qa, keys_t)  # [T, n]
        nt, n = logits.shape
        micro = logits.view(nt, n // MICRO, MICRO)  # runs of MICRO keys
        mmax = micro.amax(-1)  # [T, n / MICRO]
        m, mi = mmax.max(-1)  # [T]: the max, and the first run that holds it
        arg = mi * MICRO + torch.gather(micro, 1, mi.view(nt, 1, 1).expand(nt, 1, MICRO)).squeeze(1).argmax(-1)
        lcm = logc.view(-1, MICRO).amax(-1) if ks.duplicates else 0.0  # [n / MICRO] largest log count
        # runs with any key within 80 of the max (below: exp(-80) ~ 2e-35, nothing next to the max's 1)
        rr, mb = torch.nonzero(mmax + lcm >= (m - 80.0).unsqueeze(1), as_tuple=True)  # [R]
        if 2 * rr.shape[0] < mmax.numel():  # low noise: only those runs
            nv = vals.shape[1]
            lm = micro.view(-1, MICRO).index_select(0, rr * micro.shape[1] + mb)  # [R, MICRO]
            lm.sub_(m.index_select(0, rr).unsqueeze(1))
            if ks.duplicates:
                lm.add_(logc.view(-1, MICRO).index_select(0, mb))
            lm.clamp_(min=-80.0)
            e = torch.exp(lm)
            v = vals.view(-1, MICRO * nv).index_select(0, mb).view(-1, MICRO, nv)  # [R, MICRO, C + 2]
            part = torch.bmm(e.unsqueeze(1), v).squeeze(1)  # [R, C + 2]
            stats = torch.zeros(nt, vals.shape[1], device=logits.device).index_add_(0, rr, part)
            ent = torch.zeros(nt, device=logits.device).index_add_(0, rr, (e * lm).sum(1)) - stats[:, -1]
        else:
            lm = logits.sub_(m.unsqueeze(-1))  # l - m
            if ks.duplicates:
                lm.add_(logc)  # + log count: c identical keys weigh c exp(l - m)
            lm.clamp_(min=-80.0)
            e = torch.exp(lm)  # [T, n]
            stats = torch.mm(e, vals)  # [T, C + 2]: sum of weights, weighted centres, sum e log count
            ent = torch.linalg.vecdot(e, lm) - stats[:, -1]
        sm.merge_at(r, m, stats[:, 0], stats[:, 1:-1], ent, rep[arg])
