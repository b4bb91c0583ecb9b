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

/* One sequence, one KV head: its `group` query rows against the sequence's `ctx` cached tokens.
 * Inlined with a constant head_dim for the common sizes, so the loops over it are unrolled into
 * registers. */
static inline __attribute__((always_inline)) void attend(
    const float *qh, const float *k_cache, const float *v_cache, const int32_t *table, int64_t ctx,
    int64_t group, int64_t row, int64_t head_dim, int64_t block_size, float scale, float *scores, float *oh)
{
    /* pass 1: scores[g][t] = scale * q_g . k_t */
    for (int64_t start = 0; start < ctx; start += block_size) {
        const float *kb = k_cache + (int64_t)table[start / block_size] * block_size * row;
        const int64_t n = ctx - start < block_size ? ctx - start : block_size;
        for (int64_t j = 0; j < n; ++j) {
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
    /* softmax over each query row: exp in place, the sum's reciprocal kept for the end */
    for (int64_t g = 0; g < group; ++g) {
        float *sg = scores + g * ctx, m = sg[0], sum = 0.f; /* ctx >= 1: this step's token */
        for (int64_t t = 1; t < ctx; ++t) m = sg[t] > m ? sg[t] : m;
        for (int64_t t = 0; t < ctx; ++t) {
            sg[t] = expf(sg[t] - m);
            sum += sg[t];
        }
        /* pass 2, 64 output columns at a time: eight independent vector sums in registers */
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

/* Every (sequence, KV head) pair of one decode step, shared out over the threads of the caller's
 * parallel region (an orphaned `omp for`); `scores` is this thread's scratch of group * max_ctx floats. */
static void paged_attention(const float *q, const float *k_cache, const float *v_cache,
                            const int32_t *block_tables, int64_t table_width, const int32_t *context_lens,
                            int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                            int64_t block_size, float scale, float *out, float *scores)
{
    const int64_t group = num_heads / num_kv_heads;
    const int64_t row = num_kv_heads * head_dim; /* floats between consecutive cache slots */
    /* (sequence, KV head) pairs, longest contexts cost most: hand them out one at a time */
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t b = 0; b < num_seqs; ++b) {
        for (int64_t h = 0; h < num_kv_heads; ++h) {
            const int64_t ctx = context_lens[b];
            const int32_t *table = block_tables + b * table_width;
            if (table[0] < 0) { /* a padding row (fixed-shape batches): no cache to read */
                for (int64_t i = 0; i < group * head_dim; ++i) out[(b * num_heads + h * group) * head_dim + i] = 0.f;
                continue;
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
    }
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
