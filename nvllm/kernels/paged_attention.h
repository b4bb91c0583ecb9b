/* Paged decode attention on a CPU, float32: the code shared by attention=cpu (cpu_decode.c) and
 * forward=fused_cpu (cpu_step.c). Each query row reads its sequence's cached K/V in place through
 * the block table, where the pure-torch path first gathers every sequence's blocks into a padded
 * copy and then reads that.
 *
 * Shapes (all contiguous, float32):
 *   q            [num_seqs, num_heads, head_dim]        this step's query, rotary applied
 *   k/v_cache    [num_blocks, block_size, num_kv_heads, head_dim]
 *   block_tables [num_seqs, table_width] int32          -1 past the sequence's last block
 *   context_lens [num_seqs] int32                       cached tokens, this step's included
 *   out          [num_seqs, num_heads, head_dim]
 * The num_heads / num_kv_heads query heads that share KV head h (grouped-query attention) are
 * rows h*group .. h*group+group-1, so every K/V row is loaded once for the whole group.
 * Softmax is taken the plain way, in two passes over a scratch row of scores (float32, no running
 * rescale). -ffast-math lets gcc vectorise the reductions and expf; no value here is inf or NaN
 * (the row maximum starts from the first score), so only the summation order differs from torch.
 * Everything here is static: each kernel that includes it gets its own copy. */
#ifndef NVLLM_PAGED_ATTENTION_H
#define NVLLM_PAGED_ATTENTION_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__AVX512F__)
#include <immintrin.h>

/* The sums of 16 vectors' lanes, as one vector (lane j: a[j]'s sum), each summed by the tree a
 * vector reduction uses: lanes i and i + 8, then i and i + 4, i and i + 2, then the last two. */
static inline __attribute__((always_inline)) __m512 lane_sums16(const __m512 *a)
{
    __m512 b[8], c[4], d[2];
    for (int i = 0; i < 8; ++i) /* [a: r0-3, r4-7 | a': r0-3, r4-7], r_i = lanes i + (i + 8) */
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; ++i) /* 128-bit block k: vector 4i + k's s0-3, s_i = r_i + r_(i+4) */
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; ++i) /* block k: vector 8i + k's t0, t1, then 8i + 4 + k's; t_i = s_i + s_(i+2) */
        d[i] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0xEE));
    /* block k, lane m: vector 4m + k's t0 + t1, put back in order */
    const __m512 e = _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), e);
}

/* scores[j] = scale * q . k_j for 16 consecutive keys (`row` floats apart), head_dim a multiple
 * of 16: each key's products summed in 16 lanes, the 16 keys' lanes then summed together. */
static inline __attribute__((always_inline)) void scores16(const float *q, const float *k, int64_t row,
                                                           int64_t head_dim, float scale, float *scores)
{
    __m512 acc[16];
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_loadu_ps(k + j * row));
    for (int64_t d = 16; d < head_dim; d += 16) {
        const __m512 qd = _mm512_loadu_ps(q + d);
        for (int j = 0; j < 16; ++j) acc[j] = _mm512_fmadd_ps(qd, _mm512_loadu_ps(k + j * row + d), acc[j]);
    }
    _mm512_storeu_ps(scores, _mm512_mul_ps(lane_sums16(acc), _mm512_set1_ps(scale)));
}

typedef float attn_v16 __attribute__((vector_size(64), aligned(4)));
#define ROWS_AT_ONCE 4 /* pass 2's query rows at once: 4 x 4 vector sums and a V row fit the 32 registers */

/* Pass 2 for G query rows at once, over 64 columns of v_cache's and oh's rows:
 * oh_g = sum_t p_g[t] v_t / sums[g], each V row loaded once for all G rows, the sums kept in
 * registers (each column summed in t order, as row by row). */
static inline __attribute__((always_inline)) void weigh_values(
    const float *scores, int64_t ctx, const float *v_cache, const int32_t *table, int64_t row, int64_t block_size,
    const float *sums, int64_t head_dim, float *oh, const int G)
{
    attn_v16 acc[ROWS_AT_ONCE][4] = {{{0}}};
    for (int64_t start = 0; start < ctx; start += block_size) {
        const float *vb = v_cache + (int64_t)table[start / block_size] * block_size * row;
        const int64_t n = ctx - start < block_size ? ctx - start : block_size;
        for (int64_t j = 0; j < n; ++j) {
            const attn_v16 *v = (const attn_v16 *)(vb + j * row);
            const attn_v16 v0 = v[0], v1 = v[1], v2 = v[2], v3 = v[3];
            for (int g = 0; g < G; ++g) {
                const float p = scores[g * ctx + start + j];
                acc[g][0] += p * v0;
                acc[g][1] += p * v1;
                acc[g][2] += p * v2;
                acc[g][3] += p * v3;
            }
        }
    }
    for (int g = 0; g < G; ++g)
        for (int c = 0; c < 4; ++c)
            for (int d = 0; d < 16; ++d) oh[g * head_dim + c * 16 + d] = acc[g][c][d] / sums[g];
}
#endif

/* How many keys ahead of the one pass 1 reads `attend` asks for K and V rows. A slot holds every KV
 * head's row side by side, so one head's rows lie num_kv_heads * head_dim floats apart and, read key
 * by key, each is a round trip to memory: asked for ahead, they stream, and pass 2 finds V in the
 * cache (experiments/kernel_flags_ab.py measures it: built with -DAHEAD=0 nothing is asked for). */
#ifndef AHEAD
#define AHEAD 32
#endif

/* Ask for the K and V rows of keys t0 .. t1 - 1 (those below ctx) into the L2 cache: a prefetch,
 * which never faults and changes no value */
static inline __attribute__((always_inline)) void ask_rows(const float *k_cache, const float *v_cache,
                                                           const int32_t *table, int64_t row, int64_t block_size,
                                                           int64_t head_dim, int64_t t0, int64_t t1, int64_t ctx)
{
    if (AHEAD == 0) return;
    for (int64_t t = t0; t < t1 && t < ctx; ++t) {
        const int64_t at = (int64_t)table[t / block_size] * block_size * row + t % block_size * row;
        for (int64_t d = 0; d < head_dim; d += 16) { /* a 64-byte line a time */
            __builtin_prefetch(k_cache + at + d, 0, 2);
            __builtin_prefetch(v_cache + at + d, 0, 2);
        }
    }
}

/* One sequence, one KV head: its `group` query rows against the sequence's `ctx` cached tokens.
 * Inlined with a constant head_dim for the common sizes, so the loops over it are unrolled into
 * registers. */
static inline __attribute__((always_inline)) void attend(
    const float *qh, const float *k_cache, const float *v_cache, const int32_t *table, int64_t ctx,
    int64_t group, int64_t row, int64_t head_dim, int64_t block_size, float scale, float *scores, float *oh)
{
    /* pass 1: scores[g][t] = scale * q_g . k_t (AVX-512: 16 keys at a time, then key by key), the
     * K and V rows AHEAD keys on asked for 16 keys at a time */
    ask_rows(k_cache, v_cache, table, row, block_size, head_dim, 0, AHEAD, ctx);
    for (int64_t start = 0; start < ctx; start += block_size) {
        const float *kb = k_cache + (int64_t)table[start / block_size] * block_size * row;
        const int64_t n = ctx - start < block_size ? ctx - start : block_size;
        int64_t j = 0;
#if defined(__AVX512F__)
        if (head_dim % 16 == 0)
            for (; j + 16 <= n; j += 16) {
                ask_rows(k_cache, v_cache, table, row, block_size, head_dim, start + j + AHEAD, start + j + AHEAD + 16, ctx);
                for (int64_t g = 0; g < group; ++g)
                    scores16(qh + g * head_dim, kb + j * row, row, head_dim, scale, scores + g * ctx + start + j);
            }
#endif
        for (; j < n; ++j) {
            if (j % 16 == 0)
                ask_rows(k_cache, v_cache, table, row, block_size, head_dim, start + j + AHEAD, start + j + AHEAD + 16, ctx);
            const float *k = kb + j * row;
            for (int64_t g = 0; g < group; ++g) {
                const float *qg = qh + g * head_dim;
                float s = 0.f;
#pragma omp simd reduction(+ : s)
                for (int64_t d = 0; d < head_dim; ++d) s += qg[d] * k[d];
                scores[g * ctx + start + j] = s * scale;
            }
        }
    }
    /* softmax over each query row: exp in place, the sum kept for the end */
    float sums[group];
    for (int64_t g = 0; g < group; ++g) {
        float *sg = scores + g * ctx, m = sg[0], sum = 0.f; /* ctx >= 1: this step's token */
        for (int64_t t = 1; t < ctx; ++t) m = sg[t] > m ? sg[t] : m;
        for (int64_t t = 0; t < ctx; ++t) {
            sg[t] = expf(sg[t] - m);
            sum += sg[t];
        }
        sums[g] = sum;
    }
    /* pass 2 (AVX-512, head_dim a multiple of 64): a few query rows and 64 output columns at a
     * time (weigh_values); else row by row, 64 output columns at a time */
    int64_t g0 = 0;
#if defined(__AVX512F__)
    if (head_dim % 64 == 0)
        for (; g0 < group; g0 += ROWS_AT_ONCE)
            for (int64_t d0 = 0; d0 < head_dim; d0 += 64) {
                const float *sg = scores + g0 * ctx, *vc = v_cache + d0;
                float *out = oh + g0 * head_dim + d0;
                switch (group - g0) {
                case 1: weigh_values(sg, ctx, vc, table, row, block_size, sums + g0, head_dim, out, 1); break;
                case 2: weigh_values(sg, ctx, vc, table, row, block_size, sums + g0, head_dim, out, 2); break;
                case 3: weigh_values(sg, ctx, vc, table, row, block_size, sums + g0, head_dim, out, 3); break;
                default: weigh_values(sg, ctx, vc, table, row, block_size, sums + g0, head_dim, out, ROWS_AT_ONCE);
                }
            }
#endif
    for (int64_t g = g0; g < group; ++g) {
        const float *sg = scores + g * ctx, sum = sums[g];
        for (int64_t d0 = 0; d0 < head_dim; d0 += 64) {
            const int64_t w = head_dim - d0 < 64 ? head_dim - d0 : 64;
            float acc[64] = {0};
            for (int64_t start = 0; start < ctx; start += block_size) {
                const float *vb = v_cache + (int64_t)table[start / block_size] * block_size * row + d0;
                const int64_t n = ctx - start < block_size ? ctx - start : block_size;
                for (int64_t j = 0; j < n; ++j) {
                    const float p = sg[start + j], *v = vb + j * row;
                    if (w == 64) {
#pragma omp simd
                        for (int64_t d = 0; d < 64; ++d) acc[d] += p * v[d];
                    } else {
                        for (int64_t d = 0; d < w; ++d) acc[d] += p * v[d];
                    }
                }
            }
            for (int64_t d = 0; d < w; ++d) oh[g * head_dim + d0 + d] = acc[d] / sum;
        }
    }
}

/* Sequence b's KV head h: its query rows q [num_seqs, num_heads, head_dim] against its cache, into
 * out (same shape); `scores`: this thread's scratch of group * context floats. Not inlined, so that
 * every caller runs the same compiled code (a row's result does not depend on its caller). */
static __attribute__((noinline)) void attend_head(
    const float *q, const float *k_cache, const float *v_cache, const int32_t *block_tables, int64_t table_width,
    const int32_t *context_lens, int64_t b, int64_t h, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
    int64_t block_size, float scale, float *out, float *scores)
{
    const int64_t group = num_heads / num_kv_heads;
    const int64_t row = num_kv_heads * head_dim; /* floats between consecutive cache slots */
    const int64_t ctx = context_lens[b];
    const int32_t *table = block_tables + b * table_width;
    if (table[0] < 0) { /* a padding row (fixed-shape batches): no cache to read */
        for (int64_t i = 0; i < group * head_dim; ++i) out[(b * num_heads + h * group) * head_dim + i] = 0.f;
        return;
    }
    const float *kc = k_cache + h * head_dim, *vc = v_cache + h * head_dim;
    const float *qh = q + (b * num_heads + h * group) * head_dim;
    float *oh = out + (b * num_heads + h * group) * head_dim;
    if (head_dim == 64)
        attend(qh, kc, vc, table, ctx, group, row, 64, block_size, scale, scores, oh);
    else if (head_dim == 128)
        attend(qh, kc, vc, table, ctx, group, row, 128, block_size, scale, scores, oh);
    else
        attend(qh, kc, vc, table, ctx, group, row, head_dim, block_size, scale, scores, oh);
}

/* Every (sequence, KV head) pair of one decode step, shared out over the threads of the caller's
 * parallel region (an orphaned `omp for`); `scores` is this thread's scratch of group * max_ctx floats. */
static void paged_attention(const float *q, const float *k_cache, const float *v_cache,
                            const int32_t *block_tables, int64_t table_width, const int32_t *context_lens,
                            int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                            int64_t block_size, float scale, float *out, float *scores)
{
    /* (sequence, KV head) pairs, longest contexts cost most: hand them out one at a time */
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t b = 0; b < num_seqs; ++b)
        for (int64_t h = 0; h < num_kv_heads; ++h)
            attend_head(q, k_cache, v_cache, block_tables, table_width, context_lens, b, h, num_heads, num_kv_heads,
                        head_dim, block_size, scale, out, scores);
}

static int64_t longest(const int32_t *context_lens, int64_t num_seqs)
{
    int64_t max_ctx = 0;
    for (int64_t b = 0; b < num_seqs; ++b)
        if (context_lens[b] > max_ctx) max_ctx = context_lens[b];
    return max_ctx;
}

/* This thread's scratch for scores (inside a parallel region); on failure it sets the shared flag,
 * which every thread reads after the next barrier. */
static float *score_scratch(int64_t floats, int *failed)
{
    float *scores = malloc(sizeof(float) * (size_t)floats);
    if (!scores) {
#pragma omp atomic write
        *failed = 1;
    }
    return scores;
}

#endif
