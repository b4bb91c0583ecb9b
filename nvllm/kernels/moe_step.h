/* A mixture of experts' MLP in forward=fused_cpu's step: what nvllm/models/layers/moe.py's FusedMoE
 * computes, for the step's B rows. cpu_step.c includes it after `linear` and runs it in place of
 * the dense MLP for a layer whose `moe` is set (Qwen3-MoE's sparse layers, Mixtral's every layer).
 *
 * Routing, per row, in moe.py `route`'s order: the router's logits (one `linear` over its packed
 * rows), softmax in float32, the top-k experts by probability (largest first; on a tie the lower
 * expert), then, where the architecture says so (`renormalize`), the k scores divided by their sum.
 * Then the step's (row, choice) pairs are grouped by expert (a counting sort, rows in order within
 * an expert) and each expert that any row chose runs its gate|up and down matmuls over just its
 * rows: `linear` streams each chosen expert's packed panels once a step, for all of its rows, and
 * never touches the others (a single stream reads the active parameters, not all of them). A row's
 * output is the score-weighted sum of its k experts' outputs.
 *
 * Its scratch (after the dense step's in `work`, sized by fused_cpu.py `moe_work_per_row`), floats
 * unless said: logits [B, E] | score [B*k] | choice, slot (int32) [B*k] | start (int32) [E + 1] |
 * xs [B*k, H] (the grouped rows; later their outputs) | gu [B*k, 2I] | act [B*k, I]. */
#ifndef NVLLM_MOE_STEP_H
#define NVLLM_MOE_STEP_H

struct MoeLayer {
    int64_t num_experts, top_k, intermediate, renormalize;
    const void *gate; /* the router: [num_experts, hidden], packed like every matmul weight */
    /* each expert's gate|up [2I, hidden] and down [hidden, I], packed, expert after expert: expert e's
     * start w13_stride * e and w2_stride * e bytes in */
    const void *w13, *w2;
    int64_t w13_stride, w2_stride;
    /* NULL (the default), or [num_experts + 1] that the step adds to: the rows routed to each expert,
     * then the bytes of expert weights its matmuls were handed (a measurement: fused_cpu.py
     * `count_experts`) */
    int64_t *counters;
};

/* One row's top-k experts and their scores from its router logits (moe.py `route`) */
static void route_row(const float *logits, int64_t E, int64_t k, int64_t renormalize, int32_t *choice, float *score)
{
    float max = logits[0], sum = 0.f;
    for (int64_t e = 1; e < E; ++e) max = logits[e] > max ? logits[e] : max;
    for (int64_t e = 0; e < E; ++e) sum += expf(logits[e] - max);
    int64_t n = 0; /* the best n so far, in score[0..n) largest first */
    for (int64_t e = 0; e < E; ++e) {
        const float p = expf(logits[e] - max) / sum;
        if (n == k && p <= score[k - 1]) continue;
        int64_t i = n < k ? n++ : k - 1;
        for (; i > 0 && score[i - 1] < p; --i) score[i] = score[i - 1], choice[i] = choice[i - 1];
        score[i] = p, choice[i] = (int32_t)e;
    }
    if (renormalize) {
        float total = 0.f;
        for (int64_t j = 0; j < k; ++j) total += score[j];
        for (int64_t j = 0; j < k; ++j) score[j] /= total;
    }
}

/* out [B, H] = the mixture of experts `e` over x [B, H]; run by every thread of the step's parallel region */
static void moe_mlp(const Model *m, const struct MoeLayer *e, const float *x, int64_t B, float *work, float *out)
{
    const int64_t H = m->hidden, E = e->num_experts, k = e->top_k, I = e->intermediate, R = B * k;
    float *logits = work, *score = logits + B * E;
    int32_t *choice = (int32_t *)(score + R), *slot = choice + R, *start = slot + R;
    float *xs = (float *)(start + E + 1), *gu = xs + R * H, *act = gu + R * 2 * I;
    float *ys = xs; /* the grouped rows are read only by the gate|up matmuls, which all run before the first down */

    linear(m, x, B, H, e->gate, NULL, E, logits);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) route_row(logits + b * E, E, k, e->renormalize, choice + b * k, score + b * k);
#pragma omp single
    { /* group the pairs by expert: start[x] = the first grouped row of expert x, slot[r] = pair r's row */
        memset(start, 0, sizeof(int32_t) * (size_t)(E + 1));
        for (int64_t r = 0; r < R; ++r) ++start[choice[r] + 1];
        for (int64_t x = 0; x < E; ++x) start[x + 1] += start[x];
        for (int64_t r = 0; r < R; ++r) slot[r] = start[choice[r]]++; /* start[x] ends as expert x + 1's start */
        for (int64_t x = E; x > 0; --x) start[x] = start[x - 1];
        start[0] = 0;
        if (e->counters)
            for (int64_t x = 0; x < E; ++x) e->counters[x] += start[x + 1] - start[x];
    } /* the barrier: every thread sees the groups */
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) memcpy(xs + slot[r] * H, x + r / k * H, sizeof(float) * (size_t)H);
    /* each expert that has rows, gate|up then SiLU(gate) x up then down; the others are never read */
    for (int64_t x = 0; x < E; ++x)
        if (start[x + 1] > start[x]) {
            linear(m, xs + start[x] * H, start[x + 1] - start[x], H, (const char *)e->w13 + x * e->w13_stride, NULL,
                   2 * I, gu + start[x] * 2 * I);
            if (e->counters) {
#pragma omp single nowait
#pragma omp atomic
                e->counters[E] += e->w13_stride;
            }
        }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
        const float *g = gu + r * 2 * I;
        for (int64_t i = 0; i < I; ++i) act[r * I + i] = g[i] / (1.f + expf(-g[i])) * g[I + i];
    }
    for (int64_t x = 0; x < E; ++x)
        if (start[x + 1] > start[x]) {
            linear(m, act + start[x] * I, start[x + 1] - start[x], I, (const char *)e->w2 + x * e->w2_stride, NULL, H,
                   ys + start[x] * H);
            if (e->counters) {
#pragma omp single nowait
#pragma omp atomic
                e->counters[E] += e->w2_stride;
            }
        }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
        float *o = out + b * H;
        for (int64_t i = 0; i < H; ++i) o[i] = 0.f;
        for (int64_t j = 0; j < k; ++j) {
            const float s = score[b * k + j], *y = ys + slot[b * k + j] * H;
            for (int64_t i = 0; i < H; ++i) o[i] += s * y[i];
        }
    }
}

#endif
