/* Narrow floating-point formats to float32, exactly: shared by the C kernels that read 16-bit
 * weights (cpu_step.c) and 16-bit block scales (quantized.c). */
#ifndef NVLLM_WIDEN_H
#define NVLLM_WIDEN_H
#include <stdint.h>
#include <string.h>

static inline float bits_to_float(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* bfloat16: the upper half of a float32 */
static inline float bf16_to_float(uint16_t h) { return bits_to_float((uint32_t)h << 16); }

/* IEEE half: the exponent re-biased; subnormals normalised; infinities and NaNs kept */
static inline float f16_to_float(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
    if (exp) return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
    if (man == 0) return bits_to_float(sign);
    int e = -1;
    uint32_t m = man;
    do {
        ++e;
        m <<= 1;
    } while (!(m & 0x400));
    return bits_to_float(sign | ((uint32_t)(112 - e) << 23) | ((m & 0x3ff) << 13));
}

#endif
