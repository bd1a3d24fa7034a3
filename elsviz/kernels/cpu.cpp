// The CPU kernel of elsviz (elsviz/cpu_kernel.py compiles it on first use; docs/ENGINE.md,
// "The compiled CPU kernel").
//
// tile_blocks (below): the logits of query rows against blocks of keys, made in registers and
// folded into each row's softmax statistics at once, never written; blocks that cannot matter are
// skipped by their bounds. rows_stats: the statistics of a chunk of logits already in memory
// (the small classes, whose logits come from torch's batched products):
//
// rows_stats, for each row r of a chunk of logits L [R, n] (row stride ldl), in one call:
//   m = max_j l_j;  arg = the first j with l_j == m;
//   x_j = l_j - m + logc_j (logc_j = log of the key's count; 0 without logc);
//   e_j = exp(max(x_j, -80)) (exp(-80) ~ 2e-35: nothing next to the max's 1);
//   s = sum_j e_j;  acc[c] = sum_j e_j v[c][j];  ent = sum_j e_j (l_j - m)
// where v[c][j] = V[(r / rpg) * vgs + c * vcs + j]: the rows come in groups of rpg that share one
// value table (a class of query pixels), or rpg = 1 and every row has its own.
// Rows (and queries) are shared out over `threads` OpenMP threads: compiled with -fopenmp, this
// library uses the OpenMP runtime torch has loaded (same soname), so its threads are torch's.
// Two passes over a row (its max; then everything else), a register of keys at a time with GCC's vector
// extensions, and an exp of our own so that the whole loop stays in vector registers. A register of keys
// that all weigh nothing (x_j < -80) cost a comparison and add exactly 0.
#include <stdint.h>
#include <string.h>
#include <float.h>
#include <math.h>
#include <algorithm>
#include <vector>
#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

// A vf is one vector register: 16 floats with AVX-512, else 8 (AVX2). Wider generic vectors than
// the machine's registers are lowered through the stack: with 16-float vectors an AVX2-only AMD EPYC
// took 43 s of CPU for a 20-step hands run at k = 5 (one thread) that took 3.2 s on an EPYC with
// AVX-512. Layouts stay in units of 16 keys (LANES) on every machine.
#if defined(__AVX512F__)
static const int W = 16;
static const int SLICE = 4;  // register tile: 6 rows x 4 vectors of sums (24 of 32 registers)
#else
static const int W = 8;
static const int SLICE = 2;  // 6 rows x 2 vectors of sums (12 of 16 registers; a key's 2 and a query's 1 beside)
#endif
static const int LANES = 16;
typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));

static inline vf load(const float* p) { vf v; memcpy(&v, p, sizeof v); return v; }
// (vf{} + x would cost an addition in every broadcast: -0.0f + 0.0f is not -0.0f; x - 0.0f is x)
static inline vf splat(float x) { return x - vf{}; }
static inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// exp(x) for x in [-80, 20]: x = n ln 2 + f with |f| <= ln(2) / 2 (Cody-Waite: ln 2 in two parts,
// so f is exact), exp(f) by a polynomial of degree 6 fitted for relative error (2e-9; 1.1e-7
// evaluated in float32), times 2^n. With AVX-512, rounding and 2^n are one instruction each.
static inline vf vexp(vf x)
{
#if defined(__AVX512F__)
    const __m512 n = _mm512_roundscale_ps((__m512)(x * 1.44269504088896341f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const vf vn = (vf)n;
#else
    const vf vn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
#endif
    vf f = x - vn * 0.693359375f;
    f = f + vn * 2.12194440e-4f;  // ln 2 = 0.693359375 - 2.12194440e-4
    vf p = splat(1.38436504e-3f);
    p = p * f + 8.37415540e-3f;
    p = p * f + 4.16680021e-2f;
    p = p * f + 1.66664313e-1f;
    p = p * f + 4.99999942e-1f;
    p = p * f + 1.00000003f;
    p = p * f + 1.0f;
#if defined(__AVX512F__)
    return (vf)_mm512_scalef_ps((__m512)p, n);
#else
    vi bits = (__builtin_convertvector(vn, vi) + 127) << 23;
    return p * (vf)bits;
#endif
}

#if defined(__AVX512F__)
static inline bool any_ge(vf x, float t) { return _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(t), _CMP_GE_OQ) != 0; }
#elif defined(__AVX__)
static inline bool any_ge(vf x, float t) { return _mm256_movemask_ps((__m256)(x >= splat(t))) != 0; }
#else
static inline bool any_ge(vf x, float t)
{
    vi ge = (vi)(x >= t);
    int32_t any = 0;
    for (int q = 0; q < W; q++) any |= ge[q];
    return any != 0;
}
#endif

#if defined(__AVX512F__)
static inline float hmax(vf v) { return _mm512_reduce_max_ps((__m512)v); }
static inline float hsum(vf v) { return _mm512_reduce_add_ps((__m512)v); }
#else
static inline float hmax(vf v) { float m = v[0]; for (int q = 1; q < W; q++) m = v[q] > m ? v[q] : m; return m; }
static inline float hsum(vf v) { float s = 0; for (int q = 0; q < W; q++) s += v[q]; return s; }
#endif

// exp(max(x, -80)) of x [n], n a multiple of 16 (for the tests)
extern "C" void exp_clamped(const float* x, float* y, int64_t n)
{
    for (int64_t j = 0; j + W <= n; j += W) {
        vf e = vexp(vmax(load(x + j), splat(-80.f)));
        memcpy(y + j, &e, sizeof e);
    }
}

// Merge the statistics (mx, s, acc, ent, best) of a chunk of keys into the running ones at row q
// (m = -inf there: nothing seen yet). On equal maxima the earlier key stays, as argmax does.
template <int C>
static inline void merge(int64_t q, float mx, float s, const float* acc, float ent, int64_t best, float* m_io,
                         float* s_io, float* acc_io, float* ent_io, int64_t* best_io)
{
    const float om = m_io[q];
    if (om == -INFINITY) {
        m_io[q] = mx; s_io[q] = s; ent_io[q] = ent; best_io[q] = best;
        for (int c = 0; c < C; c++) acc_io[q * C + c] = acc[c];
        return;
    }
    const float mn = om > mx ? om : mx;
    const float alpha = expf(om - mn), beta = expf(mx - mn);
    const float os = s_io[q];
    ent_io[q] = alpha * (ent_io[q] + os * (om - mn)) + beta * (ent + s * (mx - mn));
    s_io[q] = alpha * os + beta * s;
    for (int c = 0; c < C; c++) acc_io[q * C + c] = alpha * acc_io[q * C + c] + beta * acc[c];
    if (mx > om) best_io[q] = best;
    m_io[q] = mn;
}

template <int C, bool LOGC>
static void rows_t(int64_t R, int64_t n, const float* L, int64_t ldl, const float* V, int64_t rpg, int64_t vgs,
                   int64_t vcs, const float* logc, float* m_out, float* s_out, float* acc_out, float* ent_out,
                   int64_t* arg_out, int threads)
{
    const int64_t nv = n / W * W;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t r = 0; r < R; r++) {
        const float* l = L + r * ldl;
        const float* v = V + (r / rpg) * vgs;
        vf m16 = splat(-FLT_MAX);
        for (int64_t j = 0; j < nv; j += W) m16 = vmax(m16, load(l + j));
        float mx = hmax(m16);
        for (int64_t j = nv; j < n; j++) mx = l[j] > mx ? l[j] : mx;
        int64_t arg = 0;
        while (l[arg] != mx) arg++;
        vf s16 = {}, e16 = {}, a16[C];
        for (int c = 0; c < C; c++) a16[c] = vf{};
        const vf vm = splat(mx), lo = splat(-80.f);
        for (int64_t j = 0; j < nv; j += W) {
            vf d = load(l + j) - vm;
            vf x = LOGC ? d + load(logc + j) : d;
            if (!any_ge(x, -80.f)) continue;  // sixteen keys that weigh nothing (small t: most of them)
            const vf e = vexp(vmax(x, lo));  // (below -80: exp(-80) ~ 2e-35, nothing next to the max's 1)
            s16 += e;
            e16 += e * vmax(d, lo);  // (a padding key's d ~ -1e30 must not meet a nonzero e)
            for (int c = 0; c < C; c++) a16[c] += e * load(v + c * vcs + j);
        }
        float s = hsum(s16), ent = hsum(e16), acc[C];
        for (int c = 0; c < C; c++) acc[c] = hsum(a16[c]);
        for (int64_t j = nv; j < n; j++) {  // the tail, one key at a time
            float d = l[j] - mx, x = LOGC ? d + logc[j] : d;
            if (x < -80.f) continue;
            vf e = vexp(splat(x));
            s += e[0];
            ent += e[0] * (d < -80.f ? -80.f : d);
            for (int c = 0; c < C; c++) acc[c] += e[0] * v[c * vcs + j];
        }
        m_out[r] = mx; s_out[r] = s; ent_out[r] = ent; arg_out[r] = arg;
        for (int c = 0; c < C; c++) acc_out[r * C + c] = acc[c];
    }
}

typedef void (*rows_fn)(int64_t, int64_t, const float*, int64_t, const float*, int64_t, int64_t, int64_t,
                        const float*, float*, float*, float*, float*, int64_t*, int);

// The statistics of row r go to m_out[r] ... arg_out[r] (arg: the key's index in the row).
extern "C" int rows_stats(int64_t R, int64_t n, const float* L, int64_t ldl, const float* V, int64_t C,
                          int64_t rpg, int64_t vgs, int64_t vcs, const float* logc, float* m_out, float* s_out,
                          float* acc_out, float* ent_out, int64_t* arg_out, int64_t threads)
{
    rows_fn f;
    if (C == 1) f = logc ? rows_t<1, true> : rows_t<1, false>;
    else if (C == 3) f = logc ? rows_t<3, true> : rows_t<3, false>;
    else return 1;
    f(R, n, L, ldl, V, rpg, vgs, vcs, logc, m_out, s_out, acc_out, ent_out, arg_out, (int)threads);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Keys in chunks: the fused kernels below read the keys (augmented: the window and |K|^2, D1
// entries) in chunks of CW = 16 NV consecutive keys (NV = 1, 2 or 4). Within a chunk, an entry d
// that all CW keys share (the silhouettes' background, say) is not stored: its part of every
// logit, sum_d q_d v_d over those entries, is one dot product per query, with the chunk's
// constant vector CV[c] (D1p floats: v_d, 0 where the keys differ). The other entries are stored
// side by side, entry after entry: KD[OFF[c] + i] holds entry ACT[OFF[c] + i] of the chunk's CW
// keys. So a chunk is contiguous (it stays in L1 while every query of a tile reads it), and the
// product skips what the keys share (45% of the entries of 16 hands windows at k = 7).
struct Keys {
    const float* kd;  // [rows, CW]
    const int32_t* act;  // [rows] the entry each row holds
    const int64_t* off;  // [chunks + 1] first row of each chunk
    const float* cv;  // [chunks, D1p] the shared entries (0 elsewhere)
    const uint8_t* shared;  // [chunks] whether a chunk has shared entries
    int64_t cw, d1p;
};

// logits of R query rows (stride D1p, zero-padded to D1p, a multiple of 16) against chunk c of K
// (NV vectors of keys), into out[r * ldo + W v + lane]; SLICE vectors at a time, so that the sums
// stay in registers
template <int R, int NV>
static __attribute__((noinline)) void micro(const float* qa, const Keys& K, int64_t c, float* out, int64_t ldo)
{
    constexpr int S = NV < SLICE ? NV : SLICE;
    const int64_t D1p = K.d1p;
    float shared[R];
    if (K.shared[c]) {
        const float* cv = K.cv + c * D1p;
        for (int r = 0; r < R; r++) {
            vf t = vf{};
            for (int64_t d = 0; d < D1p; d += W) t += load(qa + r * D1p + d) * load(cv + d);
            shared[r] = hsum(t);
        }
    }
    const int64_t i0 = K.off[c], i1 = K.off[c + 1];
    for (int v0 = 0; v0 < NV; v0 += S) {
        vf acc[R][S];
        for (int r = 0; r < R; r++)
            for (int v = 0; v < S; v++) acc[r][v] = K.shared[c] ? splat(shared[r]) : vf{};
        const float* kp = K.kd + i0 * (NV * W) + v0 * W;
        for (int64_t i = i0; i < i1; i++, kp += NV * W) {
            const int64_t d = K.act[i];
            vf k[S];
            for (int v = 0; v < S; v++) k[v] = load(kp + v * W);
            for (int r = 0; r < R; r++) {
                const vf q = splat(qa[r * D1p + d]);
                for (int v = 0; v < S; v++) acc[r][v] += q * k[v];
            }
        }
        for (int r = 0; r < R; r++)
            for (int v = 0; v < S; v++) memcpy(out + r * ldo + (v0 + v) * W, &acc[r][v], sizeof(vf));
    }
}

template <int NV>
static inline void micro_rows(int rows, const float* qa, const Keys& K, int64_t c, float* out, int64_t ldo)
{
    switch (rows) {
    case 6: micro<6, NV>(qa, K, c, out, ldo); break;
    case 5: micro<5, NV>(qa, K, c, out, ldo); break;
    case 4: micro<4, NV>(qa, K, c, out, ldo); break;
    case 3: micro<3, NV>(qa, K, c, out, ldo); break;
    case 2: micro<2, NV>(qa, K, c, out, ldo); break;
    default: micro<1, NV>(qa, K, c, out, ldo); break;
    }
}

static inline void chunk_logits(int rows, const float* qa, const Keys& K, int64_t c, float* out, int64_t ldo)
{
    if (K.cw == 4 * LANES) micro_rows<4 * LANES / W>(rows, qa, K, c, out, ldo);
    else if (K.cw == 2 * LANES) micro_rows<2 * LANES / W>(rows, qa, K, c, out, ldo);
    else micro_rows<LANES / W>(rows, qa, K, c, out, ldo);
}

// The running statistics of one query row inside a fused kernel: the max so far and its key, the
// sums of the current blocks lane by lane (float vectors), and those of earlier blocks (doubles).
template <int C>
struct RowState {
    vf s16, e16, a16[C];
    double s, ent, acc[C];
    float mx;
    int64_t best;
    void reset()
    {
        s16 = e16 = vf{};
        for (int c = 0; c < C; c++) a16[c] = vf{}, acc[c] = 0.0;
        s = ent = 0.0;
        mx = -INFINITY;
        best = 0;
    }
    // a new maximum bm: everything summed so far weighs exp(mx - bm) as much
    void rescale(float bm)
    {
        if (mx != -INFINITY) {
            const float alpha = expf(mx - bm);
            const vf va = splat(alpha);
            e16 = va * (e16 + s16 * (mx - bm));
            s16 *= va;
            for (int c = 0; c < C; c++) a16[c] *= va;
            ent = alpha * (ent + s * (double)(mx - bm));
            s *= alpha;
            for (int c = 0; c < C; c++) acc[c] *= alpha;
        }
        mx = bm;
    }
    void flush()
    {
        s += hsum(s16);
        ent += hsum(e16);
        s16 = e16 = vf{};
        for (int c = 0; c < C; c++) acc[c] += hsum(a16[c]), a16[c] = vf{};
    }
};

// Fold n logits l[0 .. n) (keys k0 .. k0 + n - 1, n a multiple of 16) into a row's statistics.
template <int C, bool LOGC>
static inline void fold(RowState<C>& st, const float* l, int64_t n, int64_t k0, const float* V, int64_t NK,
                        const float* logc, const int64_t* rep)
{
    vf m16 = load(l);
    for (int64_t j = W; j < n; j += W) m16 = vmax(m16, load(l + j));
    if (any_ge(m16, st.mx)) {
        const float bm = hmax(m16);
        if (bm > st.mx) {  // strictly larger: on ties the earlier key stays
            int64_t arg = 0;
            while (l[arg] != bm) arg++;
            st.rescale(bm);
            st.best = rep[k0 + arg];
        }
    }
    const vf vm = splat(st.mx), lo = splat(-80.f);
    vf s16 = st.s16, e16 = st.e16, a16[C];  // (locals: the stores below cannot alias V)
    for (int c = 0; c < C; c++) a16[c] = st.a16[c];
    for (int64_t j = 0; j < n; j += W) {
        vf d = load(l + j) - vm;
        vf x = LOGC ? d + load(logc + k0 + j) : d;
        if (!any_ge(x, -80.f)) continue;  // sixteen keys that weigh nothing
        const vf e = vexp(vmax(x, lo));  // (below -80: exp(-80) ~ 2e-35, nothing next to the max's 1)
        s16 += e;
        e16 += e * vmax(d, lo);
        for (int c = 0; c < C; c++) a16[c] += e * load(V + c * NK + k0 + j);
    }
    st.s16 = s16;
    st.e16 = e16;
    for (int c = 0; c < C; c++) st.a16[c] = a16[c];
}

// Upper bounds of the logits (plus log count) of every key of each block (keyset.py, "Block
// bounds"), for one query: its top-r principal coordinates pq [r], the norm rq of the rest and
// |q|^2 = qsq; BT [2r + 3, Jp] holds per block the box lo (r rows) and hi (r rows) of those
// coordinates, the range rlo, rhi of the residual norms and the largest log count (-inf for the
// padding columns up to Jp, a multiple of 16). ub[j] = (qsq - box_j - rgap_j^2) / 2b^2 + lcmax_j.
struct Bounds {
    const float *pq, *rq, *qsq, *bt;
    int64_t r, jp;
    float a, inv2b2, gap;
};

static void row_bounds(const Bounds& B, int64_t q, float* ub)
{
    const float* pq = B.pq + q * B.r;
    const vf a = splat(B.a), rq = splat(B.rq[q]), qsq = splat(B.qsq[q]), zero = vf{}, h = splat(B.inv2b2);
    const float* rlo = B.bt + 2 * B.r * B.jp;
    for (int64_t j = 0; j < B.jp; j += W) {
        vf box = vf{};
        for (int64_t i = 0; i < B.r; i++) {
            const vf p = splat(pq[i]);
            const vf g = vmax(a * load(B.bt + i * B.jp + j) - p, zero) + vmax(p - a * load(B.bt + (B.r + i) * B.jp + j), zero);
            box += g * g;
        }
        const vf rg = vmax(a * load(rlo + j) - rq, zero) + vmax(rq - a * load(rlo + B.jp + j), zero);
        const vf u = (qsq - box - rg * rg) * h + load(rlo + 2 * B.jp + j);
        memcpy(ub + j, &u, sizeof u);
    }
}

// block_home: for each query, the block with the largest bound (the first on ties) among J.
extern "C" void block_home(int64_t Qn, const float* PQ, const float* RQ, const float* QSQ, int64_t r, const float* BT,
                           int64_t Jp, int64_t J, float a, float inv2b2, int64_t* home, int threads)
{
    const Bounds B{PQ, RQ, QSQ, BT, r, Jp, a, inv2b2, 0.f};
#pragma omp parallel num_threads(threads) if (threads > 1 && Qn > 64)
    {
        float* ub = new float[Jp];
#pragma omp for schedule(static)
        for (int64_t q = 0; q < Qn; q++) {
            row_bounds(B, q, ub);
            int64_t best = 0;
            for (int64_t j = 1; j < J; j++) best = ub[j] > ub[best] ? j : best;
            home[q] = best;
        }
        delete[] ub;
    }
}

// tile_blocks: the softmax statistics of Qn query rows Qa [Qn, D1p] (augmented: <qa, key> is the
// logit) over the keys of blocks[0 .. J) (block b: keys b L .. b L + L - 1, L a multiple of the
// chunk width; key j is key kbase + j of the chunked keys K), merged into the running statistics
// at rows into[q] (see merge). The logits are made six rows by one chunk at a time in registers
// and folded into each row's statistics while they are in L1; none is written to memory. Rows
// are shared out over `threads` OpenMP threads and taken RT at a time (a row tile): a block is
// read from memory once per tile.
//
// With bounds (B != NULL), blocks that cannot matter are skipped: each row first takes the listed
// block with its largest bound alone (as block_home finds it); that block's largest
// logit m0 is a lower bound of the row's maximum, so a block whose bound lies more than gap below
// m0 weighs less than exp(-gap) per key. Each block then goes to the rows of the tile that need
// it, six at a time (their queries copied side by side first, unless every row needs it).
// counted[q] (if not NULL) receives the number of blocks computed for row q.
template <int C, bool LOGC>
static void tile_blocks_t(int64_t Qn, const float* Qa, const Keys& K, int64_t kbase, int64_t NK, int64_t L,
                          const float* V, const float* logc, const int64_t* rep, const int64_t* blocks, int64_t J,
                          const int64_t* into, float* m_io, float* s_io, float* acc_io, float* ent_io,
                          int64_t* best_io, const Bounds* B, int64_t* counted, int threads)
{
    const int RG = 6;  // rows per register tile
    const int64_t RT = 1020;  // rows per row tile: their statistics and queries stay in L2
    const int64_t FLUSH = 8;  // blocks summed lane by lane in float before the sums go to doubles
    const int64_t words = (J + 63) / 64;  // the blocks a row needs, one bit each
    const int64_t D1p = K.d1p, CW = K.cw;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
#ifdef _OPENMP
        const int nt = omp_get_num_threads(), me = omp_get_thread_num();
#else
        const int nt = 1, me = 0;
#endif
        const int64_t groups = (Qn + RG - 1) / RG;  // threads take whole groups of rows
        const int64_t q0 = groups * me / nt * RG, q1 = groups * (me + 1) / nt * RG < Qn ? groups * (me + 1) / nt * RG : Qn;
        RowState<C>* st = new RowState<C>[RT];
        int64_t* home = new int64_t[RT];  // the position in blocks of the block each row took first (-1: none)
        uint64_t* need = B ? new uint64_t[RT * words] : nullptr;
        float* ub = B ? new float[B->jp] : nullptr;
        float* packed = B ? new float[RT * D1p] : nullptr;  // the queries of the rows that need a block
        int64_t list[RT];
        float buf[RG * 4 * LANES] __attribute__((aligned(64)));
        for (int64_t r0 = q0; r0 < q1; r0 += RT) {
            const int64_t r1 = r0 + RT < q1 ? r0 + RT : q1, nr = r1 - r0;
            for (int64_t i = 0; i < nr; i++) {
                st[i].reset();
                home[i] = -1;
                if (counted) counted[r0 + i] = 0;
            }
            if (B) {
                for (int64_t i = 0; i < nr * words; i++) need[i] = 0;
                for (int64_t i = 0; i < nr; i++) {  // each row: its best block alone, then what it needs
                    const int64_t r = r0 + i;
                    row_bounds(*B, r, ub);
                    int64_t hb = 0;  // position in blocks of the best bound (the first on ties)
                    for (int64_t bi = 1; bi < J; bi++) hb = ub[blocks[bi]] > ub[blocks[hb]] ? bi : hb;
                    const int64_t k0 = blocks[hb] * L;
                    for (int64_t j = 0; j < L; j += CW) {
                        chunk_logits(1, Qa + r * D1p, K, (kbase + k0 + j) / CW, buf, 0);
                        fold<C, LOGC>(st[i], buf, CW, k0 + j, V, NK, logc, rep);
                    }
                    st[i].flush();
                    home[i] = hb;
                    if (counted) counted[r] = 1;
                    const float floor = st[i].mx - B->gap;
                    uint64_t* w = need + i * words;
                    for (int64_t bi = 0; bi < J; bi++)
                        if (ub[blocks[bi]] >= floor && bi != hb) w[bi / 64] |= (uint64_t)1 << (bi % 64);
                }
            }
            int64_t since = 0;  // blocks computed since the last flush
            for (int64_t bi = 0; bi < J; bi++) {
                int64_t n = 0;
                const float* qa = Qa + r0 * D1p;
                if (B) {
                    for (int64_t i = 0; i < nr; i++)
                        if (need[i * words + bi / 64] >> (bi % 64) & 1) list[n++] = i;
                    if (n == 0) continue;
                    if (n < nr) {
                        for (int64_t i = 0; i < n; i++) memcpy(packed + i * D1p, Qa + (r0 + list[i]) * D1p, D1p * sizeof(float));
                        qa = packed;
                    } else {
                        for (int64_t i = 0; i < n; i++) list[i] = i;
                    }
                } else {
                    for (int64_t i = 0; i < nr; i++) list[i] = i;
                    n = nr;
                }
                const int64_t kb = blocks[bi] * L;
                for (int64_t j = 0; j < L; j += CW) {
                    const int64_t c = (kbase + kb + j) / CW;
                    for (int64_t g = 0; g < n; g += RG) {
                        const int rows = n - g < RG ? (int)(n - g) : RG;
                        chunk_logits(rows, qa + g * D1p, K, c, buf, 4 * LANES);
                        for (int r = 0; r < rows; r++) {
                            const int64_t i = list[g + r];
                            if (home[i] != bi)  // (a row's home block is in already)
                                fold<C, LOGC>(st[i], buf + r * 4 * LANES, CW, kb + j, V, NK, logc, rep);
                        }
                    }
                }
                if (counted)
                    for (int64_t g = 0; g < n; g++) counted[r0 + list[g]] += home[list[g]] != bi;
                if (++since == FLUSH) {
                    for (int64_t i = 0; i < nr; i++) st[i].flush();
                    since = 0;
                }
            }
            for (int64_t i = 0; i < nr; i++) {
                RowState<C>& s = st[i];
                s.flush();
                if (s.mx == -INFINITY) continue;  // no block
                float acc[C];
                for (int c = 0; c < C; c++) acc[c] = (float)s.acc[c];
                merge<C>(into[r0 + i], s.mx, (float)s.s, acc, (float)s.ent, s.best, m_io, s_io, acc_io, ent_io, best_io);
            }
        }
        delete[] st;
        delete[] home;
        delete[] need;
        delete[] ub;
        delete[] packed;
    }
}

typedef void (*tile_fn)(int64_t, const float*, const Keys&, int64_t, int64_t, int64_t, const float*, const float*,
                        const int64_t*, const int64_t*, int64_t, const int64_t*, float*, float*, float*, float*,
                        int64_t*, const Bounds*, int64_t*, int);

static tile_fn pick(int64_t C, bool logc)
{
    if (C == 1) return logc ? tile_blocks_t<1, true> : tile_blocks_t<1, false>;
    if (C == 3) return logc ? tile_blocks_t<3, true> : tile_blocks_t<3, false>;
    return nullptr;
}

// The chunked keys: KD, ACT, OFF, CV, SHARED (see Keys), chunk width CW (16, 32 or 64), D1p; key j
// of V, logc, rep and the blocks is key kbase + j of the chunked keys.
// PQ == NULL: every listed block for every row; else the bounds above (BT [2r + 3, Jp]: see row_bounds).
extern "C" int tile_blocks(int64_t Qn, const float* Qa, const float* KD, const int32_t* ACT, const int64_t* OFF,
                           const float* CV, const uint8_t* SHARED, int64_t CW, int64_t D1p, int64_t kbase, int64_t NK, int64_t L,
                           const float* V, int64_t C, const float* logc, const int64_t* rep, const int64_t* blocks,
                           int64_t J, const int64_t* into, float* m_io, float* s_io, float* acc_io, float* ent_io,
                           int64_t* best_io, const float* PQ, const float* RQ, const float* QSQ, int64_t r,
                           const float* BT, int64_t Jp, float a, float inv2b2, float gap, int64_t* counted,
                           int threads)
{
    tile_fn f = pick(C, logc != nullptr);
    if (!f) return 1;
    if ((CW != LANES && CW != 2 * LANES && CW != 4 * LANES) || L % CW || NK % CW || kbase % CW || D1p % LANES) return 2;
    const Keys K{KD, ACT, OFF, CV, SHARED, CW, D1p};
    const Bounds B{PQ, RQ, QSQ, BT, r, Jp, a, inv2b2, gap};
    f(Qn, Qa, K, kbase, NK, L, V, logc, rep, blocks, J, into, m_io, s_io, acc_io, ent_io, best_io, PQ ? &B : nullptr,
      counted, threads);
    return 0;
}

// tile_classes: tile_blocks without bounds for G classes at once, each with its own NK keys (keys
// g NK .. g NK + NK - 1 of K, in blocks of L), values V + g * C * NK, key ids rep + g * NK, and its
// own Qn query rows Qa + g * Qn * D1p, merged at rows into[g * Qn ..]. The classes (not the rows of
// one class) are shared out over the threads: small classes have too few rows to split.
extern "C" int tile_classes(int64_t G, int64_t Qn, const float* Qa, const float* KD, const int32_t* ACT,
                            const int64_t* OFF, const float* CV, const uint8_t* SHARED, int64_t CW, int64_t D1p,
                            int64_t NK, int64_t L, const float* V, int64_t C, const int64_t* rep, const int64_t* into,
                            float* m_io, float* s_io, float* acc_io, float* ent_io, int64_t* best_io, int threads)
{
    tile_fn f = pick(C, false);
    if (!f) return 1;
    if ((CW != LANES && CW != 2 * LANES && CW != 4 * LANES) || L % CW || NK % L || D1p % LANES) return 2;
    const Keys K{KD, ACT, OFF, CV, SHARED, CW, D1p};
    const int64_t J = NK / L;
    int64_t* blocks = new int64_t[J];
    for (int64_t j = 0; j < J; j++) blocks[j] = j;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
    for (int64_t g = 0; g < G; g++)
        f(Qn, Qa + g * Qn * D1p, K, g * NK, NK, L, V + g * C * NK, nullptr, rep + g * NK, blocks, J,
          into + g * Qn, m_io, s_io, acc_io, ent_io, best_io, nullptr, nullptr, 1);
    delete[] blocks;
    return 0;
}

// ---- building key tables (cold runs: a table per new k) --------------------------------------
// key_table: column j of out [D + 1, M] is the k x k window of key j, entries (channel, row, col),
// then |K|^2: the window at (y, x) = (pos[j] / w, pos[j] % w) of image img[j] of the zero-padded
// images P [n, Hp, Wp, C] (channels last, padded by k / 2 on each side); img[j] < 0: a padding key,
// zeros and |K|^2 = pad_sq. Keys go 64 at a time, so that each entry's row is written 64 floats
// in a row.
extern "C" void key_table(const float* P, int64_t Hp, int64_t Wp, int64_t C, const int64_t* img,
                          const int64_t* pos, int64_t M, int64_t k, int64_t w, float* out, float pad_sq, int threads)
{
    const int64_t D = C * k * k, T = 64;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && M >= 4096)
    for (int64_t j0 = 0; j0 < M; j0 += T) {
        const int64_t nj = j0 + T <= M ? T : M - j0;
        const float* base[T];
        float sq[T];
        for (int64_t j = 0; j < nj; j++) {
            const int64_t i = img[j0 + j], p = pos[j0 + j];
            base[j] = i < 0 ? nullptr : P + ((i * Hp + p / w) * Wp + p % w) * C;
            sq[j] = 0.0f;
        }
        int64_t e = 0;
        for (int64_t ch = 0; ch < C; ch++)
            for (int64_t dy = 0; dy < k; dy++)
                for (int64_t dx = 0; dx < k; dx++, e++) {
                    float* o = out + e * M + j0;
                    const int64_t at = (dy * Wp + dx) * C + ch;
                    for (int64_t j = 0; j < nj; j++) {
                        const float v = base[j] ? base[j][at] : 0.0f;
                        o[j] = v;
                        sq[j] += v * v;
                    }
                }
        for (int64_t j = 0; j < nj; j++) out[D * M + j0 + j] = base[j] ? sq[j] : pad_sq;
    }
}

// pack (cpu_kernel.pack) in two passes. pack_count: for chunk c of `width` keys of keys_t [D1, NK],
// the number of entries its keys do not all share, into counts[c]. pack_fill: with off (the
// counts' running sum, [chunks + 1]), writes the Keys arrays: data rows (an unshared entry's
// `width` values), their entry numbers, the shared values [chunks, D1p] (0 elsewhere; zeroed by
// the caller) and whether a chunk shares anything.
static inline bool all_same(const float* v, int64_t n)
{
    for (int64_t i = 1; i < n; i++)
        if (!(v[i] == v[0])) return false;
    return true;
}

extern "C" void pack_count(const float* KT, int64_t D1, int64_t NK, int64_t CW, int64_t* counts, int threads)
{
    const int64_t chunks = NK / CW;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && chunks >= 256)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t n = 0;
        for (int64_t e = 0; e < D1; e++) n += !all_same(KT + e * NK + c * CW, CW);
        counts[c] = n;
    }
}

extern "C" void pack_fill(const float* KT, int64_t D1, int64_t NK, int64_t CW, int64_t D1p, const int64_t* off,
                          float* data, int32_t* entry, float* cv, uint8_t* shared, int threads)
{
    const int64_t chunks = NK / CW;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && chunks >= 256)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t row = off[c];
        bool any = false;
        for (int64_t e = 0; e < D1; e++) {
            const float* v = KT + e * NK + c * CW;
            if (all_same(v, CW)) {
                cv[c * D1p + e] = v[0];
                any = true;
            } else {
                memcpy(data + row * CW, v, CW * sizeof(float));
                entry[row++] = (int32_t)e;
            }
        }
        shared[c] = any;
    }
}

// str_order: keyset._block_order's order of the rows of P [K, r] (row-major): sort-tile-recursive
// packing on the first `levels` coordinates. All rows sorted by coordinate 0 (stable); cut into
// slabs of `cell` rows (cell: whole blocks, about nblocks^(1/levels) slabs per level); each slab
// sorted by coordinate 1 and cut again; ... The last level sorts without cutting.
extern "C" void str_order(const float* P, int64_t K, int64_t r, int64_t levels, int64_t block, int64_t per_level,
                          int64_t* order, int threads)
{
    for (int64_t i = 0; i < K; i++) order[i] = i;
    const int64_t nblocks = (K + block - 1) / block;
    int64_t cell = nblocks * block;  // rows per range of the current level
    std::vector<int64_t> edges{0, K};  // the ranges of the current level: [edges[g], edges[g + 1])
    for (int64_t dim = 0; dim < levels; dim++) {
        const int64_t ranges = (int64_t)edges.size() - 1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && ranges > 1)
        for (int64_t g = 0; g < ranges; g++) {
            // (value, place in the range) pairs: all distinct, so std::sort gives the stable order
            const int64_t lo = edges[g], n = edges[g + 1] - lo;
            std::vector<std::pair<float, int64_t>> v(n);
            for (int64_t t = 0; t < n; t++) v[t] = {P[order[lo + t] * r + dim], t};
            std::sort(v.begin(), v.end());
            std::vector<int64_t> rows(n);
            for (int64_t t = 0; t < n; t++) rows[t] = order[lo + v[t].second];
            std::copy(rows.begin(), rows.end(), order + lo);
        }
        const int64_t next = (cell / block + per_level - 1) / per_level * block;
        cell = next > block ? next : block;
        std::vector<int64_t> cut{0};  // each range cut into pieces of `cell` rows from its start
        for (int64_t g = 0; g < ranges; g++) {
            for (int64_t e = edges[g] + cell; e < edges[g + 1]; e += cell) cut.push_back(e);
            cut.push_back(edges[g + 1]);
        }
        edges.swap(cut);
    }
}

// window_hash (engine._window_hash, bit for bit): for mixed values M [N, H, W] (zero outside),
// out[n, y, x] = sum_dy B^(dy+1) sum_dx A^(dx+1) M[n, y + dy - k/2, x + dx - k/2] in 64-bit
// arithmetic that wraps (the torch statement sums rows first, then columns; so does this).
extern "C" void window_hash(const int64_t* M, int64_t N, int64_t H, int64_t W, int64_t k, uint64_t A, uint64_t B,
                            int64_t* out, int threads)
{
    const int64_t d = k / 2, Hp = H + 2 * d;
    std::vector<uint64_t> pa(k), pb(k);
    pa[0] = A;
    pb[0] = B;
    for (int64_t i = 1; i < k; i++) {
        pa[i] = pa[i - 1] * A;
        pb[i] = pb[i - 1] * B;
    }
#pragma omp parallel num_threads(threads) if (threads > 1 && N * H * W * k >= (1 << 20))
    {
        std::vector<uint64_t> rows(Hp * W);
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            const int64_t* img = M + n * H * W;
            for (int64_t yp = 0; yp < Hp; yp++) {
                const int64_t y = yp - d;
                for (int64_t x = 0; x < W; x++) {
                    uint64_t s = 0;
                    if (y >= 0 && y < H)
                        for (int64_t dx = 0; dx < k; dx++) {
                            const int64_t xx = x + dx - d;
                            if (xx >= 0 && xx < W) s += pa[dx] * (uint64_t)img[y * W + xx];
                        }
                    rows[yp * W + x] = s;
                }
            }
            int64_t* o = out + n * H * W;
            for (int64_t y = 0; y < H; y++)
                for (int64_t x = 0; x < W; x++) {
                    uint64_t s = 0;
                    for (int64_t dy = 0; dy < k; dy++) s += pb[dy] * rows[(y + dy) * W + x];
                    o[y * W + x] = (int64_t)s;
                }
        }
    }
}

// same_count (engine._same_count): out[i] = how many of key[0 .. M-1] equal key[i]; one pass into
// an open-addressing table (twice M slots at least), then each key reads its slot's count.
extern "C" void same_count(const int64_t* key, int64_t M, int32_t* out)
{
    int64_t cap = 1024;
    while (cap < 2 * M) cap *= 2;
    const uint64_t mask = (uint64_t)cap - 1;
    std::vector<int64_t> slot_key(cap);
    std::vector<int32_t> count(cap, 0);
    std::vector<int64_t> where(M);
    for (int64_t i = 0; i < M; i++) {
        uint64_t h = (uint64_t)key[i];
        h ^= h >> 33;  // the keys are hashes already; a mix spreads any pattern in their low bits
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 33;
        h &= mask;
        while (count[h] && slot_key[h] != key[i]) h = (h + 1) & mask;
        slot_key[h] = key[i];
        count[h]++;
        where[i] = (int64_t)h;
    }
    for (int64_t i = 0; i < M; i++) out[i] = count[where[i]];
}
