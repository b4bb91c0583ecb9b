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
 * `feature_int8_dot` is the int8 x int8 variant (quantization.activations=int8): each input row is
 * quantized to int8 with one scale (`quantize_row`), a block's 32 products are summed exactly in
 * int32, then scaled by the weight's and the row's scales in float32. It changes the numerics (the
 * activations are rounded to 8 bits), so it is a separate option, never the default. The int32
 * sums come from VNNI's vpdpbusd where the CPU has AVX512_VNNI (with AVX512VL) or AVX-VNNI, from
 * AVX2's vpmaddubsw + vpmaddwd elsewhere (no overflow: |q|, |x| <= 127, so a pair sums to at most
 * 2 * 128 * 127 < 2^15), and from portable C without AVX2: the same integers in every build.
 *
 * Vector code: AVX-512 widens a block's bytes 16 at a time into two 16-float vectors; else AVX2 +
 * F16C intrinsics, 8 at a time (GCC 12's __builtin_convertvector widens bytes one at a time);
 * portable C elsewhere. */
#ifndef NVLLM_QUANTIZED_H
#define NVLLM_QUANTIZED_H
#include "widen.h"

#include <math.h>
#include <stdint.h>
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

/* -- int8 weights x int8 activations ------------------------------------------------------------------- */

/* The int32 dot products a block of 32 int8 weights makes with a row's 32 int8 activations */
#if defined(__AVX512VNNI__) && defined(__AVX512VL__) || defined(__AVXVNNI__)
#define INT8_DOT_ISA "vnni"
#elif defined(__AVX2__)
#define INT8_DOT_ISA "avx2"
#else
#define INT8_DOT_ISA "portable"
#endif
#if defined(__AVX2__)
typedef __m256i i8x32;
static inline __attribute__((always_inline)) i8x32 load_i8x32(const int8_t *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}
/* 8 int32 lanes summing the 32 products w[i] * a[i]; vpdpbusd and vpmaddubsw multiply unsigned
 * bytes by signed ones, so |w| goes in the unsigned operand and w's sign onto a */
static inline __attribute__((always_inline)) __m256i dot_block(i8x32 w, i8x32 a)
{
    const __m256i uw = _mm256_sign_epi8(w, w), sa = _mm256_sign_epi8(a, w);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), uw, sa);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), uw, sa);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(uw, sa), _mm256_set1_epi16(1));
#endif
}
#endif

/* One output feature for BT input rows of int8 activations xq (row scales sx): per row, a block's
 * int32 sums times the block's scale into 8 float lanes, added up across the blocks, then across
 * the lanes and times the row's scale. */
static inline __attribute__((always_inline)) void row_int8_dot(const int8_t *restrict xq, const float *restrict sx,
                                                               int64_t K, const int8_t *restrict q,
                                                               const uint16_t *restrict scales, const float *bias,
                                                               float *restrict y, int64_t N, const int BT)
{
#if defined(__AVX2__)
    __m256 acc[ROWS];
    for (int b = 0; b < BT; ++b) acc[b] = _mm256_setzero_ps();
    for (int64_t j = 0; j < K / BLOCK; ++j) {
        const i8x32 w = load_i8x32(q + j * BLOCK);
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(scales[j]));
        for (int b = 0; b < BT; ++b)
            acc[b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_block(w, load_i8x32(xq + b * K + j * BLOCK))), d, acc[b]);
    }
    for (int b = 0; b < BT; ++b) {
        const float s = lanes_sum((v8)acc[b], NULL) * sx[b];
        y[b * N] = bias ? s + *bias : s;
    }
#else
    float acc[ROWS];
    for (int b = 0; b < BT; ++b) acc[b] = 0.f;
    for (int64_t j = 0; j < K / BLOCK; ++j) {
        const float d = f16_to_float(scales[j]);
        for (int b = 0; b < BT; ++b) {
            int32_t s = 0;
            for (int i = 0; i < BLOCK; ++i) s += (int32_t)q[j * BLOCK + i] * xq[b * K + j * BLOCK + i];
            acc[b] += (float)s * d;
        }
    }
    for (int b = 0; b < BT; ++b) y[b * N] = bias ? acc[b] * sx[b] + *bias : acc[b] * sx[b];
#endif
}

/* feature() for int8 weights and the int8 rows xq [B, K] with their scales sx [B] */
static inline void feature_int8_dot(const int8_t *xq, const float *sx, int64_t B, int64_t K, const int8_t *q,
                                    const uint16_t *scales, const float *bias, float *y, int64_t N)
{
    int64_t b0 = 0;
    for (; b0 + ROWS <= B; b0 += ROWS) row_int8_dot(xq + b0 * K, sx + b0, K, q, scales, bias, y + b0 * N, N, ROWS);
    switch (B - b0) {
#define REST(r) case r: row_int8_dot(xq + b0 * K, sx + b0, K, q, scales, bias, y + b0 * N, N, r); break;
        REST(1) REST(2) REST(3) REST(4) REST(5) REST(6) REST(7)
#undef REST
    }
}

/* One row of activations as int8 with one scale: s = max |x| / 127, q = round(x / s) in [-127, 127]
 * (s = 0 and q = 0 for a row of zeros). */
static inline void quantize_row(const float *x, int64_t K, int8_t *q, float *s)
{
    float amax = 0.f;
    for (int64_t k = 0; k < K; ++k) amax = fmaxf(amax, fabsf(x[k]));
    *s = amax / 127.f;
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    for (int64_t k = 0; k < K; ++k) q[k] = (int8_t)lrintf(x[k] * inv);
}

#endif
