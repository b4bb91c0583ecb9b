/* Matmuls that read weights quantized in blocks of 32 along k, in the layout the quantized loaders
 * produce (row-major, one row per output feature), and dequantize them in registers:
 *
 *   int8 (GGUF Q8_0's arithmetic)  qweight int8 [N, K], scales float16 [N, K/32]
 *                                  w[n, k] = q[n, k] * d[n, k/32]
 *   int4 (GGUF Q4_1's, and Q4_0's  qweight uint8 [N, K/2], scales and mins float16 [N, K/32]; in each
 *         with m = -8 d)           block's 16 bytes, byte i holds weight i (low nibble) and i + 16 (high)
 *                                  w[n, k] = q * d + m, q in 0..15
 *
 * y [B, N] = x [B, K] w^T, float32 activations and sums: each block's 32 weights are widened to
 * float32 (q * d is exact in float32: at most 8 + 11 significant bits; int4's + m rounds once, as
 * the dequantized float32 weight does) and multiplied into 8-float sums per input row, which are
 * added up across the row's blocks and then across their lanes. So y equals x times the
 * dequantized float32 weights up to the order of the sums. The threads share out the output
 * features; each block of weights is dequantized once for up to ROWS input rows.
 *
 * Compiled on first use by nvllm/kernels/__init__.py (-march=native): AVX2 + F16C intrinsics widen
 * the bytes and scales (GCC 12's __builtin_convertvector widens bytes one at a time), on AVX-512
 * CPUs too; portable C elsewhere. Called through ctypes (nvllm/kernels/quantized.py). */
#include "widen.h"

#include <stdint.h>
#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#endif

typedef float v8 __attribute__((vector_size(32), aligned(4)));

#define BLOCK 32
#define ROWS 8 /* input rows whose sums stay in registers while a block's weights are reused */

/* Block j's 32 weights as four 8-float vectors: w[0..3] = weights 0-7, 8-15, 16-23, 24-31 */
static inline __attribute__((always_inline)) void dequantize(const uint8_t *q, const uint16_t *scales,
                                                             const uint16_t *mins, int64_t j, v8 w[4], const int INT4)
{
#if defined(__AVX2__) && defined(__F16C__)
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(scales[j]));
    const __m256 m = _mm256_set1_ps(INT4 ? _cvtsh_ss(mins[j]) : 0.f);
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
    const float d = f16_to_float(scales[j]), m = INT4 ? f16_to_float(mins[j]) : 0.f;
    for (int i = 0; i < BLOCK; ++i) {
        const uint8_t byte = INT4 ? q[j * BLOCK / 2 + i % 16] : 0;
        w[i / 8][i % 8] = INT4 ? (float)(i < 16 ? byte & 0xf : byte >> 4) * d + m : (float)(int8_t)q[j * BLOCK + i] * d;
    }
#endif
}

/* One output feature for BT input rows: two 8-float sums a row, added up across the blocks, then
 * across their lanes. */
static inline __attribute__((always_inline)) void row(const float *restrict x, int64_t K, const uint8_t *restrict q,
                                                      const uint16_t *restrict scales, const uint16_t *restrict mins,
                                                      float *restrict y, int64_t N, const int BT, const int INT4)
{
    v8 acc[ROWS][2];
    for (int b = 0; b < BT; ++b) acc[b][0] = acc[b][1] = (v8){0};
    for (int64_t j = 0; j < K / BLOCK; ++j) {
        v8 w[4];
        dequantize(q, scales, mins, j, w, INT4);
        for (int b = 0; b < BT; ++b) {
            const float *xb = x + b * K + j * BLOCK;
            acc[b][0] += w[0] * *(const v8 *)xb + w[2] * *(const v8 *)(xb + 16);
            acc[b][1] += w[1] * *(const v8 *)(xb + 8) + w[3] * *(const v8 *)(xb + 24);
        }
    }
    for (int b = 0; b < BT; ++b) {
        const v8 a = acc[b][0] + acc[b][1];
        float s = 0.f;
        for (int i = 0; i < 8; ++i) s += a[i];
        y[b * N] = s;
    }
}

static void matmul(const float *x, int64_t B, int64_t K, const uint8_t *q, const uint16_t *scales,
                   const uint16_t *mins, int64_t N, float *y, int num_threads, const int INT4)
{
    const int64_t row_bytes = INT4 ? K / 2 : K, blocks = K / BLOCK;
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t n = 0; n < N; ++n) {
        const uint8_t *qn = q + n * row_bytes;
        const uint16_t *sn = scales + n * blocks, *mn = INT4 ? mins + n * blocks : 0;
        int64_t b0 = 0;
        for (; b0 + ROWS <= B; b0 += ROWS) row(x + b0 * K, K, qn, sn, mn, y + b0 * N + n, N, ROWS, INT4);
        switch (B - b0) { /* the rest, with the row count known to the compiler */
#define REST(r) case r: row(x + b0 * K, K, qn, sn, mn, y + b0 * N + n, N, r, INT4); break;
            REST(1) REST(2) REST(3) REST(4) REST(5) REST(6) REST(7)
#undef REST
        }
    }
}

/* y [B, N] = x [B, K] (qweight, scales)^T; K a multiple of 32 (the caller checks). */
void nvllm_linear_int8(const float *x, int64_t B, int64_t K, const int8_t *qweight, const uint16_t *scales,
                       int64_t N, float *y, int num_threads)
{
    matmul(x, B, K, (const uint8_t *)qweight, scales, 0, N, y, num_threads, 0);
}

/* y [B, N] = x [B, K] (qweight, scales, mins)^T; K a multiple of 32 (the caller checks). */
void nvllm_linear_int4(const float *x, int64_t B, int64_t K, const uint8_t *qweight, const uint16_t *scales,
                       const uint16_t *mins, int64_t N, float *y, int num_threads)
{
    matmul(x, B, K, qweight, scales, mins, N, y, num_threads, 1);
}
