/* One ConvNet block after its convolution, fused: instance norm (affine), ReLU, the attention
 * power sums (over channels and over positions) and the 2x2 average pool, in one pass over each
 * H x W plane while it sits in the L1 cache; and the backward of the same. Built and loaded by
 * fused.py, with OpenMP: loaded after PyTorch, whose libgomp.so.1 the loader then links it to, it
 * runs on PyTorch's own threads (torch.set_num_threads holds for it too). */
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

/* PLANE(p_sp, p_ch) with the powers as constants where they are the common ones (the same power
 * for both sums: 1, 2 or 4), so that its loops are compiled for them */
#define BY_POWERS(p_sp, p_ch)                                   \
    switch ((p_sp) * 8 + (p_ch)) {                              \
        case 1 * 8 + 1: PLANE(1, 1); break;                     \
        case 2 * 8 + 2: PLANE(2, 2); break;                     \
        case 4 * 8 + 4: PLANE(4, 4); break;                     \
        default: PLANE(p_sp, p_ch);                             \
    }

/* Sums over a plane in LANES partial sums, then added: independent accumulators, so that a
 * reduction is not one chain of dependent adds. */
#define LANES 64
#define LANE_SUM(acc, n, body)                                                                      \
    do {                                                                                            \
        float part_[LANES] = {0};                                                                   \
        int64_t i = 0;                                                                              \
        for (; i + LANES <= (n); i += LANES)                                                        \
            for (int64_t l_ = 0; l_ < LANES; l_++) { const int64_t j = i + l_; part_[l_] += (body); } \
        for (int64_t l_ = 0; l_ < LANES; l_++) acc += part_[l_];                                    \
        for (int64_t j = i; j < (n); j++) acc += (body);                                            \
    } while (0)

/* mean and 1/sqrt(var + eps) of one plane (biased variance, as instance norm), two passes */
static void moments(const float *x, int64_t hw, float eps, float *mean, float *rstd) {
    float s = 0.0f, q = 0.0f;
    LANE_SUM(s, hw, x[j]);
    const float m = s / (float)hw;
    LANE_SUM(q, hw, (x[j] - m) * (x[j] - m));
    *mean = m;
    *rstd = 1.0f / sqrtf(q / (float)hw + eps);
}

/* one plane: its activation a into `a` (H*W + W scratch), Σ a^p_sp added into sp (unless NULL),
 * Σ_hw a^p_ch into *ch (unless NULL), the 2×2 mean into pooled (unless NULL); inlined with the
 * powers as constants */
static inline __attribute__((always_inline)) void plane_forward(
    const float *x, int64_t H, int64_t W, float scale, float shift, const int p_sp, const int p_ch,
    float *a, float *pooled, float *sp, float *ch) {
    const int64_t hw = H * W;
    float s = 0.0f;
    if (sp && ch) { /* one pass: the activation, its powers into both sums */
        for (int64_t i = 0; i < hw; i++) {
            const float v = relu(x[i] * scale + shift);
            a[i] = v;
            sp[i] += power(v, p_sp);
            s += power(v, p_ch);
        }
    } else {
        for (int64_t i = 0; i < hw; i++) a[i] = relu(x[i] * scale + shift);
        if (sp) for (int64_t i = 0; i < hw; i++) sp[i] += power(a[i], p_sp);
        if (ch) for (int64_t i = 0; i < hw; i++) s += power(a[i], p_ch);
    }
    if (ch) *ch = s;
    if (pooled) {
        float *t = a + hw; /* a row's pairs: rows added first, then columns (the engine's pool order) */
        for (int64_t i = 0; i < H / 2; i++) {
            const float *r0 = a + 2 * i * W, *r1 = r0 + W;
            for (int64_t j = 0; j < W; j++) t[j] = r0[j] + r1[j];
            for (int64_t j = 0; j < W / 2; j++) pooled[i * (W / 2) + j] = (t[2 * j] + t[2 * j + 1]) * 0.25f;
        }
    }
}

/* y: the convolution's output, N×C×H×W; mean, rstd: N×C, kept for the backward; pooled:
 * N×C×H/2×W/2; sp: N×H×W; ch: N×C. Samples over the threads (a sample's planes all add into its sp). */
void block_forward(const float *y, int64_t N, int64_t C, int64_t H, int64_t W, const float *gamma,
                   const float *beta, float eps, int p_sp, int p_ch, float *mean, float *rstd,
                   float *pooled, float *sp, float *ch) {
    const int64_t hw = H * W;
#pragma omp parallel
    {
        float *buf = malloc(sizeof(float) * (hw + W));
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            float *spn = sp ? sp + n * hw : 0;
            if (spn) for (int64_t i = 0; i < hw; i++) spn[i] = 0.0f;
            for (int64_t c = 0; c < C; c++) {
                const int64_t k = n * C + c;
                const float *x = y + k * hw;
                float m, r;
                moments(x, hw, eps, &m, &r);
                mean[k] = m;
                rstd[k] = r;
                const float scale = r * gamma[c], shift = beta[c] - m * scale;
                float *o = pooled + k * (hw / 4), *chk = ch ? ch + k : 0;
#define PLANE(PS, PC) plane_forward(x, H, W, scale, shift, PS, PC, buf, o, spn, chk)
                BY_POWERS(p_sp, p_ch);
#undef PLANE
            }
        }
        free(buf);
    }
}

/* one plane's gradient; inlined with the powers as constants, so that the loop vectorises. Into
 * *dgamma and *dbeta (unless NULL) the plane's share of the norm's weight and bias gradients. */
static inline __attribute__((always_inline)) void plane_backward(
    const float *x, int64_t H, int64_t W, float m, float r, float gamma, float beta, const int p_sp,
    const int p_ch, const float *gp, const float *gs, float gc, float *g_y, float *dgamma,
    float *dbeta, float *buf, float *row) {
    const int64_t hw = H * W;
    const float scale = r * gamma, shift = beta - m * scale;
    for (int64_t h = 0; h < H; h++) {
        const float *xr = x + h * W, *gsr = gs + h * W, *gpr = gp + (h / 2) * (W / 2);
        float *br = buf + h * W;
        for (int64_t j = 0; j < W / 2; j++) row[2 * j] = row[2 * j + 1] = gpr[j] * 0.25f;
        for (int64_t j = 0; j < W; j++) {
            const float a = relu(xr[j] * scale + shift);
            const float g = row[j] + dpower(a, p_sp) * gsr[j] + dpower(a, p_ch) * gc;
            br[j] = a > 0.0f ? g : 0.0f; /* the gradient of the norm's output */
        }
    }
    float s1 = 0.0f, s2 = 0.0f;
    LANE_SUM(s1, hw, buf[j]);
    LANE_SUM(s2, hw, buf[j] * (x[j] - m));
    if (dgamma) *dgamma = s2 * r;
    if (dbeta) *dbeta = s1;
    const float k1 = s1 / (float)hw, k2 = s2 * r * r / (float)hw, rg = r * gamma;
    for (int64_t i = 0; i < hw; i++) g_y[i] = rg * (buf[i] - k1 - (x[i] - m) * k2);
}

/* g_pooled, g_sp, g_ch: the gradients of block_forward's outputs (NULL: none, as zeros);
 * zeros: H*W zeros; dgamma, dbeta: N×C, each plane's share of the norm's parameter gradients
 * (NULL: not wanted). Planes over the threads. */
void block_backward(const float *y, int64_t N, int64_t C, int64_t H, int64_t W, const float *gamma,
                    const float *beta, const float *mean, const float *rstd, int p_sp, int p_ch,
                    const float *g_pooled, const float *g_sp, const float *g_ch, const float *zeros,
                    float *g_y, float *dgamma, float *dbeta) {
    const int64_t hw = H * W;
#pragma omp parallel
    {
        float *buf = malloc(sizeof(float) * (hw + W));
#pragma omp for schedule(static)
        for (int64_t k = 0; k < N * C; k++) {
            const int64_t n = k / C, c = k % C;
            const float *gp = g_pooled ? g_pooled + k * (hw / 4) : zeros;
            const float *gs = g_sp ? g_sp + n * hw : zeros;
            const float gc = g_ch ? g_ch[k] : 0.0f;
            float *dg = dgamma ? dgamma + k : 0, *db = dbeta ? dbeta + k : 0;
#define PLANE(PS, PC) plane_backward(y + k * hw, H, W, mean[k], rstd[k], gamma[c], beta[c], PS, PC, \
                                     gp, gs, gc, g_y + k * hw, dg, db, buf, buf + hw)
            BY_POWERS(p_sp, p_ch);
#undef PLANE
        }
        free(buf);
    }
}
