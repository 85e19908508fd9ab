/* One Adam step for a float32 parameter, in a single pass and without temporaries:
 *   v = beta2 v + (1 - beta2) g^2;  m = m + (1 - beta1) (g - m)   (m may be null: beta1 = 0)
 *   p -= step_size * (m or g) / (sqrt(v) / bc2_sqrt + eps)
 * the arithmetic of torch.optim.Adam (no weight decay, no AMSGrad) in its order of operations;
 * only the square root differs in the last bit where torch's vectorised one is not correctly
 * rounded.
 *
 * v below FLT_MIN (denormal) enters the square root as 0: sqrt of a denormal takes a slow path
 * (measured 30x slower in torch's vectorised sqrt), and it cannot change the result, since
 * sqrt(v) / bc2_sqrt < 4e-19 is below half an ulp of any eps >= 1e-10 in float32.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>

#define R __restrict__

static void adam_range(float *R p, const float *R g, float *R v, float *R m, int64_t n, float step_size,
                       float beta1, float beta2, float eps, float bc2_sqrt) {
    const float one_minus_b2 = 1.0f - beta2, one_minus_b1 = 1.0f - beta1;
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i];
        const float vi = fmaf(one_minus_b2 * gi, gi, v[i] * beta2); /* torch's addcmul is fused */
        v[i] = vi;
        const float denom = sqrtf(vi < FLT_MIN ? 0.0f : vi) / bc2_sqrt + eps;
        float num = gi;
        if (m) { /* torch's lerp(m, g, w), w = 1 - beta1 */
            num = one_minus_b1 < 0.5f ? m[i] + one_minus_b1 * (gi - m[i]) : gi - (gi - m[i]) * beta1;
            m[i] = num;
        }
        p[i] = p[i] + -step_size * (num / denom);
    }
}

void adam_step_f32(float *R p, const float *R g, float *R v, float *R m, int64_t n, float step_size,
                   float beta1, float beta2, float eps, float bc2_sqrt, int nthreads) {
    const int64_t block = 16384;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t b = 0; b < (n + block - 1) / block; ++b) {
        const int64_t lo = b * block, len = n - lo < block ? n - lo : block;
        adam_range(p + lo, g + lo, v + lo, m ? m + lo : m, len, step_size, beta1, beta2, eps, bc2_sqrt);
    }
}
