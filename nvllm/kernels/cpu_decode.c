/* attention=cpu's decode kernel: one query token per sequence, straight from the paged KV cache.
 * Compiled on first use by nvllm/kernels/__init__.py (cc -O3 -march=native -ffast-math -fopenmp)
 * and called through ctypes from nvllm/attention/cpu.py with the tensors' data pointers. */
#include "paged_attention.h"

int nvllm_paged_decode_attention(const float *q, const float *k_cache, const float *v_cache,
                                 const int32_t *block_tables, int64_t table_width,
                                 const int32_t *context_lens, int64_t num_seqs, int64_t num_heads,
                                 int64_t num_kv_heads, int64_t head_dim, int64_t block_size,
                                 float scale, float *out, int num_threads)
{
    const int64_t scratch = num_heads / num_kv_heads * longest(context_lens, num_seqs) + 1;
    int failed = 0;
#pragma omp parallel num_threads(num_threads)
    {
        float *scores = score_scratch(scratch, &failed);
#pragma omp barrier
        if (!failed)
            paged_attention(q, k_cache, v_cache, block_tables, table_width, context_lens, num_seqs, num_heads,
                            num_kv_heads, head_dim, block_size, scale, out, scores);
        free(scores);
    }
    return failed ? -1 : 0;
}
