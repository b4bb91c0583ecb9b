/* A step's whole forward pass of a Llama-family decoder (SmolLM2, Llama 2/3, Qwen2/3) on a CPU,
 * float32 activations and sums, in a single call: embedding, every layer (RMSNorm, QKV, QK-norm, rotary, KV-cache store,
 * paged attention, O, RMSNorm, gate/up, SiLU, down) and the LM head. It computes what
 * nvllm/models/llama.py computes, operation for operation; only the order of the terms inside a matmul's
 * sums differs (here: k in order, for every output).
 *
 * Why it exists: at one to a few sequences a step through torch is mostly the dispatch of many tiny
 * operations, and small-batch matmuls through oneDNN or MKL do not stream the weights at the memory
 * bandwidth (the profile: experiments/results/2026-11-29-cpu-2core-epyc/). Here each packed weight
 * panel is read once per call for all of its rows, and one OpenMP parallel region covers the whole call.
 *
 * Compiled on first use by nvllm/kernels/__init__.py and called through ctypes by forward=fused_cpu
 * (nvllm/forward/fused_cpu.py). Its attention is attention=cpu's (paged_attention.h); a mixture of
 * experts' layer runs moe_step.h's MLP in place of the dense one. The cache is
 * the torch modules' [num_blocks, block_size, num_kv_heads, head_dim]; the matmul weights and the embedding
 * table are packed panels (see `linear_as`), which the torch modules hold in their float weights'
 * place. Profiling: built with -DSKIP_LINEAR it leaves the matmuls out.
 *
 * Weights (the packed panels of the matmuls and the embedding table) are float32, bfloat16 or float16
 * (Model.weights); norms, biases, rotary table and KV cache are always float32. A layer's matmul
 * weight may instead be quantized (Weight.format: quantization=int8, int4, gguf), read in its own
 * row-major layout by quantized.h's kernels, which dequantize it in registers (at many rows, a panel
 * at a time into float32 for `tile`: linear_rows); with those formats
 * the embedding table and the LM head are INT8 rows (one copy when tied). A 16-bit weight is
 * widened to float32 in registers as it is loaded (bfloat16: a 16-bit shift; float16: F16C's
 * vcvtph2ps), both exact, and multiplied and summed in float32: the arithmetic is the float32
 * step's on the 16-bit-rounded weights, at half the bytes streamed. bfloat16 panels may be held in
 * 12 bits a weight instead (BF16_12, `line12`): the same values bit for bit, unpacked in registers,
 * three quarters of the bytes. Which vector code runs is fixed
 * when the kernel is compiled for the CPU at hand (-march=native, nvllm/kernels/__init__.py):
 * AVX-512 where the CPU has it, else AVX2 + F16C, else portable scalar widening. */
#include "paged_attention.h"
#include "quantized.h"
#include "widen.h"

#include <string.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef float v16 __attribute__((vector_size(64), aligned(4)));

/* a weight's format: Model.weights (F32, BF16, F16), and a layer's Weight.format (any) */
enum {
    F32 = 0, BF16 = 1, F16 = 2, /* packed panels (`linear_as`) */
    INT8 = 3, INT4 = 4,         /* quantized.h's layout: qweight, scales (and int4's mins) */
    INT4_F32 = 6,               /* INT4's with float32 scales and mins (GGUF Q4_K's sub-blocks) */
    /* INT8, INT4, INT4_F32 multiplied by int8 activations (quantization.activations=int8: quantized.h) */
    INT8_DOT = 5, INT4_DOT = 7, INT4_F32_DOT = 8,
    BF16_12 = 9 /* bfloat16 panels stored in 12 bits a weight, losslessly (see `line12`) */
};

/* A layer's matmul weight: packed panels in a float format, or quantized rows */
typedef struct {
    const void *data; /* the panels, or the quantized rows (qweight) */
    /* one per 32 weights along k (quantized formats; mins: INT4, INT4_F32): float16, or INT4_F32's
     * float32 (read through quantized.h's scales_from and scale_at) */
    const uint16_t *scales, *mins;
    int64_t format;
    /* BF16_12: the k pairs stored whole (64 bytes each, in the order met) and, per panel, the index of
     * its first one there */
    const void *escapes;
    const int32_t *escape_start;
} Weight;

typedef struct {
    const float *input_norm;
    Weight qkv;
    const float *qkv_bias, *q_norm, *k_norm;
    Weight o;
    const float *o_bias, *post_norm;
    Weight gate_up;
    const float *gate_up_bias;
    Weight down;
    const float *down_bias;
    float *k_cache, *v_cache;
    const struct MoeLayer *moe; /* NULL: the dense MLP above; else a mixture of experts in its place (moe_step.h) */
} Layer;

typedef struct {
    int64_t hidden, num_heads, num_kv_heads, head_dim, intermediate, vocab, num_layers, block_size, weights;
    float eps, scale;
    Weight embed;         /* [vocab, hidden]: panels (tied: the LM head's), or INT8 rows (a packed format) */
    const float *norm;
    Weight lm_head;       /* panels, or INT8 rows (a tied head: the embedding's own) */
    const float *cos_sin; /* [max_position, head_dim]: cos | sin */
    const Layer *layers;
} Model;

/* The vector code this build runs (the start-up line and the tests read it). */
const char *nvllm_step_isa(void)
{
#if defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__) && defined(__F16C__)
    return "avx2";
#else
    return "portable";
#endif
}

/* One 16-bit weight as a float, exactly: the portable path, and the embedding's rows. */
static inline float widen1(const void *p, int64_t i, const int F)
{
    const uint16_t h = ((const uint16_t *)p)[i];
    return F == BF16 ? bf16_to_float(h) : f16_to_float(h);
}

/* The 16 (AVX-512) or 8 weights at p as floats. */
#ifdef __AVX512F__
static inline __attribute__((always_inline)) v16 load16(const void *p, const int F)
{
    if (F == F32) return *(const v16 *)p;
    const __m256i h = _mm256_loadu_si256((const __m256i *)p);
    if (F == BF16) return (v16)_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
    return (v16)_mm512_cvtph_ps(h);
}
#endif
static inline __attribute__((always_inline)) v8 load8(const void *p, const int F)
{
    if (F == F32) return *(const v8 *)p;
#if defined(__AVX2__) && defined(__F16C__)
    const __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (F == BF16) return (v8)_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
    return (v8)_mm256_cvtph_ps(h);
#else
    v8 w;
    for (int i = 0; i < 8; ++i) w[i] = widen1(p, i, F);
    return w;
#endif
}

/* 8 rows' bfloat16 weights at k (odd = k % 2) from the 8 lanes at p of a k pair (see below) */
static inline __attribute__((always_inline)) v8 pair8(const void *p, int odd)
{
#if defined(__AVX2__)
    const __m256i pair = _mm256_loadu_si256((const __m256i *)p);
    return (v8)(odd ? _mm256_and_si256(pair, _mm256_set1_epi32((int)0xffff0000u)) : _mm256_slli_epi32(pair, 16));
#else
    v8 w;
    for (int i = 0; i < 8; ++i) w[i] = widen1(p, 2 * i + odd, BF16);
    return w;
#endif
}

/* Weights are packed once (fused_cpu.py `pack`) into panels of 16 output rows laid out k-major:
 * panel p holds w[16p + j, k] at [p][k][j], zero rows past N; bfloat16 at [p][k / 2][j][k % 2] (K
 * even), so that a 32-bit lane holds a row's weights at k and k + 1 and widening each is one shift
 * or one mask. A panel is one contiguous stream, of 64 bytes a k in float32, 32 in a 16-bit format. */
#define PANEL 16
/* input rows per tile, each row's 16 sums in vector registers: with AVX-512, one 16-float register
 * a row, 12 rows (a verify step's 9 rows at k = 8 read each panel once; 16 gained nothing, 24 spill);
 * else two 8-float registers a row, 6 rows. The 16-float multiply-adds do twice the work of two
 * 8-float ones on a CPU with full-width AVX-512 units (Zen 5) and the same on one that splits them. */
#ifdef __AVX512F__
#define SEQS 12
#else
#define SEQS 6
#endif
/* How far ahead a tile asks for its panel: 16 KiB (256 k in float32, 512 in 16 bits). Without it, a tile of
 * several rows is busy with its multiply-adds while the hardware prefetcher falls behind, and a
 * step with a few rows a sequence (speculative verification) costs the weights' streaming time
 * plus the multiply-adds rather than the larger of the two (experiments/results/ says how much). */
#define PREFETCH 16384

/* BF16_12: a bfloat16 panel's k pairs (each 64 bytes: 16 lanes, the row's weight at k in a lane's low
 * half, at k + 1 in its high one) in 48 bytes each, without losing a bit (fused_cpu.py `code12`). A
 * bfloat16 is a high byte (sign, exponent's upper 7 bits) and a low byte (exponent's lowest bit, 7
 * mantissa bits); a pair's 32 high bytes mostly span a few exponents, so each is held as a nibble:
 * bit 3 its sign, bits 0-2 `e`: exponent bits 0 (a zero, or as small) where e is 0, else base - 1 + e,
 * over the pair's `base` (1-127, one byte a pair). A pair: its 32 low bytes (lane j's k at 2j, k + 1
 * at 2j + 1), then 16 nibble bytes (lane j's k in the low nibble, k + 1 in the high one). A panel: its
 * K / 2 pairs, then their K / 2 bases, padded to 64 bytes. A pair whose nonzero high bytes span more
 * than 7 values has the base ESCAPED and is read whole from the weight's `escapes`, in order. The
 * values are the plain panel's, bit for bit, so the sums are too. */
#define LINE12 48
#define ESCAPED 0xff

/* the bytes of one panel of K in format F (linear_as) */
static inline int64_t panel_bytes(int64_t K, const int F)
{
    if (F == BF16_12) return (K / 2 * (LINE12 + 1) + 63) / 64 * 64;
    return K * PANEL * (F == F32 ? 4 : 2);
}

/* BF16_12: a panel's bases (after its pairs), and panel p's first pair stored whole in w's escapes */
static inline const uint8_t *bases12(const void *panel, int64_t K) { return (const uint8_t *)panel + K / 2 * LINE12; }
static inline const char *escapes12(const Weight *w, int64_t p)
{
    return (const char *)w->escapes + 64 * (int64_t)w->escape_start[p];
}

/* One BF16_12 pair as the plain panel's 16 lanes (portable: the AVX2 and scalar code) */
static inline void unpack12(const uint8_t *pair, uint8_t base, const char **escapes, uint32_t lanes[16])
{
    if (base == ESCAPED) {
        memcpy(lanes, *escapes, 64);
        *escapes += 64;
        return;
    }
    for (int j = 0; j < 16; ++j) {
        const uint32_t n = pair[32 + j], lo = n & 15, hi = n >> 4;
        const uint32_t h0 = ((lo & 8) << 4) | (lo & 7 ? base - 1 + (lo & 7) : 0);
        const uint32_t h1 = ((hi & 8) << 4) | (hi & 7 ? base - 1 + (hi & 7) : 0);
        lanes[j] = h1 << 24 | (uint32_t)pair[2 * j + 1] << 16 | h0 << 8 | pair[2 * j];
    }
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI__)
#define VECTOR12 1
/* One BF16_12 pair as float32 vectors: w0 the 16 rows' weights at k, w1 at k + 1 */
static inline __attribute__((always_inline)) void line12(const char *pair, uint8_t base, const char **escapes,
                                                         __m512i idx0, __m512i idx1, v16 *w0, v16 *w1)
{
    if (__builtin_expect(base == ESCAPED, 0)) {
        const __m512i whole = _mm512_loadu_si512(*escapes);
        *escapes += 64;
        *w0 = (v16)_mm512_slli_epi32(whole, 16);
        *w1 = (v16)_mm512_and_si512(whole, _mm512_set1_epi32((int)0xffff0000u));
        return;
    }
    /* a nibble's high byte (pshufb's table): its bit 3 as the sign, and base - 1 + its bits 0-2 where
     * those are not 0 (nibbles 0 and 8: bytes 0 and 8 keep their 0; never a carry into the sign:
     * base - 1 + 7 is an exponent's upper bits, < 128). 128-bit work: the 16 nibble bytes alone. */
    const __m128i signs = _mm_set_epi32(0x87868584, 0x83828180, 0x07060504, 0x03020100);
    const __m128i high = _mm_mask_add_epi8(signs, 0xfefe, signs, _mm_set1_epi8((char)(base - 1)));
    const __m128i nibbles = _mm_loadu_si128((const __m128i *)(pair + 32)), low4 = _mm_set1_epi8(15);
    const __m128i h0 = _mm_shuffle_epi8(high, _mm_and_si128(nibbles, low4));
    const __m128i h1 = _mm_shuffle_epi8(high, _mm_and_si128(_mm_srli_epi16(nibbles, 4), low4));
    const __m512i lows = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)pair));
    /* lane j: its low byte at byte 2, its high byte at byte 3, bytes 0-1 zero: the float32 */
    *w0 = (v16)_mm512_maskz_permutex2var_epi8(0xccccccccccccccccull, lows, idx0, _mm512_castsi128_si512(h0));
    *w1 = (v16)_mm512_maskz_permutex2var_epi8(0xccccccccccccccccull, lows, idx1, _mm512_castsi128_si512(h1));
}

/* line12's byte indices: lane j's bytes 2 and 3 from the pair's low byte (2j + odd) and the high
 * bytes' byte j (64 + : the second source); bytes 0 and 1 are masked to zero */
#define IDX12(j, odd) 0, 0, 2 * (j) + (odd), 64 + (j)
#define IDX12_ROW(odd)                                                                                     \
    IDX12(0, odd), IDX12(1, odd), IDX12(2, odd), IDX12(3, odd), IDX12(4, odd), IDX12(5, odd), IDX12(6, odd), \
        IDX12(7, odd), IDX12(8, odd), IDX12(9, odd), IDX12(10, odd), IDX12(11, odd), IDX12(12, odd),         \
        IDX12(13, odd), IDX12(14, odd), IDX12(15, odd)
static const uint8_t index12[2][64] __attribute__((aligned(64))) = {{IDX12_ROW(0)}, {IDX12_ROW(1)}};
#else
#define VECTOR12 0
#endif

/* Whether this build reads BF16_12 with vector code (else unpack12, slower than plain bfloat16):
 * fused_cpu.py stores bfloat16 in 12 bits only where it does. */
int nvllm_step_vector12(void) { return VECTOR12; }

/* y[b, n0 + j] for BT input rows and one panel of format F: for each k, the panel's 16 weights in
 * one vector (two without AVX-512) and a broadcast of x[b, k] per row. Every sum runs over k in
 * order (16-bit weights with AVX-512: the even k and the odd k each in order, then added), the
 * same for any BT, so a sequence's logits do not depend on what else is in the batch. */
static inline __attribute__((always_inline)) void tile(const float *restrict x, int64_t K,
                                                       const void *restrict panel, const float *bias,
                                                       int64_t cols, float *restrict y, int64_t N, const int BT,
                                                       const int F, const uint8_t *bases, const char *escapes)
{
    const int64_t step = PANEL * (F == F32 ? 4 : 2); /* bytes a k (BF16_12: LINE12 a k pair) */
    const char *p = panel;
#ifdef __AVX512F__
    v16 acc[SEQS];
    for (int b = 0; b < BT; ++b) acc[b] = (v16){0};
    int64_t k = 0;
    if (F != F32) {
        /* two sums a row, even and odd k, added at the end: with one, a row's chain of dependent
         * multiply-adds, not memory, bounds a 16-bit panel's pace at one or two rows */
        v16 odd[SEQS];
        for (int b = 0; b < BT; ++b) odd[b] = (v16){0};
        if (F == BF16_12) { /* a k pair a LINE12 bytes, walked with its own pointer */
#if VECTOR12
            const __m512i idx0 = _mm512_load_si512(index12[0]), idx1 = _mm512_load_si512(index12[1]);
#endif
            const char *line = p;
            for (int64_t pair = 0; pair < K / 2; ++pair, line += LINE12) {
                __builtin_prefetch(line + PREFETCH);
                v16 w0, w1;
#if VECTOR12
                line12(line, bases[pair], &escapes, idx0, idx1, &w0, &w1);
#else
                uint32_t lanes[16];
                unpack12((const uint8_t *)line, bases[pair], &escapes, lanes);
                const __m512i both = _mm512_loadu_si512(lanes);
                w0 = (v16)_mm512_slli_epi32(both, 16);
                w1 = (v16)_mm512_and_si512(both, _mm512_set1_epi32((int)0xffff0000u));
#endif
                for (int b = 0; b < BT; ++b) {
                    acc[b] += x[b * K + 2 * pair] * w0;
                    odd[b] += x[b * K + 2 * pair + 1] * w1;
                }
            }
            k = K;
        }
        for (; F != BF16_12 && k + 1 < K; k += 2) {
            __builtin_prefetch(p + k * step + PREFETCH); /* a cache line: two k */
            v16 w0, w1;
            if (F == BF16) { /* each lane: the row's weight at k in its low half, at k + 1 in its high one */
                const __m512i pair = _mm512_loadu_si512(p + k * step);
                w0 = (v16)_mm512_slli_epi32(pair, 16);
                w1 = (v16)_mm512_and_si512(pair, _mm512_set1_epi32((int)0xffff0000u));
            } else
                w0 = load16(p + k * step, F), w1 = load16(p + (k + 1) * step, F);
            for (int b = 0; b < BT; ++b) {
                acc[b] += x[b * K + k] * w0;
                odd[b] += x[b * K + k + 1] * w1;
            }
        }
        for (int b = 0; b < BT; ++b) acc[b] += odd[b];
    }
    for (; F != BF16_12 && k < K; ++k) { /* (BF16_12: K is even) */
        __builtin_prefetch(p + k * step + PREFETCH); /* never faults, even past the end */
        const v16 w = load16(p + k * step, F);
        for (int b = 0; b < BT; ++b) acc[b] += x[b * K + k] * w;
    }
    for (int b = 0; b < BT; ++b)
        for (int64_t j = 0; j < cols; ++j) y[b * N + j] = bias ? acc[b][j] + bias[j] : acc[b][j];
#else
    v8 acc[SEQS][2];
    for (int b = 0; b < BT; ++b) acc[b][0] = acc[b][1] = (v8){0};
    uint32_t lanes[16]; /* BF16_12: the k pair unpacked */
    for (int64_t k = 0; k < K; ++k) {
        v8 w0, w1;
        if (F == BF16_12) {
            __builtin_prefetch(p + k / 2 * LINE12 + PREFETCH);
            if (k % 2 == 0) unpack12((const uint8_t *)p + k / 2 * LINE12, bases[k / 2], &escapes, lanes);
            w0 = pair8(lanes, k % 2), w1 = pair8(lanes + 8, k % 2);
        } else {
            __builtin_prefetch(p + k * step + PREFETCH); /* never faults, even past the end */
            if (F == BF16) /* k's and k + 1's weights side by side: rows 0-7 in the pair's first 32 bytes */
                w0 = pair8(p + k / 2 * 2 * step, k % 2), w1 = pair8(p + k / 2 * 2 * step + step, k % 2);
            else
                w0 = load8(p + k * step, F), w1 = load8(p + k * step + step / 2, F);
        }
        for (int b = 0; b < BT; ++b) {
            const float xk = x[b * K + k];
            acc[b][0] += xk * w0;
            acc[b][1] += xk * w1;
        }
    }
    for (int b = 0; b < BT; ++b)
        for (int64_t j = 0; j < cols; ++j) {
            const float s = j < 8 ? acc[b][0][j] : acc[b][1][j - 8];
            y[b * N + j] = bias ? s + bias[j] : s;
        }
#endif
}

/* rows x [rows, K] times one packed panel of format F (+ bias) into cols columns of y (row stride ld),
 * SEQS rows a tile */
static inline __attribute__((always_inline)) void panel_rows(const float *x, int64_t rows, int64_t K, const void *panel,
                                                             const float *bias, int64_t cols, float *y, int64_t ld,
                                                             const int F, const char *escapes)
{
    const uint8_t *bases = F == BF16_12 ? bases12(panel, K) : NULL;
    int64_t b0 = 0;
    for (; b0 + SEQS <= rows; b0 += SEQS)
        tile(x + b0 * K, K, panel, bias, cols, y + b0 * ld, ld, SEQS, F, bases, escapes);
    switch (rows - b0) { /* the rest, with the row count known to the compiler */
#define REST(r) case r: tile(x + b0 * K, K, panel, bias, cols, y + b0 * ld, ld, r, F, bases, escapes); break;
        REST(1) REST(2) REST(3) REST(4) REST(5)
#if SEQS > 6
        REST(6) REST(7) REST(8) REST(9) REST(10) REST(11)
#endif
#undef REST
    }
}

/* y [B, N] = x [B, K] w[N, K]^T (+ bias) from the packed panels of format F, shared out over the
 * threads in contiguous runs, each panel read once from memory for all B rows (SEQS at a time). */
static inline __attribute__((always_inline)) void linear_as(const float *x, int64_t B, int64_t K, const Weight *w,
                                                            const float *bias, int64_t N, float *y, const int F)
{
    const int64_t panels = (N + PANEL - 1) / PANEL, bytes = panel_bytes(K, F);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < panels; ++p) {
        const int64_t n0 = p * PANEL, cols = N - n0 < PANEL ? N - n0 : PANEL;
        panel_rows(x, B, K, (const char *)w->data + p * bytes, bias ? bias + n0 : NULL, cols, y + n0, N, F,
                   F == BF16_12 ? escapes12(w, p) : NULL);
    }
}

#ifdef __AVX512F__
/* r[i] = column i of the 16 x 16 floats whose row f is r[f] */
static inline __attribute__((always_inline)) void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) { /* per 128-bit lane: rows i, i + 1 interleaved */
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* r[i + c]'s lane L: rows i .. i + 3 of column 4L + c */
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int c = 0; c < 4; ++c) { /* gather lane L of r[c], r[4 + c], r[8 + c], r[12 + c]: column 4L + c */
        const __m512 a = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), b = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);
        const __m512 a2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88),
                     b2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
        t[c] = _mm512_shuffle_f32x4(a, a2, 0x88);
        t[8 + c] = _mm512_shuffle_f32x4(a, a2, 0xdd);
        t[4 + c] = _mm512_shuffle_f32x4(b, b2, 0x88);
        t[12 + c] = _mm512_shuffle_f32x4(b, b2, 0xdd);
    }
    for (int i = 0; i < 16; ++i) r[i] = t[i];
}
#endif

/* cols <= PANEL quantized rows of layout FMT (q, scales and mins at the first one's) as one float32
 * panel (`pack`'s layout: out[k][j], zeros past cols): the same floats `dequantize` gives */
static inline __attribute__((always_inline)) void dequantize_panel(const uint8_t *q, int64_t row_bytes,
                                                                   const void *scales, const void *mins, int64_t K,
                                                                   int64_t cols, float *restrict out, const int FMT)
{
    const int64_t blocks = K / BLOCK;
#ifdef __AVX512F__
    for (int64_t j = 0; j < blocks; ++j) {
        __m512 r[2][PANEL];
        for (int f = 0; f < PANEL; ++f) {
            __m512 w[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
            if (f < cols)
                dequantize16(q + f * row_bytes, scales_from(scales, f * blocks, FMT),
                             FMT != Q_INT8 ? scales_from(mins, f * blocks, FMT) : 0, j, w, FMT);
            r[0][f] = w[0], r[1][f] = w[1];
        }
        for (int h = 0; h < 2; ++h) {
            transpose16(r[h]);
            for (int i = 0; i < 16; ++i) _mm512_storeu_ps(out + (j * BLOCK + 16 * h + i) * PANEL, r[h][i]);
        }
    }
#else
    for (int64_t f = 0; f < PANEL; ++f)
        for (int64_t j = 0; j < blocks; ++j) {
            v8 w[4] = {{0}};
            if (f < cols)
                dequantize(q + f * row_bytes, scales_from(scales, f * blocks, FMT),
                           FMT != Q_INT8 ? scales_from(mins, f * blocks, FMT) : 0, j, w, FMT);
            for (int i = 0; i < BLOCK; ++i) out[(j * BLOCK + i) * PANEL + f] = w[i / 8][i % 8];
        }
#endif
}

/* From this many rows on, linear_rows dequantizes a panel of weights once into the thread's
 * scratch and runs the float32 tiles over it: there the multiply-adds bound the step rather than
 * the weights' bytes, and `tile` spends fewer instructions on them than quantized.h's kernels;
 * below it, dequantizing a panel costs more than it saves. */
#define DEQUANTIZED_ROWS 16

/* Whether a weight is quantized rows (linear_rows) or 12-bit bfloat16 panels (linear_12), and whether a
 * model has any: only then does a step of DEQUANTIZED_ROWS rows or more give each thread a panel's
 * scratch. */
static inline int is_rows(const Weight *w)
{
    return w->format == INT8 || w->format == INT4 || w->format == INT4_F32 || w->format == BF16_12;
}

/* A BF16_12 panel as the plain bfloat16 panel (its K / 2 pairs of 16 lanes) into `plain` */
static void unpack_panel12(const char *panel, int64_t K, const char *escapes, uint32_t *plain)
{
    const uint8_t *bases = bases12(panel, K);
#if VECTOR12
    const __m512i idx0 = _mm512_load_si512(index12[0]), idx1 = _mm512_load_si512(index12[1]);
    for (int64_t pair = 0; pair < K / 2; ++pair) {
        v16 w0, w1;
        line12(panel + pair * LINE12, bases[pair], &escapes, idx0, idx1, &w0, &w1);
        _mm512_storeu_si512(plain + 16 * pair, _mm512_or_si512(_mm512_srli_epi32((__m512i)w0, 16), (__m512i)w1));
    }
#else
    for (int64_t pair = 0; pair < K / 2; ++pair)
        unpack12((const uint8_t *)panel + pair * LINE12, bases[pair], &escapes, plain + 16 * pair);
#endif
}

/* linear_any for 12-bit bfloat16 panels: with DEQUANTIZED_ROWS rows or more and a thread's scratch
 * `panel`, each panel unpacked once into the plain layout there and the bfloat16 tiles run over it
 * (the same weights and sums as the plain panel's), rather than unpacked again by every tile of SEQS
 * rows; fewer rows read the 12-bit pairs directly (linear_as). */
static void linear_12(const float *x, int64_t B, int64_t K, const Weight *w, const float *bias, int64_t N,
                      float *y, float *panel)
{
    if (!panel || B < DEQUANTIZED_ROWS) {
        linear_as(x, B, K, w, bias, N, y, BF16_12);
        return;
    }
    const int64_t panels = (N + PANEL - 1) / PANEL, bytes = panel_bytes(K, BF16_12);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < panels; ++p) {
        const int64_t n0 = p * PANEL, cols = N - n0 < PANEL ? N - n0 : PANEL;
        unpack_panel12((const char *)w->data + p * bytes, K, escapes12(w, p), (uint32_t *)panel);
        panel_rows(x, B, K, panel, bias ? bias + n0 : NULL, cols, y + n0, N, BF16, NULL);
    }
}

static int has_rows(const Model *m)
{
    for (int64_t l = 0; l < m->num_layers; ++l) {
        const Layer *L = m->layers + l;
        if (is_rows(&L->qkv) || is_rows(&L->o) || is_rows(&L->gate_up) || is_rows(&L->down)) return 1;
    }
    return is_rows(&m->lm_head);
}

/* linear_any for quantized rows in layout FMT (a constant where it is called, so each layout gets its
 * own compiled loop): FEATURES output features at a time, the threads sharing them out; or with
 * DEQUANTIZED_ROWS rows or more and a thread's scratch `panel` (PANEL * K floats), a panel at a time.
 * Every thread takes the same branch, so meets the same `omp for`: `panel` is NULL in all of them or
 * set in all of them (a thread that could not allocate it fails the whole step before any matmul). */
static inline __attribute__((always_inline)) void linear_rows(const float *x, int64_t B, int64_t K, const Weight *w,
                                                              const float *bias, int64_t N, float *y, float *panel,
                                                              const int FMT)
{
    const int64_t blocks = K / BLOCK, row_bytes = FMT == Q_INT8 ? K : K / 2;
    if (panel && B >= DEQUANTIZED_ROWS) {
#pragma omp for schedule(static)
        for (int64_t n0 = 0; n0 < N; n0 += PANEL) {
            const int64_t cols = N - n0 < PANEL ? N - n0 : PANEL;
            dequantize_panel((const uint8_t *)w->data + n0 * row_bytes, row_bytes, scales_from(w->scales, n0 * blocks, FMT),
                             FMT != Q_INT8 ? scales_from(w->mins, n0 * blocks, FMT) : NULL, K, cols, panel, FMT);
            panel_rows(x, B, K, panel, bias ? bias + n0 : NULL, cols, y + n0, N, F32, NULL);
        }
        return;
    }
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n += FEATURES)
        features(x, B, K, (const uint8_t *)w->data + n * row_bytes, row_bytes, scales_from(w->scales, n * blocks, FMT),
                 FMT != Q_INT8 ? scales_from(w->mins, n * blocks, FMT) : NULL, bias ? bias + n : NULL, y + n, N,
                 N - n < FEATURES ? N - n : FEATURES, FMT);
}

/* linear_rows with x's rows rounded to int8 first, into `act` (dot_row_bytes(K) a row) */
static inline __attribute__((always_inline)) void linear_dot(const float *x, int64_t B, int64_t K, const Weight *w,
                                                             const float *bias, int64_t N, float *y, int8_t *act,
                                                             int own, const int FMT)
{
    const int64_t blocks = K / BLOCK, row_bytes = FMT == Q_INT8 ? K : K / 2;
    quantize_dot_rows(x, B, K, act, own, FMT); /* own: `act` is this thread's, it rounds the row itself */
    const int64_t group = dot_features(B);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n += group)
        features_dot(act, B, K, (const uint8_t *)w->data + n * row_bytes, row_bytes,
                     scales_from(w->scales, n * blocks, FMT),
                     FMT != Q_INT8 ? scales_from(w->mins, n * blocks, FMT) : NULL, bias ? bias + n : NULL, y + n,
                     N, N - n < group ? N - n : group, FMT);
}

/* y [B, N] = x [B, K] w^T (+ bias) for a weight in any format, each compiled with its format known:
 * the packed panels (linear_as), or the quantized rows (quantized.h), FEATURES output features at a
 * time, the threads sharing out the features (the *_DOT formats: x's rows rounded to int8 first, into
 * `act`, dot_row_bytes(K) a row: shared, or with `own` this thread's, every thread given the same x). */
static void linear_any(const float *x, int64_t B, int64_t K, const Weight *w, const float *bias,
                       int64_t N, float *y, int8_t *act, int own, float *panel)
{
#ifdef SKIP_LINEAR
    return;
#endif
    switch (w->format) {
    case INT8: linear_rows(x, B, K, w, bias, N, y, panel, Q_INT8); break;
    case INT4: linear_rows(x, B, K, w, bias, N, y, panel, Q_INT4); break;
    case INT4_F32: linear_rows(x, B, K, w, bias, N, y, panel, Q_INT4_F32); break;
    case INT8_DOT: linear_dot(x, B, K, w, bias, N, y, act, own, Q_INT8); break;
    case INT4_DOT: linear_dot(x, B, K, w, bias, N, y, act, own, Q_INT4); break;
    case INT4_F32_DOT: linear_dot(x, B, K, w, bias, N, y, act, own, Q_INT4_F32); break;
    case BF16: linear_as(x, B, K, w, bias, N, y, BF16); break;
    case BF16_12: linear_12(x, B, K, w, bias, N, y, panel); break;
    case F16: linear_as(x, B, K, w, bias, N, y, F16); break;
    default: linear_as(x, B, K, w, bias, N, y, F32);
    }
}

/* The bytes a row of int8 activations takes in the step's scratch (fused_cpu.py sizes it) */
int64_t nvllm_dot_row_bytes(int64_t K) { return dot_row_bytes(K); }

/* A token's embedding row, as floats: INT8 rows (q * d in float32, as packed.py's dequantize), or
 * panels like any matmul weight's (tied: the LM head's own), the row lane id % PANEL of panel id / PANEL */
static void embed_row(const Model *m, int64_t id, float *out)
{
    const int64_t H = m->hidden, lane = id % PANEL;
    const Weight *w = &m->embed;
    if (w->format == INT8) {
        const int8_t *q = (const int8_t *)w->data + id * H;
        const uint16_t *d = w->scales + id * (H / BLOCK);
        for (int64_t i = 0; i < H; ++i) out[i] = (float)q[i] * f16_to_float(d[i / BLOCK]);
        return;
    }
    const char *panel = (const char *)w->data + id / PANEL * panel_bytes(H, (int)w->format);
    if (w->format == F32) {
        for (int64_t i = 0; i < H; ++i) out[i] = ((const float *)panel)[i * PANEL + lane];
    } else if (w->format == F16) {
        for (int64_t i = 0; i < H; ++i) out[i] = widen1(panel, i * PANEL + lane, F16);
    } else if (w->format == BF16) { /* k in pairs: [K / 2, PANEL, 2] */
        for (int64_t i = 0; i < H; ++i) out[i] = widen1(panel, i / 2 * 2 * PANEL + 2 * lane + i % 2, BF16);
    } else { /* BF16_12: each pair's 16 lanes unpacked, this row's two weights kept */
        const uint8_t *bases = bases12(panel, H);
        const char *escapes = escapes12(w, id / PANEL);
        uint32_t lanes[PANEL];
        for (int64_t pair = 0; pair < H / 2; ++pair) {
            unpack12((const uint8_t *)panel + pair * LINE12, bases[pair], &escapes, lanes);
            out[2 * pair] = bits_to_float(lanes[lane] << 16);
            out[2 * pair + 1] = bits_to_float(lanes[lane] & 0xffff0000u);
        }
    }
}

/* out = w * (x / rms(x)) over one row of `width` floats (RMSNorm) */
static inline void rms_norm_row(const float *x, const float *w, int64_t width, float eps, float *out)
{
    float ss = 0.f;
    for (int64_t i = 0; i < width; ++i) ss += x[i] * x[i];
    const float inv = 1.f / sqrtf(ss / (float)width + eps);
    for (int64_t i = 0; i < width; ++i) out[i] = w[i] * (x[i] * inv);
}

/* Neox-style rotary: the first and second halves of a head rotated by the position's angles */
static inline void rotate(float *x, const float *cs, int64_t head_dim)
{
    const int64_t half = head_dim / 2;
    for (int64_t i = 0; i < half; ++i) {
        const float x1 = x[i], x2 = x[i + half], c = cs[i], s = cs[half + i];
        x[i] = x1 * c - x2 * s;
        x[i + half] = x2 * c + x1 * s;
    }
}

/* After a layer's output row h: residual += h, x = norm(residual) (the first layer: residual = h).
 * Not inlined: the step's one-row and many-row paths run the same compiled loop, so a row's result
 * does not depend on which path it took. */
static __attribute__((noinline)) void add_norm_row(const float *h, float *residual, const float *w, const Model *m,
                                                   int first, float *x)
{
    const int64_t H = m->hidden;
    if (first)
        memcpy(residual, h, sizeof(float) * (size_t)H);
    else
        for (int64_t i = 0; i < H; ++i) residual[i] += h[i];
    rms_norm_row(residual, w, H, m->eps, x);
}

/* add_norm_row over B rows, shared out over the threads */
static void add_norm(float *h, float *residual, const float *w, const Model *m, int64_t B, int first, float *x)
{
    const int64_t H = m->hidden;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) add_norm_row(h + b * H, residual + b * H, w, m, first, x + b * H);
}

/* act = SiLU(gate) x up over one row's [gate | up] (not inlined: as add_norm_row) */
static __attribute__((noinline)) void silu_row(const float *gate_up, int64_t I, float *act)
{
    for (int64_t i = 0; i < I; ++i) act[i] = gate_up[i] / (1.f + expf(-gate_up[i])) * gate_up[I + i];
}

/* Row b's head hd of this step's qkv (query heads, then KV heads): QK-norm and rotary, a query head
 * into q, a KV head's k and v into the cache (rows with slot -1 store nothing); not inlined: as
 * add_norm_row */
static __attribute__((noinline)) void prepare_head(const Model *m, const Layer *L, float *qkv, float *q, const int64_t *positions,
                         const int64_t *slots, int64_t b, int64_t hd)
{
    const int64_t D = m->head_dim, NQ = m->num_heads * D, NKV = m->num_kv_heads * D, QKV = NQ + 2 * NKV;
    const float *cs = m->cos_sin + positions[b] * D;
    const int is_q = hd < m->num_heads;
    float *src = qkv + b * QKV + hd * D;
    float *dst = is_q ? q + b * NQ + hd * D : src;
    const float *norm_w = is_q ? L->q_norm : L->k_norm;
    if (norm_w)
        rms_norm_row(src, norm_w, D, m->eps, dst);
    else if (dst != src)
        memcpy(dst, src, sizeof(float) * (size_t)D);
    rotate(dst, cs, D);
    if (!is_q && slots[b] >= 0) {
        const int64_t kvh = hd - m->num_heads;
        memcpy(L->k_cache + slots[b] * NKV + kvh * D, dst, sizeof(float) * (size_t)D);
        memcpy(L->v_cache + slots[b] * NKV + kvh * D, qkv + b * QKV + NQ + NKV + kvh * D, sizeof(float) * (size_t)D);
    }
}

#include "moe_step.h"

/* One step over B rows: each row is one token with its own position, cache slot, block table and
 * context length (its position + 1), so a decode step has a row per sequence and a prefill a row
 * per prompt token, all of whose K/V are stored before any row attends. Rows may come in several
 * calls (a long prefill in chunks): a later call reads the earlier rows' K/V from the cache.
 * logits: [num_logits, vocab] for rows logit_rows. work: fused_cpu.py sizes it.
 * Returns 0, or -1 when a thread's scratch (attention's, a dequantized panel) could not be allocated. */
int nvllm_llama_step(const Model *m, const int64_t *ids, const int64_t *positions, const int64_t *slots,
                     const int32_t *block_tables, int64_t table_width, const int32_t *context_lens, int64_t B,
                     const int64_t *logit_rows, int64_t num_logits, float *work, float *logits, int num_threads)
{
    const int64_t H = m->hidden, D = m->head_dim, NQ = m->num_heads * D, NKV = m->num_kv_heads * D;
    const int64_t QKV = NQ + 2 * NKV, I = m->intermediate;
    float *h = work, *residual = h + B * H, *x = residual + B * H, *qkv = x + B * H, *attn = qkv + B * QKV;
    float *gate_up = attn + B * NQ, *act = gate_up + B * 2 * I, *q = act + B * I; /* q: [B, NQ] for attention */
    int8_t *act8 = (int8_t *)(q + B * NQ); /* int8 activations: linear_any (a mixture of experts' scratch is the same room) */
    const int64_t scratch = m->num_heads / m->num_kv_heads * longest(context_lens, B) + 1;
    /* a single row (single-stream decode): every thread keeps its own residual, x and SiLU output,
     * computing the row itself rather than waiting on a barrier for one thread to, and each KV
     * head's item also prepares its heads (no other row reads its K/V, so none wait to be stored) */
    const int one = B == 1;
    int failed = 0;
    const int64_t widest = H > NQ ? (H > I ? H : I) : (NQ > I ? NQ : I);
    const int dequantizes = B >= DEQUANTIZED_ROWS && has_rows(m);

#pragma omp parallel num_threads(num_threads)
    {
        float *scores = score_scratch(scratch + (one ? 2 * H + I + dot_row_bytes(widest) / 4 + 1 : 0), &failed);
        float *own_residual = scores + scratch, *own_x = own_residual + H, *own_act = own_x + H;
        int8_t *acts = one ? (int8_t *)(own_act + I) : act8; /* its int8 activations (linear_any) */
        float *res = one ? own_residual : residual, *xs = one ? own_x : x; /* the residual and x this thread reads */
        /* a panel of dequantized weights (linear_rows) for the widest K: a size set by the model alone,
         * whatever the rows; the same choice in every thread */
        float *panel = dequantizes ? score_scratch(PANEL * widest, &failed) : NULL;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; ++b) embed_row(m, ids[b], h + b * H);
        /* the implicit barrier above also makes `failed` seen by all */
        if (!failed) {
            for (int64_t l = 0; l < m->num_layers; ++l) {
                const Layer *L = m->layers + l;
                if (one)
                    add_norm_row(h, res, L->input_norm, m, l == 0, xs);
                else
                    add_norm(h, residual, L->input_norm, m, B, l == 0, x);
                linear_any(xs, B, H, &L->qkv, L->qkv_bias, QKV, qkv, acts, one, panel);
                if (one) {
                    /* per KV head: its heads prepared (prepare_head), then its attention */
                    const int64_t group = m->num_heads / m->num_kv_heads;
#pragma omp for schedule(dynamic, 1)
                    for (int64_t kvh = 0; kvh < m->num_kv_heads; ++kvh) {
                        prepare_head(m, L, qkv, q, positions, slots, 0, m->num_heads + kvh);
                        for (int64_t g = 0; g < group; ++g) prepare_head(m, L, qkv, q, positions, slots, 0, kvh * group + g);
                        attend_head(q, L->k_cache, L->v_cache, block_tables, table_width, context_lens, 0, kvh,
                                    m->num_heads, m->num_kv_heads, D, m->block_size, m->scale, attn, scores);
                    }
                } else {
                    /* per (sequence, head): QK-norm, rotary, then k and v into the cache */
#pragma omp for schedule(static)
                    for (int64_t bh = 0; bh < B * (m->num_heads + m->num_kv_heads); ++bh)
                        prepare_head(m, L, qkv, q, positions, slots, bh / (m->num_heads + m->num_kv_heads),
                                     bh % (m->num_heads + m->num_kv_heads));
                    paged_attention(q, L->k_cache, L->v_cache, block_tables, table_width, context_lens, B,
                                    m->num_heads, m->num_kv_heads, D, m->block_size, m->scale, attn, scores);
                }
                linear_any(attn, B, NQ, &L->o, L->o_bias, H, h, acts, one, panel);
                if (one)
                    add_norm_row(h, res, L->post_norm, m, 0, xs);
                else
                    add_norm(h, residual, L->post_norm, m, B, 0, x);
                if (L->moe) { /* its scratch follows the dense step's in `work` */
                    moe_mlp(m, L->moe, xs, B, q + B * NQ, h);
                    continue;
                }
                linear_any(xs, B, H, &L->gate_up, L->gate_up_bias, 2 * I, gate_up, acts, one, panel);
                if (one)
                    silu_row(gate_up, I, own_act);
                else {
#pragma omp for schedule(static)
                    for (int64_t b = 0; b < B; ++b) silu_row(gate_up + b * 2 * I, I, act + b * I);
                }
                linear_any(one ? own_act : act, B, I, &L->down, L->down_bias, H, h, acts, one, panel);
            }
            if (one) {
                add_norm_row(h, res, m->norm, m, 0, xs);
                linear_any(xs, num_logits, H, &m->lm_head, NULL, m->vocab, logits, acts, 1, panel); /* row 0, or none */
            } else {
                add_norm(h, residual, m->norm, m, B, 0, x);
                /* logits only for the rows that are sampled (a prompt's last token), gathered into h */
#pragma omp for schedule(static)
                for (int64_t i = 0; i < num_logits; ++i)
                    memcpy(h + i * H, x + logit_rows[i] * H, sizeof(float) * (size_t)H);
                linear_any(h, num_logits, H, &m->lm_head, NULL, m->vocab, logits, acts, 0, panel);
            }
        }
        free(scores);
        free(panel);
    }
    return failed ? -1 : 0;
}
