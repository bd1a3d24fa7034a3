// The CPU kernel of elsviz (elsviz/cpu_kernel.py compiles it on first use; docs/ENGINE.md,
// "A compiled pass over each chunk of logits").
//
// rows_stats: for each row r of a chunk of logits L [R, n] (row stride ldl), in one call:
//   m = max_j l_j;  arg = the first j with l_j == m;
//   x_j = l_j - m + logc_j (logc_j = log of the key's count; 0 without logc);
//   e_j = exp(x_j) where x_j >= -80, else 0 (exp(-80) ~ 2e-35: nothing next to the max's 1);
//   s = sum_j e_j;  acc[c] = sum_j e_j v[c][j];  ent = sum_j e_j (l_j - m)
// where v[c][j] = V[(r / rpg) * vgs + c * vcs + j]: the rows come in groups of rpg that share one
// value table (a class of query pixels), or rpg = 1 and every row has its own.
// Rows (and queries) are shared out over `threads` OpenMP threads: compiled with -fopenmp, this
// library uses the OpenMP runtime torch has loaded (same soname), so its threads are torch's.
// Two passes over a row (its max; then everything else), sixteen keys at a time with GCC's vector
// extensions, and an exp of our own so that the whole loop stays in vector registers. Sixteen keys
// that all weigh nothing cost a comparison.
#include <stdint.h>
#include <string.h>
#include <float.h>
#include <math.h>

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
static const int W = 16;

static inline vf load(const float* p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline vf splat(float x) { return vf{} + x; }
static inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// exp(x) for x in [-80, 0]: x = n ln 2 + f with |f| <= ln(2) / 2 (Cody-Waite: ln 2 in two parts,
// so f is exact), exp(f) by its Taylor polynomial of degree 7 (error < 2e-9), times 2^n.
static inline vf vexp(vf x)
{
    vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
    vf f = x - n * 0.693359375f;
    f = f + n * 2.12194440e-4f;  // ln 2 = 0.693359375 - 2.12194440e-4
    vf p = splat(1.98412698e-4f);  // 1/7!
    p = p * f + 1.38888889e-3f;
    p = p * f + 8.33333333e-3f;
    p = p * f + 4.16666667e-2f;
    p = p * f + 1.66666667e-1f;
    p = p * f + 0.5f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf)bits;
}

#if defined(__AVX512F__)
#include <immintrin.h>
static inline bool any_ge(vf x, float t) { return _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(t), _CMP_GE_OQ) != 0; }
#else
static inline bool any_ge(vf x, float t)
{
    vi ge = (vi)(x >= t);
    int32_t any = 0;
    for (int q = 0; q < W; q++) any |= ge[q];
    return any != 0;
}
#endif

static inline float hmax(vf v) { float m = v[0]; for (int q = 1; q < W; q++) m = v[q] > m ? v[q] : m; return m; }
static inline float hsum(vf v) { float s = 0; for (int q = 0; q < W; q++) s += v[q]; return s; }

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
                   int64_t* arg_out, const int64_t* into, const int64_t* rep, int threads)
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
            vf e = vexp(vmax(x, lo));
            e = x >= lo ? e : vf{};
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
        if (into) {
            merge<C>(into[r], mx, s, acc, ent, rep ? rep[arg] : arg, m_out, s_out, acc_out, ent_out, arg_out);
            continue;
        }
        m_out[r] = mx; s_out[r] = s; ent_out[r] = ent; arg_out[r] = arg;
        for (int c = 0; c < C; c++) acc_out[r * C + c] = acc[c];
    }
}

typedef void (*rows_fn)(int64_t, int64_t, const float*, int64_t, const float*, int64_t, int64_t, int64_t,
                        const float*, float*, float*, float*, float*, int64_t*, const int64_t*, const int64_t*, int);

// into = NULL: the statistics of row r go to m_out[r] ... arg_out[r] (arg: the key's index in the row).
// into != NULL: they are merged into the running statistics at row into[r] of m_out ... (arg_out:
// the heaviest key's id, rep[arg], or arg without rep). The rows of into must be distinct.
extern "C" int rows_stats(int64_t R, int64_t n, const float* L, int64_t ldl, const float* V, int64_t C,
                          int64_t rpg, int64_t vgs, int64_t vcs, const float* logc, float* m_out, float* s_out,
                          float* acc_out, float* ent_out, int64_t* arg_out, const int64_t* into, const int64_t* rep,
                          int64_t threads)
{
    rows_fn f;
    if (C == 1) f = logc ? rows_t<1, true> : rows_t<1, false>;
    else if (C == 3) f = logc ? rows_t<3, true> : rows_t<3, false>;
    else return 1;
    f(R, n, L, ldl, V, rpg, vgs, vcs, logc, m_out, s_out, acc_out, ent_out, arg_out, into, rep, (int)threads);
    return 0;
}

// query_blocks: the pruned path one query at a time (docs/ENGINE.md, "Per-query blocks").
// Keys are in blocks of L (a multiple of 16, at most 1024) columns of KT [D1, NK] (dim-major: row d holds entry
// d of every key; the last row is |K|^2, so that <(c1 Q, c2), K> is the logit). For query q the
// blocks come in order[q, :] with their upper bounds ub[q, :] (descending); a block whose bound lies
// more than gap below the largest logit found so far is not computed, nor is any after it. The
// statistics of the computed keys are merged into the running ones at row into[q] (see merge);
// counted[q] (if not NULL) receives the number of blocks computed.
template <int C, bool LOGC>
static void query_blocks_t(int64_t Qn, const float* Qa, int64_t D1, const float* KT, int64_t NK, int64_t L,
                           const float* V, const float* logc, const int64_t* rep, const int64_t* order,
                           const float* ub, int64_t J, float gap, const int64_t* into, float* m_io, float* s_io,
                           float* acc_io, float* ent_io, int64_t* best_io, int64_t* counted, int threads)
{
    const vf lo = splat(-80.f);
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads) if (threads > 1)
    for (int64_t q = 0; q < Qn; q++) {
        const float* qa = Qa + q * D1;
        float buf[1024] __attribute__((aligned(64)));
        float mx = -INFINITY, s = 0.f, ent = 0.f, acc[C];
        for (int c = 0; c < C; c++) acc[c] = 0.f;
        int64_t best = 0, done = 0;
        for (int64_t i = 0; i < J; i++) {
            if (ub[q * J + i] < mx - gap) break;
            const int64_t k0 = order[q * J + i] * L;
            done++;
            // logits of the block, 64 keys at a time, then 16 at a time
            int64_t j = 0;
            for (; j + 4 * W <= L; j += 4 * W) {
                vf a0 = {}, a1 = {}, a2 = {}, a3 = {};
                const float* kp = KT + k0 + j;
                for (int64_t d = 0; d < D1; d++, kp += NK) {
                    const vf qd = splat(qa[d]);
                    a0 += qd * load(kp);
                    a1 += qd * load(kp + W);
                    a2 += qd * load(kp + 2 * W);
                    a3 += qd * load(kp + 3 * W);
                }
                memcpy(buf + j, &a0, sizeof a0);
                memcpy(buf + j + W, &a1, sizeof a1);
                memcpy(buf + j + 2 * W, &a2, sizeof a2);
                memcpy(buf + j + 3 * W, &a3, sizeof a3);
            }
            for (; j < L; j += W) {
                vf a0 = {};
                const float* kp = KT + k0 + j;
                for (int64_t d = 0; d < D1; d++, kp += NK) a0 += splat(qa[d]) * load(kp);
                memcpy(buf + j, &a0, sizeof a0);
            }
            vf m16 = splat(-FLT_MAX);
            for (int64_t j = 0; j < L; j += W) m16 = vmax(m16, load(buf + j));
            const float bm = hmax(m16);
            if (bm > mx) {  // a new maximum: rescale what was summed so far
                int64_t arg = 0;
                while (buf[arg] != bm) arg++;
                if (mx != -INFINITY) {
                    const float alpha = expf(mx - bm);
                    ent = alpha * (ent + s * (mx - bm));
                    s *= alpha;
                    for (int c = 0; c < C; c++) acc[c] *= alpha;
                }
                mx = bm;
                best = rep[k0 + arg];
            }
            vf s16 = {}, e16 = {}, a16[C];
            for (int c = 0; c < C; c++) a16[c] = vf{};
            const vf vm = splat(mx);
            for (int64_t j = 0; j < L; j += W) {
                vf d = load(buf + j) - vm;
                vf x = LOGC ? d + load(logc + k0 + j) : d;
                if (!any_ge(x, -80.f)) continue;
                vf e = vexp(vmax(x, lo));
                e = x >= lo ? e : vf{};
                s16 += e;
                e16 += e * vmax(d, lo);
                for (int c = 0; c < C; c++) a16[c] += e * load(V + c * NK + k0 + j);
            }
            s += hsum(s16);
            ent += hsum(e16);
            for (int c = 0; c < C; c++) acc[c] += hsum(a16[c]);
        }
        if (counted) counted[q] = done;
        if (done) merge<C>(into[q], mx, s, acc, ent, best, m_io, s_io, acc_io, ent_io, best_io);
    }
}

typedef void (*query_fn)(int64_t, const float*, int64_t, const float*, int64_t, int64_t, const float*, const float*,
                         const int64_t*, const int64_t*, const float*, int64_t, float, const int64_t*, float*, float*,
                         float*, float*, int64_t*, int64_t*, int);

extern "C" int query_blocks(int64_t Qn, const float* Qa, int64_t D1, const float* KT, int64_t NK, int64_t L,
                            const float* V, int64_t C, const float* logc, const int64_t* rep, const int64_t* order,
                            const float* ub, int64_t J, float gap, const int64_t* into, float* m_io, float* s_io,
                            float* acc_io, float* ent_io, int64_t* best_io, int64_t* counted, int threads)
{
    if (L % W || L > 1024) return 2;
    query_fn f;
    if (C == 1) f = logc ? query_blocks_t<1, true> : query_blocks_t<1, false>;
    else if (C == 3) f = logc ? query_blocks_t<3, true> : query_blocks_t<3, false>;
    else return 1;
    f(Qn, Qa, D1, KT, NK, L, V, logc, rep, order, ub, J, gap, into, m_io, s_io, acc_io, ent_io, best_io, counted,
      (int)threads);
    return 0;
}
