/* Matmuls that read weights quantized in blocks of 32 along k, in the layout the quantized loaders
 * produce (nvllm/models/layers/packed.py: row-major, one row per output feature), shared by
 * quantized.c (the torch wrappers' matmuls) and cpu_step.c (forward=fused_cpu's step):
 *
 *   int8 (GGUF Q8_0's arithmetic)  qweight int8 [N, K], scales float16 [N, K/32]
 *                                  w[n, k] = q[n, k] * d[n, k/32]
 *   int4 (GGUF Q4_1's, and Q4_0's  qweight uint8 [N, K/2], scales and mins float16 [N, K/32]; in each
 *         with m = -8 d)           block's 16 bytes, byte i holds weight i (low nibble) and i + 16 (high)
 *                                  w[n, k] = q * d + m, q in 0..15
 *   int4, float32 scales (GGUF     int4's qweight; scales and mins float32 [N, K/32] (Q4_K's d * sc and
 *         Q4_K's sub-blocks)       -dmin * m, which float16 cannot hold exactly)
 *
 * A kernel is compiled for one layout (FMT: Q_INT8, Q_INT4, Q_INT4_F32); `scale_at` reads a scale or
 * minimum in the layout's type.
 *
 * `features` computes y[b, n] = x[b, :] . w[n, :] for every input row b of a group of FEATURES
 * output features n, float32 activations and sums: each block's 32 weights are widened to float32
 * in registers (q * d is exact in float32: at most 8 + 11 significant bits; int4's + m rounds once,
 * as the dequantized float32 weight does) and multiplied into float32 sums per input row, which
 * are added up across the row's blocks and then across their lanes. So y equals x times the
 * dequantized float32 weights up to the order of the sums. The callers share out the groups over
 * their threads; a group's weights are read from memory once for all rows:
 *   AVX-512: FEATURES = 4 output features over tiles of TILE = 4 input rows, a block of each row's
 *            activations loaded once for the four; past one tile of rows, the four features'
 *            weights are dequantized once into a buffer (the same floats) instead of once a tile;
 *   else:    one output feature over tiles of ROWS = 8 input rows, each block dequantized once a tile.
 *
 * `features_dot` is the variant for int8 activations (quantization.activations=int8, llama.cpp's
 * arithmetic: each block of 32 of a row's activations rounded to int8, integer dot products): see
 * its section at the end.
 *
 * Vector code: AVX-512 widens a block's bytes 16 at a time into two 16-float vectors; else AVX2 +
 * F16C intrinsics, 8 at a time (GCC 12's __builtin_convertvector widens bytes one at a time);
 * portable C elsewhere. */
#ifndef NVLLM_QUANTIZED_H
#define NVLLM_QUANTIZED_H
#include "widen.h"

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#endif

typedef float v8 __attribute__((vector_size(32), aligned(4))); /* 8 floats, unaligned loads allowed */

#define BLOCK 32
#define ROWS 8 /* input rows whose sums stay in registers while a block's weights are reused */

enum { Q_INT8 = 0, Q_INT4 = 1, Q_INT4_F32 = 2 }; /* the layouts above */

/* Scale (or minimum) j of a run of them, as a float: float16 widened exactly, or float32 (Q_INT4_F32) */
static inline __attribute__((always_inline)) float scale_at(const void *s, int64_t j, const int FMT)
{
    if (FMT == Q_INT4_F32) return ((const float *)s)[j];
#if defined(__AVX2__) && defined(__F16C__)
    return _cvtsh_ss(((const uint16_t *)s)[j]);
#else
    return f16_to_float(((const uint16_t *)s)[j]);
#endif
}

/* The run of scales (or minimums) from j on */
static inline __attribute__((always_inline)) const void *scales_from(const void *s, int64_t j, const int FMT)
{
    return (const char *)s + j * (FMT == Q_INT4_F32 ? 4 : 2);
}

/* Block j's 32 weights as four 8-float vectors: w[0..3] = weights 0-7, 8-15, 16-23, 24-31 */
static inline __attribute__((always_inline)) void dequantize(const uint8_t *q, const void *scales, const void *mins,
                                                             int64_t j, v8 w[4], const int FMT)
{
    const int INT4 = FMT != Q_INT8;
#if defined(__AVX2__) && defined(__F16C__)
    const __m256 d = _mm256_set1_ps(scale_at(scales, j, FMT));
    const __m256 m = _mm256_set1_ps(INT4 ? scale_at(mins, j, FMT) : 0.f);
    __m128i b[2]; /* weights 0-15 and 16-31, a byte each */
    if (INT4) {
        const __m128i bytes = _mm_loadu_si128((const __m128i *)(q + j * BLOCK / 2)), low = _mm_set1_epi8(0xf);
        b[0] = _mm_and_si128(bytes, low);
        b[1] = _mm_and_si128(_mm_srli_epi16(bytes, 4), low);
    } else {
        b[0] = _mm_loadu_si128((const __m128i *)(q + j * BLOCK));
        b[1] = _mm_loadu_si128((const __m128i *)(q + j * BLOCK + 16));
    }
    for (int h = 0; h < 2; ++h) {
        const __m128i half[2] = {b[h], _mm_unpackhi_epi64(b[h], b[h])};
        for (int i = 0; i < 2; ++i) {
            const __m256 f = _mm256_cvtepi32_ps(INT4 ? _mm256_cvtepu8_epi32(half[i]) : _mm256_cvtepi8_epi32(half[i]));
            w[2 * h + i] = (v8)(INT4 ? _mm256_fmadd_ps(f, d, m) : _mm256_mul_ps(f, d));
        }
    }
#else
    const float d = scale_at(scales, j, FMT), m = INT4 ? scale_at(mins, j, FMT) : 0.f;
    for (int i = 0; i < BLOCK; ++i) {
        const uint8_t byte = INT4 ? q[j * BLOCK / 2 + i % 16] : 0;
        w[i / 8][i % 8] = INT4 ? (float)(i < 16 ? byte & 0xf : byte >> 4) * d + m : (float)(int8_t)q[j * BLOCK + i] * d;
    }
#endif
}

/* The lanes of an 8-float sum added up, plus the bias where there is one */
static inline float lanes_sum(v8 a, const float *bias)
{
    float s = 0.f;
    for (int i = 0; i < 8; ++i) s += a[i];
    return bias ? s + *bias : s;
}

#ifdef __AVX512F__
/* Block j's 32 weights as two 16-float vectors (weights 0-15, 16-31): int8's bytes sign-extended,
 * int4's bytes zero-extended once and split into their low (weights 0-15) and high nibbles */
static inline __attribute__((always_inline)) void dequantize16(const uint8_t *q, const void *scales,
                                                               const void *mins, int64_t j, __m512 w[2], const int FMT)
{
    const __m512 d = _mm512_set1_ps(scale_at(scales, j, FMT));
    if (FMT != Q_INT8) {
        const __m512 m = _mm512_set1_ps(scale_at(mins, j, FMT));
        const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + j * BLOCK / 2)));
        w[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(bytes, _mm512_set1_epi32(0xf))), d, m);
        w[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4)), d, m);
    } else
        for (int h = 0; h < 2; ++h)
            w[h] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                     _mm_loadu_si128((const __m128i *)(q + j * BLOCK + 16 * h)))), d);
}
#endif

#ifdef __AVX512F__
#define FEATURES 4 /* output features multiplied together: a block of a row's activations is loaded once for all */
#define TILE 4     /* input rows a tile: TILE x FEATURES 16-float sums, plus the rows' activations, in 32 registers */
#define QPREFETCH 8192 /* how far ahead (bytes of weights) a tile asks for them */
/* FT output features (their rows of weights row_bytes apart) for BT input rows: one 16-float sum
 * per (row, feature), added up across the blocks, then across its lanes. wf: the FT rows already
 * dequantized ([FT][K] floats, the same values), or NULL to dequantize them here. */
static inline __attribute__((always_inline)) void tile16(const float *restrict x, int64_t K, const uint8_t *restrict q,
                                                         int64_t row_bytes, const void *restrict scales,
                                                         const void *restrict mins, const float *wf,
                                                         const float *bias, float *restrict y, int64_t N, const int BT,
                                                         const int FT, const int FMT)
{
    const int64_t blocks = K / BLOCK;
    __m512 acc[TILE][FEATURES];
    for (int b = 0; b < BT; ++b)
        for (int f = 0; f < FT; ++f) acc[b][f] = _mm512_setzero_ps();
    /* the FT rows' bytes a block, of weights and of scales */
    const int64_t step = FT * row_bytes / blocks, scale_step = FT * (FMT == Q_INT4_F32 ? 4 : 2);
    for (int64_t j = 0; j < blocks; ++j) {
        /* FT rows are one contiguous run of weights (and of scales): ask for it PREFETCH bytes ahead
         * of where the block reads, for the hardware prefetcher does not keep up with a single
         * stream at this pace */
        if (!wf) {
            for (int64_t line = 0; line < step; line += 64) __builtin_prefetch(q + j * step + line + QPREFETCH);
            __builtin_prefetch((const char *)scales + j * scale_step + QPREFETCH / 8);
        }
        __m512 xv[TILE][2];
        for (int b = 0; b < BT; ++b) {
            xv[b][0] = _mm512_loadu_ps(x + b * K + j * BLOCK);
            xv[b][1] = _mm512_loadu_ps(x + b * K + j * BLOCK + 16);
        }
        for (int f = 0; f < FT; ++f) {
            __m512 w[2];
            if (wf) {
                w[0] = _mm512_loadu_ps(wf + f * K + j * BLOCK);
                w[1] = _mm512_loadu_ps(wf + f * K + j * BLOCK + 16);
            } else
                dequantize16(q + f * row_bytes, scales_from(scales, f * blocks, FMT),
                             FMT != Q_INT8 ? scales_from(mins, f * blocks, FMT) : 0, j, w, FMT);
            for (int b = 0; b < BT; ++b)
                acc[b][f] = _mm512_fmadd_ps(w[1], xv[b][1], _mm512_fmadd_ps(w[0], xv[b][0], acc[b][f]));
        }
    }
    for (int b = 0; b < BT; ++b)
        for (int f = 0; f < FT; ++f) {
            const float s = _mm512_reduce_add_ps(acc[b][f]);
            y[b * N + f] = bias ? s + bias[f] : s;
        }
}

/* tile16 over all B rows, TILE at a time. More than a tile of rows: the FT rows of weights are
 * dequantized once into wf (on the stack: FT * K floats) rather than once a tile. */
static inline __attribute__((always_inline)) void tiles16(const float *x, int64_t B, int64_t K, const uint8_t *q,
                                                          int64_t row_bytes, const void *scales, const void *mins,
                                                          const float *bias, float *y, int64_t N, const int FT,
                                                          const int FMT)
{
    float dequantized[B > TILE ? FT * K : 1];
    const float *wf = NULL;
    if (B > TILE) {
        const int64_t blocks = K / BLOCK;
        for (int f = 0; f < FT; ++f)
            for (int64_t j = 0; j < blocks; ++j) {
                __m512 w[2];
                dequantize16(q + f * row_bytes, scales_from(scales, f * blocks, FMT),
                             FMT != Q_INT8 ? scales_from(mins, f * blocks, FMT) : 0, j, w, FMT);
                _mm512_storeu_ps(dequantized + f * K + j * BLOCK, w[0]);
                _mm512_storeu_ps(dequantized + f * K + j * BLOCK + 16, w[1]);
            }
        wf = dequantized;
    }
    int64_t b0 = 0;
    for (; b0 + TILE <= B; b0 += TILE)
        tile16(x + b0 * K, K, q, row_bytes, scales, mins, wf, bias, y + b0 * N, N, TILE, FT, FMT);
    switch (B - b0) { /* the rest, with the row count known to the compiler */
#define REST(r) case r: tile16(x + b0 * K, K, q, row_bytes, scales, mins, wf, bias, y + b0 * N, N, r, FT, FMT); break;
        REST(1) REST(2) REST(3)
#undef REST
    }
}
#else
#define FEATURES 1

/* One output feature for BT input rows: two 8-float sums a row, added up across the blocks, then
 * across their lanes. */
static inline __attribute__((always_inline)) void row(const float *restrict x, int64_t K, const uint8_t *restrict q,
                                                      const void *restrict scales, const void *restrict mins,
                                                      const float *bias, float *restrict y, int64_t N, const int BT,
                                                      const int FMT)
{
    v8 acc[ROWS][2];
    for (int b = 0; b < BT; ++b) acc[b][0] = acc[b][1] = (v8){0};
    for (int64_t j = 0; j < K / BLOCK; ++j) {
        v8 w[4];
        dequantize(q, scales, mins, j, w, FMT);
        for (int b = 0; b < BT; ++b) {
            const float *xb = x + b * K + j * BLOCK;
            acc[b][0] += w[0] * *(const v8 *)xb + w[2] * *(const v8 *)(xb + 16);
            acc[b][1] += w[1] * *(const v8 *)(xb + 8) + w[3] * *(const v8 *)(xb + 24);
        }
    }
    for (int b = 0; b < BT; ++b) y[b * N] = lanes_sum(acc[b][0] + acc[b][1], bias);
}
#endif

/* y[b * N + f] for b < B, f < count <= FEATURES: output features n0 .. n0 + count - 1 of x [B, K]
 * times the weight of layout FMT, q, scales and mins (int4) pointing at feature n0's row (rows
 * row_bytes and K / 32 scales apart), bias at its bias (or NULL). K a multiple of 32. Callers share
 * out the groups of FEATURES output features over their threads. */
static inline __attribute__((always_inline)) void features(const float *x, int64_t B, int64_t K, const uint8_t *q,
                                                           int64_t row_bytes, const void *scales, const void *mins,
                                                           const float *bias, float *y, int64_t N, int64_t count,
                                                           const int FMT)
{
#ifdef __AVX512F__
    if (count == FEATURES) {
        tiles16(x, B, K, q, row_bytes, scales, mins, bias, y, N, FEATURES, FMT);
        return;
    }
#endif
    const int64_t blocks = K / BLOCK;
    for (int64_t f = 0; f < count; ++f) {
        const uint8_t *qf = q + f * row_bytes;
        const void *sf = scales_from(scales, f * blocks, FMT);
        const void *mf = FMT != Q_INT8 ? scales_from(mins, f * blocks, FMT) : 0;
        const float *bf = bias ? bias + f : 0;
#ifdef __AVX512F__
        tiles16(x, B, K, qf, row_bytes, sf, mf, bf, y + f, N, 1, FMT);
#else
        int64_t b0 = 0;
        for (; b0 + ROWS <= B; b0 += ROWS) row(x + b0 * K, K, qf, sf, mf, bf, y + f + b0 * N, N, ROWS, FMT);
        switch (B - b0) { /* the rest, with the row count known to the compiler */
#define REST(r) case r: row(x + b0 * K, K, qf, sf, mf, bf, y + f + b0 * N, N, r, FMT); break;
            REST(1) REST(2) REST(3) REST(4) REST(5) REST(6) REST(7)
#undef REST
        }
#endif
    }
}

/* -- int8 activations (quantization.activations=int8) --------------------------------------------- */

/* llama.cpp's arithmetic for its quantized files: each block of 32 of a row's activations is rounded
 * to int8 with a scale of its own (Q8_0's: s = max |x| / 127, q = round(x / s); s kept in float32),
 * a block's 32 products of weights (int8, or int4's 0..15) and activations are summed exactly in
 * int32, then scaled in float32:
 *     y = sum over blocks j of s_j * (d_j * sum_i qw_i qx_i + m_j * sum_i qx_i)    (int8: m = 0)
 * It changes the numerics (the activations are rounded to 8 bits), so it is an option asked for by
 * name, never the default. `quantize_dot_rows` rounds the rows once per matmul into the layout below;
 * `features_dot` multiplies it by a group of output features, as `features` does float rows.
 *
 * The int32 sums: with AVX512_VNNI, vpdpbusd over 64 bytes: 2 blocks of int8 weights a step (the
 * weights offset by 128 to make them unsigned, -128 d_j * sum qx_j added back) or 4 of int4 (their
 * low nibbles, then their high ones, against the row's activations laid out to match); each lane's
 * int32 sum scaled by its block's scales, spread over the block's lanes. Elsewhere a block at a time
 * on 8 lanes: AVX-VNNI's vpdpbusd, or AVX2's vpmaddubsw + vpmaddwd (int8 weights' signs moved onto
 * the activations; no overflow: a pair sums to at most 2 * 127 * 127 < 2^15), or portable C. The
 * same integers in every build; the float sums differ in order only. */
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define DOT512 1
#define INT8_DOT_ISA "vnni"
#elif defined(__AVX2__) && (defined(__AVXVNNI__) || defined(__AVX512VNNI__) && defined(__AVX512VL__))
#define INT8_DOT_ISA "vnni"
#elif defined(__AVX2__) && defined(__F16C__)
#define INT8_DOT_ISA "avx2"
#else
#define INT8_DOT_ISA "portable"
#endif

/* A row of int8 activations, `dot_row_bytes` apart: the int8 values of P blocks (the row's blocks
 * rounded up to 4, zeros past them), then P float32 scales s_j, then P sums s_j * sum_i q_ji times
 * DOT_SUM (the factor the kernel wants). The values are in k order, but for int4 weights with
 * AVX512_VNNI: per 4 blocks, the 16 first values of each block, then the 16 last (the weights' low
 * and high nibbles). */
static inline int64_t dot_blocks(int64_t K) { return (K / BLOCK + 3) / 4 * 4; }
static inline int64_t dot_row_bytes(int64_t K) { return dot_blocks(K) * (BLOCK + 2 * sizeof(float)); }
#ifdef DOT512
/* int8's sums times -128: the weights' offset */
#define DOT_SUM(FMT) ((FMT) == Q_INT8 ? -128.f : 1.f)
#define DOT_AT(j, i, FMT) ((FMT) == Q_INT8 ? (j) * BLOCK + (i) : (j) / 4 * 128 + (i) / 16 * 64 + (j) % 4 * 16 + (i) % 16)
#else
#define DOT_SUM(FMT) 1.f
#define DOT_AT(j, i, FMT) ((j) * BLOCK + (i))
#endif

/* Block j < dot_blocks(K) of a row x of K activations into its row of int8 activations `out`
 * (AVX-512: the same values, 16 lanes at a time: lrintf and vcvtps2dq both round to nearest even) */
static inline __attribute__((always_inline)) void quantize_dot_block(const float *restrict x, int64_t K, int64_t j,
                                                                     int8_t *restrict out, const int FMT)
{
    const int64_t P = dot_blocks(K);
    float *s = (float *)(out + P * BLOCK), *sums = s + P;
    float amax = 0.f;
    int32_t sum = 0;
#ifdef __AVX512F__
    __m128i q[2] = {_mm_setzero_si128(), _mm_setzero_si128()}; /* values 0-15 and 16-31 */
    if (j < K / BLOCK) {
        const __m512 a = _mm512_loadu_ps(x + j * BLOCK), b = _mm512_loadu_ps(x + j * BLOCK + 16);
        amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
        const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inv)), qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inv));
        sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
        q[0] = _mm512_cvtepi32_epi8(qa);
        q[1] = _mm512_cvtepi32_epi8(qb);
    }
    _mm_storeu_si128((__m128i *)(out + DOT_AT(j, 0, FMT)), q[0]); /* (16 values in a row in either layout) */
    _mm_storeu_si128((__m128i *)(out + DOT_AT(j, 16, FMT)), q[1]);
#else
    int8_t q[BLOCK] = {0};
    if (j < K / BLOCK) {
        for (int i = 0; i < BLOCK; ++i) amax = fmaxf(amax, fabsf(x[j * BLOCK + i]));
        const float inv = amax > 0.f ? 127.f / amax : 0.f;
        for (int i = 0; i < BLOCK; ++i) {
            q[i] = (int8_t)lrintf(x[j * BLOCK + i] * inv);
            sum += q[i];
        }
    }
    for (int i = 0; i < BLOCK; ++i) out[DOT_AT(j, i, FMT)] = q[i];
#endif
    s[j] = amax / 127.f;
    sums[j] = s[j] * (float)sum * DOT_SUM(FMT);
}

/* The B rows of x [B, K] into rows of int8 activations (dot_row_bytes(K) apart), the blocks shared
 * out over the threads (inside a parallel region), or with `own` (act this thread's alone) all
 * rounded by this thread, no barrier */
static inline __attribute__((always_inline)) void quantize_dot_rows(const float *x, int64_t B, int64_t K, int8_t *act,
                                                                    int own, const int FMT)
{
    const int64_t P = dot_blocks(K), stride = dot_row_bytes(K);
    if (own) {
        for (int64_t b = 0; b < B; ++b)
            for (int64_t j = 0; j < P; ++j) quantize_dot_block(x + b * K, K, j, act + b * stride, FMT);
        return;
    }
#pragma omp for schedule(static) collapse(2)
    for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < P; ++j) quantize_dot_block(x + b * K, K, j, act + b * stride, FMT);
}

#ifdef DOT512
/* n <= 16 scales (or minimums) from j on as 16 floats, zeros past them */
static inline __attribute__((always_inline)) __m512 scales16(const void *s, int64_t j, __mmask16 n, const int FMT)
{
    if (FMT == Q_INT4_F32) return _mm512_maskz_loadu_ps(n, (const float *)s + j);
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(n, (const uint16_t *)s + j));
}

/* FT output features (rows row_bytes apart) for BT rows of int8 activations (dot_row_bytes apart):
 * per (row, feature) one 16-float sum, added up across the steps, then across its lanes. The scales
 * are read 16 blocks at a time and spread over a step's lanes (8 a block for int8, 4 for int4) by a
 * permutation; the minimums' terms (int8: the offset's) are added once a block, unspread. */
static inline __attribute__((always_inline)) void dot_tile(const int8_t *restrict act, int64_t K,
                                                           const uint8_t *restrict q, int64_t row_bytes,
                                                           const void *restrict scales, const void *restrict mins,
                                                           const float *bias, float *restrict y, int64_t N,
                                                           const int BT, const int FT, const int FMT)
{
    const int G = FMT == Q_INT8 ? 2 : 4; /* blocks a step: 64 bytes of weights */
    const int64_t blocks = K / BLOCK, P = dot_blocks(K), stride = dot_row_bytes(K);
    const int64_t step = FT * row_bytes / blocks; /* the FT rows' bytes a block */
    const __m512i first = FMT == Q_INT8 ? _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
                                        : _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i low = _mm512_set1_epi8(0xf);
    __m512 acc[TILE][FEATURES];
    for (int b = 0; b < BT; ++b)
        for (int f = 0; f < FT; ++f) acc[b][f] = _mm512_setzero_ps();
    for (int64_t j0 = 0; j0 < blocks; j0 += 16) {
        const int64_t c = blocks - j0 < 16 ? blocks - j0 : 16; /* blocks in this run of 16 */
        const __mmask16 run = (__mmask16)((1u << c) - 1);
        __m512 s[TILE], d[FEATURES];
        for (int b = 0; b < BT; ++b) {
            const float *sb = (const float *)(act + b * stride + P * BLOCK);
            s[b] = _mm512_maskz_loadu_ps(run, sb + j0);
        }
        for (int f = 0; f < FT; ++f) {
            d[f] = scales16(scales_from(scales, f * blocks, FMT), j0, run, FMT);
            const __m512 m = FMT == Q_INT8 ? d[f] : scales16(scales_from(mins, f * blocks, FMT), j0, run, FMT);
            for (int b = 0; b < BT; ++b) {
                const float *sums = (const float *)(act + b * stride + P * BLOCK) + P;
                acc[b][f] = _mm512_fmadd_ps(m, _mm512_maskz_loadu_ps(run, sums + j0), acc[b][f]);
            }
            if (BT == 1) d[f] = _mm512_mul_ps(d[f], s[0]); /* one row: its scales and the weights' multiplied once */
        }
        for (int64_t j = j0; j < j0 + c; j += G) {
            const int64_t n = j0 + c - j < G ? j0 + c - j : G;
            for (int64_t line = 0; line < G * step; line += 64) __builtin_prefetch(q + j * step + line + QPREFETCH);
            const __m512i lanes = _mm512_add_epi32(first, _mm512_set1_epi32((int)(j - j0)));
            __m512 sl[TILE];
            for (int b = 0; b < BT && BT > 1; ++b) sl[b] = _mm512_permutexvar_ps(lanes, s[b]);
            const __mmask64 bytes = n == G ? ~0ull : (1ull << (n * 64 / G)) - 1;
            for (int f = 0; f < FT; ++f) {
                const __m512i v = _mm512_maskz_loadu_epi8(bytes, q + f * row_bytes + j * 64 / G);
                const __m512 dl = _mm512_permutexvar_ps(lanes, d[f]);
                const __m512i w0 = FMT == Q_INT8 ? _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80)) : _mm512_and_si512(v, low);
                const __m512i w1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                for (int b = 0; b < BT; ++b) {
                    const int8_t *a = act + b * stride + j * BLOCK;
                    __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, _mm512_loadu_si512(a));
                    if (FMT != Q_INT8) dot = _mm512_dpbusd_epi32(dot, w1, _mm512_loadu_si512(a + 64));
                    const __m512 sums = _mm512_cvtepi32_ps(dot);
                    acc[b][f] = _mm512_fmadd_ps(BT == 1 ? sums : _mm512_mul_ps(sums, sl[b]), dl, acc[b][f]);
                }
            }
        }
    }
    for (int b = 0; b < BT; ++b)
        for (int f = 0; f < FT; ++f) {
            const float sum = _mm512_reduce_add_ps(acc[b][f]);
            y[b * N + f] = bias ? sum + bias[f] : sum;
        }
}

/* From DOT_PANEL_FROM rows: DOT_PANEL output features at a time, their weights first repacked on the
 * stack (16 rows' bytes loaded and transposed: dot_panel_rows16) four k to a 32-bit lane, the
 * features side by side ([K/4][16] lanes: int8 + 128, int4's 0..15), their scales and minimums
 * [blocks][16] floats; then per row a block's 8 vpdpbusd sum
 * 16 features' products over its 32 k in one register (the row's 4 activations a step broadcast),
 * scaled once a block: a block's weights are read once for DOT_ROWS rows. */
#define DOT_PANEL 16
#define DOT_ROWS 12 /* rows a panel tile: their int32 and float sums, 24 of the 32 registers */
#define DOT_PANEL_FROM 16 /* rows from which the repacking pays (below it, dot_tiles) */

/* 16 bytes from byte `at` of each of the 16 features' rows (zeros past cols), transposed: out[t]'s
 * lane f holds bytes 4t..4t+3 of feature f's. Feature 4l + g is loaded into lane l of z[g], so that
 * the in-lane 4 x 4 transpose of 32-bit values leaves the features in order. */
static inline __attribute__((always_inline)) void dot_panel_rows16(const uint8_t *q, int64_t row_bytes, int64_t at,
                                                                   int64_t cols, __m512i out[4])
{
    __m512i z[4];
    for (int g = 0; g < 4; ++g) {
        __m128i lane[4];
        for (int l = 0; l < 4; ++l)
            lane[l] = 4 * l + g < cols ? _mm_loadu_si128((const __m128i *)(q + (4 * l + g) * row_bytes + at))
                                       : _mm_setzero_si128();
        z[g] = _mm512_inserti32x4(_mm512_inserti32x4(_mm512_inserti32x4(_mm512_castsi128_si512(lane[0]), lane[1], 1),
                                                     lane[2], 2), lane[3], 3);
    }
    const __m512i a = _mm512_unpacklo_epi32(z[0], z[1]), b = _mm512_unpackhi_epi32(z[0], z[1]);
    const __m512i c = _mm512_unpacklo_epi32(z[2], z[3]), d = _mm512_unpackhi_epi32(z[2], z[3]);
    out[0] = _mm512_unpacklo_epi64(a, c);
    out[1] = _mm512_unpackhi_epi64(a, c);
    out[2] = _mm512_unpacklo_epi64(b, d);
    out[3] = _mm512_unpackhi_epi64(b, d);
}

static inline __attribute__((always_inline)) void dot_panel_pack(const uint8_t *q, int64_t row_bytes,
                                                                 const void *scales, const void *mins, int64_t blocks,
                                                                 int64_t cols, uint32_t *restrict wp,
                                                                 float *restrict dp, float *restrict mp, const int FMT)
{
    /* a feature's four bytes at a time, side by side across the 16 features (rows past cols: zeros) */
    const __mmask16 real = (__mmask16)((1u << cols) - 1);
    const __m512i low = _mm512_set1_epi8(0xf);
    for (int64_t j = 0; j < blocks; ++j) {
        uint32_t *out = wp + j * (BLOCK / 4) * DOT_PANEL;
        __m512i v[4];
        if (FMT == Q_INT8)
            for (int h = 0; h < 2; ++h) { /* bytes 16h.. of the block: weights 16h.. */
                dot_panel_rows16(q, row_bytes, j * BLOCK + 16 * h, cols, v);
                for (int t = 0; t < 4; ++t)
                    _mm512_storeu_si512(out + (4 * h + t) * DOT_PANEL, _mm512_maskz_xor_epi32(real, v[t], _mm512_set1_epi8((char)0x80)));
            }
        else {
            dot_panel_rows16(q, row_bytes, j * BLOCK / 2, cols, v);
            for (int t = 0; t < 4; ++t) { /* bytes 4t..4t+3: weights 4t.. (low nibbles) and 16 + 4t.. (high) */
                _mm512_storeu_si512(out + t * DOT_PANEL, _mm512_and_si512(v[t], low));
                _mm512_storeu_si512(out + (t + 4) * DOT_PANEL, _mm512_and_si512(_mm512_srli_epi16(v[t], 4), low));
            }
        }
    }
    /* the scales and minimums [blocks][16] (int8: the scale again as the minimum's): float32 ones
     * copied in place; float16 ones copied as they are stored, then widened 16 at a time */
    uint16_t half[FMT == Q_INT4_F32 ? 1 : 2 * blocks * DOT_PANEL];
    for (int64_t f = 0; f < DOT_PANEL; ++f)
        for (int64_t j = 0; j < blocks; ++j)
            for (int k = 0; k < 2; ++k) { /* k = 0: scale, 1: minimum */
                const void *run = k && FMT != Q_INT8 ? mins : scales;
                if (FMT == Q_INT4_F32)
                    (k ? mp : dp)[j * DOT_PANEL + f] = f < cols ? ((const float *)run)[f * blocks + j] : 0.f;
                else
                    half[(k * blocks + j) * DOT_PANEL + f] = f < cols ? ((const uint16_t *)run)[f * blocks + j] : 0;
            }
    for (int64_t i = 0; FMT != Q_INT4_F32 && i < 2 * blocks; ++i)
        _mm512_storeu_ps(i < blocks ? dp + i * DOT_PANEL : mp + (i - blocks) * DOT_PANEL,
                         _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(half + i * DOT_PANEL))));
}

static inline __attribute__((always_inline)) void dot_panel_tile(const int8_t *restrict act, int64_t K,
                                                                 const uint32_t *restrict wp, const float *restrict dp,
                                                                 const float *restrict mp, const float *bias,
                                                                 int64_t cols, float *restrict y, int64_t N,
                                                                 const int BT, const int FMT)
{
    const int64_t blocks = K / BLOCK, P = dot_blocks(K), stride = dot_row_bytes(K);
    __m512 acc[DOT_ROWS];
    for (int b = 0; b < BT; ++b) acc[b] = _mm512_setzero_ps();
    for (int64_t j = 0; j < blocks; ++j) {
        __m512i sums[DOT_ROWS];
        for (int b = 0; b < BT; ++b) sums[b] = _mm512_setzero_si512();
        for (int t = 0; t < BLOCK / 4; ++t) {
            const __m512i w = _mm512_loadu_si512(wp + (j * (BLOCK / 4) + t) * DOT_PANEL);
            const int64_t at = DOT_AT(j, 4 * t, FMT); /* the row's 4 activations these 4 k meet */
            for (int b = 0; b < BT; ++b) {
                int32_t four;
                memcpy(&four, act + b * stride + at, 4);
                sums[b] = _mm512_dpbusd_epi32(sums[b], w, _mm512_set1_epi32(four));
            }
        }
        const __m512 d = _mm512_loadu_ps(dp + j * DOT_PANEL), m = _mm512_loadu_ps(mp + j * DOT_PANEL);
        for (int b = 0; b < BT; ++b) {
            const float *sb = (const float *)(act + b * stride + P * BLOCK);
            const __m512 scaled = _mm512_mul_ps(d, _mm512_set1_ps(sb[j]));
            acc[b] = _mm512_fmadd_ps(m, _mm512_set1_ps(sb[P + j]), _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[b]), scaled, acc[b]));
        }
    }
    for (int b = 0; b < BT; ++b)
        for (int64_t f = 0; f < cols; ++f) y[b * N + f] = bias ? acc[b][f] + bias[f] : acc[b][f];
}

static inline __attribute__((always_inline)) void dot_panel(const int8_t *act, int64_t B, int64_t K, const uint8_t *q,
                                                            int64_t row_bytes, const void *scales, const void *mins,
                                                            const float *bias, float *y, int64_t N, int64_t cols,
                                                            const int FMT)
{
    const int64_t blocks = K / BLOCK, stride = dot_row_bytes(K);
    uint32_t wp[K / 4 * DOT_PANEL];
    float dp[blocks * DOT_PANEL], mp[blocks * DOT_PANEL];
    dot_panel_pack(q, row_bytes, scales, mins, blocks, cols, wp, dp, mp, FMT);
    int64_t b0 = 0;
    for (; b0 + DOT_ROWS <= B; b0 += DOT_ROWS)
        dot_panel_tile(act + b0 * stride, K, wp, dp, mp, bias, cols, y + b0 * N, N, DOT_ROWS, FMT);
    switch (B - b0) { /* the rest, with the row count known to the compiler */
#define REST(r) case r: dot_panel_tile(act + b0 * stride, K, wp, dp, mp, bias, cols, y + b0 * N, N, r, FMT); break;
        REST(1) REST(2) REST(3) REST(4) REST(5) REST(6) REST(7) REST(8) REST(9) REST(10) REST(11)
#undef REST
    }
}

static inline __attribute__((always_inline)) void dot_tiles(const int8_t *act, int64_t B, int64_t K, const uint8_t *q,
                                                            int64_t row_bytes, const void *scales, const void *mins,
                                                            const float *bias, float *y, int64_t N, const int FT,
                                                            const int FMT)
{
    const int64_t stride = dot_row_bytes(K);
    int64_t b0 = 0;
    for (; b0 + TILE <= B; b0 += TILE)
        dot_tile(act + b0 * stride, K, q, row_bytes, scales, mins, bias, y + b0 * N, N, TILE, FT, FMT);
    switch (B - b0) { /* the rest, with the row count known to the compiler */
#define REST(r) case r: dot_tile(act + b0 * stride, K, q, row_bytes, scales, mins, bias, y + b0 * N, N, r, FT, FMT); break;
        REST(1) REST(2) REST(3)
#undef REST
    }
}
#else
#if defined(__AVX2__) && defined(__F16C__)
/* 8 int32 lanes summing a block's 32 products of weights w (int8, or int4's 0..15) and activations a */
static inline __attribute__((always_inline)) __m256i dot_block(__m256i w, __m256i a, const int FMT)
{
    if (FMT == Q_INT8) { /* vpdpbusd and vpmaddubsw take unsigned bytes times signed ones: |w| and a with w's sign */
        a = _mm256_sign_epi8(a, w);
        w = _mm256_sign_epi8(w, w);
    }
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, a);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1));
#endif
}
#endif

/* One output feature for BT rows of int8 activations, a block at a time */
static inline __attribute__((always_inline)) void row_dot(const int8_t *restrict act, int64_t K,
                                                          const uint8_t *restrict q, const void *restrict scales,
                                                          const void *restrict mins, const float *bias,
                                                          float *restrict y, int64_t N, const int BT, const int FMT)
{
    const int64_t P = dot_blocks(K), stride = dot_row_bytes(K);
    float minimums[ROWS];
#if defined(__AVX2__) && defined(__F16C__)
    __m256 acc[ROWS];
    for (int b = 0; b < BT; ++b) acc[b] = _mm256_setzero_ps(), minimums[b] = 0.f;
#else
    float acc[ROWS];
    for (int b = 0; b < BT; ++b) acc[b] = minimums[b] = 0.f;
#endif
    for (int64_t j = 0; j < K / BLOCK; ++j) {
        const float d = scale_at(scales, j, FMT), m = FMT != Q_INT8 ? scale_at(mins, j, FMT) : 0.f;
#if defined(__AVX2__) && defined(__F16C__)
        __m256i w;
        if (FMT == Q_INT8)
            w = _mm256_loadu_si256((const __m256i *)(q + j * BLOCK));
        else {
            const __m128i bytes = _mm_loadu_si128((const __m128i *)(q + j * BLOCK / 2)), low = _mm_set1_epi8(0xf);
            w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), low), _mm_and_si128(bytes, low));
        }
#endif
        for (int b = 0; b < BT; ++b) {
            const int8_t *a = act + b * stride;
            const float *s = (const float *)(a + P * BLOCK);
#if defined(__AVX2__) && defined(__F16C__)
            const __m256i dot = dot_block(w, _mm256_loadu_si256((const __m256i *)(a + j * BLOCK)), FMT);
            acc[b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d * s[j]), acc[b]);
#else
            int32_t dot = 0;
            for (int i = 0; i < BLOCK; ++i) {
                const uint8_t byte = q[j * BLOCK / (FMT == Q_INT8 ? 1 : 2) + (FMT == Q_INT8 ? i : i % 16)];
                const int w = FMT == Q_INT8 ? (int8_t)byte : i < 16 ? byte & 0xf : byte >> 4;
                dot += w * a[j * BLOCK + i];
            }
            acc[b] += (float)dot * (d * s[j]);
#endif
            minimums[b] += m * s[P + j];
        }
    }
    for (int b = 0; b < BT; ++b) {
#if defined(__AVX2__) && defined(__F16C__)
        const float sum = lanes_sum((v8)acc[b], NULL) + minimums[b];
#else
        const float sum = acc[b] + minimums[b];
#endif
        y[b * N] = bias ? sum + *bias : sum;
    }
}
#endif

/* Output features a call of features_dot takes for B rows (the callers share out groups of it) */
static inline int64_t dot_features(int64_t B)
{
#ifdef DOT512
    return B >= DOT_PANEL_FROM ? DOT_PANEL : FEATURES;
#else
    (void)B;
    return FEATURES;
#endif
}

/* features() for rows of int8 activations `act` (quantize_dot_rows', dot_row_bytes(K) apart), count
 * <= dot_features(B) output features */
static inline __attribute__((always_inline)) void features_dot(const int8_t *act, int64_t B, int64_t K,
                                                               const uint8_t *q, int64_t row_bytes, const void *scales,
                                                               const void *mins, const float *bias, float *y,
                                                               int64_t N, int64_t count, const int FMT)
{
#ifdef DOT512
    if (B >= DOT_PANEL_FROM) {
        dot_panel(act, B, K, q, row_bytes, scales, mins, bias, y, N, count, FMT);
        return;
    }
    if (count == FEATURES) {
        dot_tiles(act, B, K, q, row_bytes, scales, mins, bias, y, N, FEATURES, FMT);
        return;
    }
#endif
    const int64_t blocks = K / BLOCK, stride = dot_row_bytes(K);
    for (int64_t f = 0; f < count; ++f) {
        const uint8_t *qf = q + f * row_bytes;
        const void *sf = scales_from(scales, f * blocks, FMT);
        const void *mf = FMT != Q_INT8 ? scales_from(mins, f * blocks, FMT) : 0;
        const float *bf = bias ? bias + f : 0;
#ifdef DOT512
        dot_tiles(act, B, K, qf, row_bytes, sf, mf, bf, y + f, N, 1, FMT);
#else
        int64_t b0 = 0;
        for (; b0 + ROWS <= B; b0 += ROWS) row_dot(act + b0 * stride, K, qf, sf, mf, bf, y + f + b0 * N, N, ROWS, FMT);
        switch (B - b0) {
#define REST(r) case r: row_dot(act + b0 * stride, K, qf, sf, mf, bf, y + f + b0 * N, N, r, FMT); break;
            REST(1) REST(2) REST(3) REST(4) REST(5) REST(6) REST(7)
#undef REST
        }
#endif
    }
}

#endif
