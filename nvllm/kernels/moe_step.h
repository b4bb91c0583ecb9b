/* A mixture of experts' MLP in forward=fused_cpu's step: what nvllm/models/layers/moe.py's FusedMoE
 * computes, for the step's B rows. cpu_step.c includes it after `linear` and runs it in place of
 * the dense MLP for a layer whose `moe` is set (Qwen3-MoE's sparse layers, Mixtral's every layer).
 *
 * Routing, per row, in moe.py `route`'s order: the router's logits (one `linear_any`, in the
 * router's format like any layer's), softmax in float32, the top-k experts by probability (largest
 * first; on a tie the lower expert), then, where the architecture says so (`renormalize`), the k
 * scores divided by their sum. Then the step's (row, choice) pairs are grouped by expert (a
 * counting sort, rows in order within an expert) and each expert that any row chose runs its
 * gate|up and down matmuls over just its rows, in `linear`'s panel layout and tiles, or, for
 * experts a weight format packed (quantization=int8, int4), their quantized rows through
 * quantized.h's `features` as `linear_any` reads a layer's: each chosen expert's weights are
 * streamed once a step, for all of its rows, and the others' never (a single stream reads the
 * active parameters, not all of them). A row's output is the score-weighted sum of its k experts'
 * outputs.
 *
 * Its scratch (after the dense step's in `work`, sized by fused_cpu.py `moe_work_per_row`), floats
 * unless said: logits [B, E] | score [B*k] | choice, slot (int32) [B*k] | start, used (int32)
 * [E + 1] each | xs [B*k, H] (the grouped rows; later their outputs) | gu [B*k, 2I] | act [B*k, I]. */
#ifndef NVLLM_MOE_STEP_H
#define NVLLM_MOE_STEP_H

struct MoeLayer {
    int64_t num_experts, top_k, intermediate, renormalize;
    Weight gate; /* the router: [num_experts, hidden], in any format, like every layer's matmul weight */
    /* each expert's gate [I, hidden] then up [I, hidden], and down [hidden, I], expert after expert,
     * expert e's data starting w13_stride * e and w2_stride * e bytes in. Float formats: packed in
     * panels, gate and up each on its own (so a panel of one lines up with the same panel of the
     * other). INT8, INT4: packed.py's rows (gate's I, then up's I), expert e's scales (and mins)
     * starting 2I x hidden / 32 (down: hidden x I / 32) values in. */
    Weight w13, w2;
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

/* rows x [rows, K] times the output features n0 .. n0 + cols - 1 (cols <= PANEL) of one expert's
 * weight of format F (data w; quantized: scales s and INT4's mins mn) into y (row stride ld) */
static inline __attribute__((always_inline)) void expert_cols(const float *x, int64_t rows, int64_t K, const char *w,
                                                              const uint16_t *s, const uint16_t *mn, int64_t n0,
                                                              int64_t cols, float *y, int64_t ld, const int F)
{
    if (F == INT8 || F == INT4) {
        const int64_t row_bytes = F == INT4 ? K / 2 : K, blocks = K / BLOCK;
        for (int64_t f = 0; f < cols; f += FEATURES)
            features(x, rows, K, (const uint8_t *)w + (n0 + f) * row_bytes, row_bytes, s + (n0 + f) * blocks,
                     F == INT4 ? mn + (n0 + f) * blocks : NULL, NULL, y + f, ld,
                     cols - f < FEATURES ? cols - f : FEATURES, F == INT4 ? Q_INT4 : Q_INT8);
        return;
    }
    panel_rows(x, rows, K, w + n0 * K * (F == F32 ? 4 : 2), NULL, cols, y, ld, F, NULL);
}

/* For each expert x in used[0..n), its rows [start[x], start[x + 1]) of xs [., K] times its
 * weight (data at w->data + x * stride bytes) into the same rows of ys, PANEL output features an
 * item: one omp for over the (expert, panel) pairs, so the step's experts share one barrier rather
 * than one each (a thread descheduled on a busy machine holds up every barrier). act NULL: the
 * weight is [N, K], ys [., N] (down). Else it is gate [N, K] then up [N, K] (in panels, each packed
 * on its own), ys [., 2N] gets both, and the same item writes act [., N] = SiLU(gate) x up for its
 * columns (gate|up and the activation, one barrier). */
static inline __attribute__((always_inline)) void experts_as(const float *xs, const int32_t *start, const int32_t *used,
                                                             int64_t n, int64_t K, const Weight *w, int64_t stride,
                                                             int64_t N, float *ys, float *act, const int F)
{
    const int quantized = F == INT8 || F == INT4;
    const int64_t panels = (N + PANEL - 1) / PANEL, ld = act ? 2 * N : N;
    const int64_t up = quantized ? N : panels * PANEL; /* up's first row: past gate's rows (its panels' padding) */
    const int64_t groups = ld * (K / BLOCK);            /* an expert's scales (and mins) */
#pragma omp for schedule(static)
    for (int64_t item = 0; item < n * panels; ++item) {
        const int64_t x = used[item / panels], p = item % panels, n0 = p * PANEL, cols = N - n0 < PANEL ? N - n0 : PANEL;
        const int64_t rows = start[x + 1] - start[x];
        const char *we = (const char *)w->data + x * stride;
        const uint16_t *s = quantized ? w->scales + x * groups : NULL, *mn = F == INT4 ? w->mins + x * groups : NULL;
        const float *xe = xs + start[x] * K;
        float *ye = ys + start[x] * ld + n0;
        expert_cols(xe, rows, K, we, s, mn, n0, cols, ye, ld, F);
        if (act) {
            expert_cols(xe, rows, K, we, s, mn, up + n0, cols, ye + N, ld, F); /* up's features n0 .. */
            float *a = act + start[x] * N + n0;
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t j = 0; j < cols; ++j) {
                    const float g = ye[r * ld + j];
                    a[r * N + j] = g / (1.f + expf(-g)) * ye[r * ld + N + j];
                }
        }
    }
}

/* experts_as for the experts' weight format */
static void experts_linear(const float *xs, const int32_t *start, const int32_t *used, int64_t n, int64_t K,
                           const Weight *w, int64_t stride, int64_t N, float *ys, float *act)
{
#ifdef SKIP_LINEAR
    return;
#endif
    switch (w->format) {
    case INT8: experts_as(xs, start, used, n, K, w, stride, N, ys, act, INT8); break;
    case INT4: experts_as(xs, start, used, n, K, w, stride, N, ys, act, INT4); break;
    case BF16: experts_as(xs, start, used, n, K, w, stride, N, ys, act, BF16); break;
    case F16: experts_as(xs, start, used, n, K, w, stride, N, ys, act, F16); break;
    default: experts_as(xs, start, used, n, K, w, stride, N, ys, act, F32);
    }
}

/* out [B, H] = the mixture of experts `e` over x [B, H]; run by every thread of the step's parallel region */
static void moe_mlp(const Model *m, const struct MoeLayer *e, const float *x, int64_t B, float *work, float *out)
{
    const int64_t H = m->hidden, E = e->num_experts, k = e->top_k, I = e->intermediate, R = B * k;
    float *logits = work, *score = logits + B * E;
    int32_t *choice = (int32_t *)(score + R), *slot = choice + R, *start = slot + R, *used = start + E + 1;
    float *xs = (float *)(used + E + 1), *gu = xs + R * H, *act = gu + R * 2 * I;
    float *ys = xs; /* the grouped rows are read only by the gate|up matmuls, which all run before the down ones */

    linear_any(x, B, H, &e->gate, NULL, E, logits, NULL, 0, NULL);
#pragma omp single
    { /* route each row; group the (row, choice) pairs by expert: start[ex] = expert ex's first grouped
       * row, slot[r] = pair r's row, used[0..used[E]) = the experts with rows; then gather the rows */
        for (int64_t b = 0; b < B; ++b) route_row(logits + b * E, E, k, e->renormalize, choice + b * k, score + b * k);
        memset(start, 0, sizeof(int32_t) * (size_t)(E + 1));
        for (int64_t r = 0; r < R; ++r) ++start[choice[r] + 1];
        int32_t n = 0;
        for (int64_t ex = 0; ex < E; ++ex) {
            if (start[ex + 1]) used[n++] = (int32_t)ex;
            if (e->counters) e->counters[ex] += start[ex + 1];
            start[ex + 1] += start[ex];
        }
        for (int64_t r = 0; r < R; ++r) slot[r] = start[choice[r]]++; /* start[ex] ends as expert ex + 1's start */
        for (int64_t ex = E; ex > 0; --ex) start[ex] = start[ex - 1];
        start[0] = 0;
        for (int64_t r = 0; r < R; ++r) memcpy(xs + slot[r] * H, x + r / k * H, sizeof(float) * (size_t)H);
        used[E] = n;
        if (e->counters) /* what the two matmuls stream: the weights, and a quantized format's scales (mins) */
            e->counters[E] += n * (e->w13_stride + e->w2_stride +
                                   (e->w13.format == INT8 ? 2 : e->w13.format == INT4 ? 4 : 0) * 3 * I * H / BLOCK);
    } /* its barrier: every thread sees the groups */
    /* the experts with rows: gate|up with SiLU(gate) x up, then down; the others are never read */
    experts_linear(xs, start, used, used[E], H, &e->w13, e->w13_stride, I, gu, act);
    experts_linear(act, start, used, used[E], I, &e->w2, e->w2_stride, H, ys, NULL);
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
