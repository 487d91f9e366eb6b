/* One ConvNet block after its convolution, fused: instance norm (affine), ReLU, the attention
 * power sums (over channels and over positions) and the 2x2 average pool, in one pass over each
 * pair of rows while they sit in the L1 cache; and the backward of the same. Maps are channels-last
 * (N×H×W×C: a position's C channels side by side), the layout in which oneDNN's convolutions run
 * fastest on AVX2 and AVX-512 alike, and in which every loop here runs over the channels, so it
 * vectorises. Built and loaded by fused.py, with OpenMP: loaded after PyTorch, whose libgomp.so.1
 * the loader then links it to, it runs on PyTorch's own threads (torch.set_num_threads holds for it
 * too). Each sample is one thread's, in a fixed order: the thread count changes no bit. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static inline float power(float a, int p) {
    float a2 = a * a;
    return p == 1 ? a : (p == 2 ? a2 : a2 * a2);
}

static inline float relu(float v) { return v < 0.0f ? 0.0f : v; } /* NaN stays NaN, as in PyTorch */

static inline float dpower(float a, int p) { /* d a^p / da */
    return p == 1 ? 1.0f : (p == 2 ? a * 2.0f : (a * a) * a * 4.0f);
}

/* ROWS(p_sp, p_ch) with the powers as constants (each of 1, 2, 4: the powers fused.py lets through),
 * so that its loops are compiled for them */
#define BY_POWERS(p_sp, p_ch)                                                   \
    switch (p_sp) {                                                             \
        case 1: BY_CHANNEL_POWER(1, p_ch); break;                               \
        case 2: BY_CHANNEL_POWER(2, p_ch); break;                               \
        default: BY_CHANNEL_POWER(4, p_ch);                                     \
    }
#define BY_CHANNEL_POWER(PS, p_ch)                                              \
    switch (p_ch) {                                                             \
        case 1: ROWS(PS, 1); break;                                             \
        case 2: ROWS(PS, 2); break;                                             \
        default: ROWS(PS, 4);                                                   \
    }

/* Per channel over a sample's H×W positions, in one pass: the mean and 1/sqrt(var + eps) (biased
 * variance, as instance norm) from the sums of x - k and of its square, k the first position's
 * value (the shift keeps the squares from cancelling), each row summed apart and the rows then
 * added (two levels: a long sum is not one chain of rounding). scratch: 5C floats. */
static void moments(const float *restrict x, int64_t H, int64_t W, int64_t C, float eps,
                    float *restrict scratch, float *restrict mean, float *restrict rstd) {
    float *restrict s = scratch, *restrict q = s + C, *restrict rs = q + C, *restrict rq = rs + C;
    float *restrict k = rq + C;
    for (int64_t c = 0; c < C; c++) {
        k[c] = x[c];
        s[c] = q[c] = 0.0f;
    }
    for (int64_t h = 0; h < H; h++) {
        for (int64_t c = 0; c < C; c++) rs[c] = rq[c] = 0.0f;
        for (int64_t w = 0; w < W; w++) {
            const float *restrict r = x + (h * W + w) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                const float d = r[c] - k[c];
                rs[c] += d;
                rq[c] += d * d;
            }
        }
        for (int64_t c = 0; c < C; c++) {
            s[c] += rs[c];
            q[c] += rq[c];
        }
    }
    const float n = (float)(H * W);
    for (int64_t c = 0; c < C; c++) {
        const float d = s[c] / n, var = q[c] / n - d * d;
        mean[c] = k[c] + d;
        rstd[c] = 1.0f / sqrtf((var > 0.0f ? var : 0.0f) + eps);
    }
}

/* n positions (C channels each): the activation into a, Σ_c a^p_sp of each position into sp
 * (unless NULL), Σ over these positions of a^p_ch into ch (unless NULL); inlined with the powers
 * as constants */
static inline __attribute__((always_inline)) void rows_forward(
    const float *restrict x, int64_t n, int64_t C, const float *restrict scale,
    const float *restrict shift, const int p_sp, const int p_ch, float *restrict a,
    float *restrict sp, float *restrict ch) {
    if (ch) for (int64_t c = 0; c < C; c++) ch[c] = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        const float *restrict xi = x + i * C;
        float *restrict ai = a + i * C;
        float s = 0.0f;
        for (int64_t c = 0; c < C; c++) {
            const float v = relu(xi[c] * scale[c] + shift[c]);
            ai[c] = v;
            if (sp) s += power(v, p_sp);
            if (ch) ch[c] += power(v, p_ch);
        }
        if (sp) sp[i] = s;
    }
}

/* y: the convolution's output, N×H×W×C; mean, rstd: N×C, kept for the backward; pooled:
 * N×H/2×W/2×C; sp: N×H×W; ch: N×C (sp, ch NULL: not made). Samples over the threads. */
void block_forward(const float *y, int64_t N, int64_t C, int64_t H, int64_t W, const float *gamma,
                   const float *beta, float eps, int p_sp, int p_ch, float *mean, float *rstd,
                   float *pooled, float *sp, float *ch) {
    const int64_t hw = H * W, W2 = W / 2;
#pragma omp parallel
    {
        float *buf = malloc(sizeof(float) * (2 * W * C + 8 * C));
        float *a = buf, *scale = a + 2 * W * C, *shift = scale + C, *rows = shift + C, *scratch = rows + C;
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            const float *x = y + n * hw * C;
            float *m = mean + n * C, *r = rstd + n * C, *chn = ch ? ch + n * C : 0;
            moments(x, H, W, C, eps, scratch, m, r);
            for (int64_t c = 0; c < C; c++) {
                scale[c] = r[c] * gamma[c];
                shift[c] = beta[c] - m[c] * scale[c];
                if (chn) chn[c] = 0.0f;
            }
            for (int64_t i = 0; i < H / 2; i++) { /* rows 2i and 2i+1 */
                float *spi = sp ? sp + n * hw + 2 * i * W : 0, *rs = chn ? rows : 0;
#define ROWS(PS, PC) rows_forward(x + 2 * i * W * C, 2 * W, C, scale, shift, PS, PC, a, spi, rs)
                BY_POWERS(p_sp, p_ch);
#undef ROWS
                if (chn) for (int64_t c = 0; c < C; c++) chn[c] += rows[c];
                float *o = pooled + (n * (hw / 4) + i * W2) * C;
                for (int64_t j = 0; j < W2; j++) { /* rows added first, then columns (the engine's pool order) */
                    const float *a0 = a + 2 * j * C, *a1 = a0 + W * C;
                    for (int64_t c = 0; c < C; c++)
                        o[j * C + c] = ((a0[c] + a1[c]) + (a0[C + c] + a1[C + c])) * 0.25f;
                }
            }
        }
        free(buf);
    }
}

/* the gradient of the norm's output at x (a channel's scale and shift; gp, gs, gc: the gradients of
 * the pooled map, the spatial sum and the channel sum there) */
static inline __attribute__((always_inline)) float norm_grad(
    float x, float scale, float shift, float gp, float gs, float gc, const int p_sp, const int p_ch) {
    const float a = relu(x * scale + shift);
    const float g = gp * 0.25f + dpower(a, p_sp) * gs + dpower(a, p_ch) * gc;
    return a > 0.0f ? g : 0.0f;
}

/* one row of W positions, the norm's output gradient g recomputed (cheaper than a pass over a
 * stored copy): with gy NULL, Σ g and Σ g·(x - m) per channel added into s1 and s2; else the input
 * gradient scale·(g - s1 - (x - m)·s2) written into gy (s1, s2 then the sums' scaled means).
 * Inlined with the powers as constants. */
static inline __attribute__((always_inline)) void row_backward(
    const float *restrict x, int64_t W, int64_t C, const float *restrict m,
    const float *restrict scale, const float *restrict shift, const int p_sp, const int p_ch,
    const float *restrict gp, const float *restrict gs, const float *restrict gc,
    float *restrict s1, float *restrict s2, float *restrict gy) {
    for (int64_t w = 0; w < W; w++) {
        const float *restrict xw = x + w * C, *restrict gpw = gp + (w / 2) * C;
        const float gsw = gs[w];
        if (gy) {
            float *restrict gyw = gy + w * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                const float g = norm_grad(xw[c], scale[c], shift[c], gpw[c], gsw, gc[c], p_sp, p_ch);
                gyw[c] = scale[c] * (g - s1[c] - (xw[c] - m[c]) * s2[c]);
            }
        } else {
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                const float g = norm_grad(xw[c], scale[c], shift[c], gpw[c], gsw, gc[c], p_sp, p_ch);
                s1[c] += g;
                s2[c] += g * (xw[c] - m[c]);
            }
        }
    }
}

/* g_pooled (N×H/2×W/2×C), g_sp (N×H×W), g_ch (N×C): the gradients of block_forward's outputs
 * (NULL: none, read as zeros: `zeros` holds at least max(H·W, H/2·W/2·C) of them); g_y: N×H×W×C;
 * dgamma, dbeta: N×C, each sample's share of the norm's parameter gradients (NULL: not wanted).
 * Samples over the threads; two passes over each, the first for the sums, the second writes. */
void block_backward(const float *y, int64_t N, int64_t C, int64_t H, int64_t W, const float *gamma,
                    const float *beta, const float *mean, const float *rstd, int p_sp, int p_ch,
                    const float *g_pooled, const float *g_sp, const float *g_ch, const float *zeros,
                    float *g_y, float *dgamma, float *dbeta) {
    const int64_t hw = H * W;
#pragma omp parallel
    {
        float *buf = malloc(sizeof(float) * 6 * C);
        float *scale = buf, *shift = buf + C, *s1 = buf + 2 * C, *s2 = buf + 3 * C;
        float *r1 = buf + 4 * C, *r2 = buf + 5 * C;
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            const float *x = y + n * hw * C, *m = mean + n * C, *r = rstd + n * C;
            const float *gp = g_pooled ? g_pooled + n * (hw / 4) * C : zeros;
            const float *gs = g_sp ? g_sp + n * hw : zeros, *gc = g_ch ? g_ch + n * C : zeros;
            for (int64_t c = 0; c < C; c++) {
                scale[c] = r[c] * gamma[c];
                shift[c] = beta[c] - m[c] * scale[c];
                s1[c] = s2[c] = 0.0f;
            }
            for (int64_t h = 0; h < H; h++) { /* each row's sums apart, then added (two levels) */
                for (int64_t c = 0; c < C; c++) r1[c] = r2[c] = 0.0f;
#define ROWS(PS, PC) row_backward(x + h * W * C, W, C, m, scale, shift, PS, PC, gp + (h / 2) * (W / 2) * C, \
                                  gs + h * W, gc, r1, r2, 0)
                BY_POWERS(p_sp, p_ch);
#undef ROWS
                for (int64_t c = 0; c < C; c++) {
                    s1[c] += r1[c];
                    s2[c] += r2[c];
                }
            }
            for (int64_t c = 0; c < C; c++) {
                if (dgamma) dgamma[n * C + c] = s2[c] * r[c];
                if (dbeta) dbeta[n * C + c] = s1[c];
                s1[c] /= (float)hw;
                s2[c] *= r[c] * r[c] / (float)hw;
            }
            for (int64_t h = 0; h < H; h++) {
#define ROWS(PS, PC) row_backward(x + h * W * C, W, C, m, scale, shift, PS, PC, gp + (h / 2) * (W / 2) * C, \
                                  gs + h * W, gc, s1, s2, g_y + (n * hw + h * W) * C)
                BY_POWERS(p_sp, p_ch);
#undef ROWS
            }
        }
        free(buf);
    }
}
