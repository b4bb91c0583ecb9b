/* Matmuls over weights quantized in blocks of 32 along k (int8; int4, float16 or float32 scales: the
 * layouts and the arithmetic are quantized.h's, which forward=fused_cpu's step shares):
 * y [B, N] = x [B, K] w^T, float32 activations and sums, equal to x times the dequantized float32
 * weights up to the order of the sums. The threads share out the output features.
 *
 * Compiled on first use by nvllm/kernels/__init__.py (-march=native) and called through ctypes
 * (nvllm/kernels/quantized.py). */
#include "quantized.h"

#include <stdlib.h>

static void matmul(const float *x, int64_t B, int64_t K, const uint8_t *q, const void *scales, const void *mins,
                   int64_t N, float *y, int num_threads, const int FMT)
{
    const int64_t row_bytes = FMT == Q_INT8 ? K : K / 2, blocks = K / BLOCK;
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t n = 0; n < N; n += FEATURES) {
        const uint8_t *qn = q + n * row_bytes;
        const int64_t count = N - n < FEATURES ? N - n : FEATURES;
        /* each layout's call with its format a constant, so that its code is compiled for it alone */
        if (FMT == Q_INT8)
            features(x, B, K, qn, row_bytes, scales_from(scales, n * blocks, Q_INT8), 0, 0, y + n, N, count, Q_INT8);
        else if (FMT == Q_INT4)
            features(x, B, K, qn, row_bytes, scales_from(scales, n * blocks, Q_INT4),
                     scales_from(mins, n * blocks, Q_INT4), 0, y + n, N, count, Q_INT4);
        else
            features(x, B, K, qn, row_bytes, scales_from(scales, n * blocks, Q_INT4_F32),
                     scales_from(mins, n * blocks, Q_INT4_F32), 0, y + n, N, count, Q_INT4_F32);
    }
}

/* y [B, N] = x [B, K] (qweight, scales)^T; K a multiple of 32 (the caller checks). */
void nvllm_linear_int8(const float *x, int64_t B, int64_t K, const int8_t *qweight, const uint16_t *scales,
                       int64_t N, float *y, int num_threads)
{
    matmul(x, B, K, (const uint8_t *)qweight, scales, 0, N, y, num_threads, Q_INT8);
}

/* y [B, N] = x [B, K] (qweight, scales, mins)^T; K a multiple of 32 (the caller checks). */
void nvllm_linear_int4(const float *x, int64_t B, int64_t K, const uint8_t *qweight, const uint16_t *scales,
                       const uint16_t *mins, int64_t N, float *y, int num_threads)
{
    matmul(x, B, K, qweight, scales, mins, N, y, num_threads, Q_INT4);
}

/* nvllm_linear_int4 with float32 scales and mins (GGUF Q4_K's sub-blocks) */
void nvllm_linear_int4_f32(const float *x, int64_t B, int64_t K, const uint8_t *qweight, const float *scales,
                           const float *mins, int64_t N, float *y, int num_threads)
{
    matmul(x, B, K, qweight, scales, mins, N, y, num_threads, Q_INT4_F32);
}

static int matmul_dot(const float *x, int64_t B, int64_t K, const uint8_t *q, const void *scales, const void *mins,
                      int64_t N, float *y, int num_threads, const int FMT)
{
    const int64_t row_bytes = FMT == Q_INT8 ? K : K / 2, blocks = K / BLOCK;
    int8_t *act = malloc((size_t)(B * dot_row_bytes(K)));
    if (!act) return -1;
#pragma omp parallel num_threads(num_threads)
    {
        quantize_dot_rows(x, B, K, act, 0, FMT);
        const int64_t group = dot_features(B);
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n += group)
            features_dot(act, B, K, q + n * row_bytes, row_bytes, scales_from(scales, n * blocks, FMT),
                         FMT != Q_INT8 ? scales_from(mins, n * blocks, FMT) : 0, 0, y + n, N,
                         N - n < group ? N - n : group, FMT);
    }
    free(act);
    return 0;
}

/* The three matmuls above with each block of 32 of x's rows rounded to int8 first (quantize_dot_rows):
 * int8 activations, quantization.activations=int8's arithmetic (fmt: 0 int8, 1 int4, 2 int4 with
 * float32 scales). Returns -1 when its scratch could not be allocated, else 0. */
int nvllm_linear_dot(const float *x, int64_t B, int64_t K, const uint8_t *q, const void *scales, const void *mins,
                     int64_t N, float *y, int num_threads, int fmt)
{
    if (fmt == Q_INT8) return matmul_dot(x, B, K, q, scales, mins, N, y, num_threads, Q_INT8);
    if (fmt == Q_INT4) return matmul_dot(x, B, K, q, scales, mins, N, y, num_threads, Q_INT4);
    return matmul_dot(x, B, K, q, scales, mins, N, y, num_threads, Q_INT4_F32);
}

/* The bytes a row of int8 activations takes (cpu_step.c's scratch holds one per row) */
int64_t nvllm_dot_row_bytes(int64_t K) { return dot_row_bytes(K); }

/* Where the int8 dot products' int32 sums come from in this build: vnni, avx2 or portable */
const char *nvllm_int8_dot_isa(void) { return INT8_DOT_ISA; }
