/* Per-channel mean and biased variance of a float32 (N, C, HW) tensor, BatchNorm's batch
 * statistics. Two passes over each channel (the mean, then the squared deviations from it),
 * both accumulated in double, so no cancellation whatever the mean. torch.var_mean over dims
 * (0, 2, 3) gives the same to float32 rounding, but took 6.3 ms on a 2 x 64 x 128 x 128 map
 * where this takes 0.49 ms (2-core Xeon, BENCHMARKS.md).
 *
 * Each pass keeps LANES independent partial sums, so that the compiler vectorises it without
 * reassociating additions (-ffp-contract=off, no -ffast-math); the partial sums are added in a
 * fixed order, so results do not depend on the thread count. One channel per work item.
 */
#include <stdint.h>
#define R __restrict__
#define LANES 16

static double sum_f32(const float *R p, int64_t n) {
    double acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; ++j) acc[j] += p[i + j];
    for (int j = 0; i < n; ++i, ++j) acc[j] += p[i];
    double s = 0;
    for (int j = 0; j < LANES; ++j) s += acc[j];
    return s;
}

static double squared_deviations_f32(const float *R p, int64_t n, double mean) {
    double acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; ++j) {
            const double d = p[i + j] - mean;
            acc[j] += d * d;
        }
    for (int j = 0; i < n; ++i, ++j) {
        const double d = p[i] - mean;
        acc[j] += d * d;
    }
    double s = 0;
    for (int j = 0; j < LANES; ++j) s += acc[j];
    return s;
}

void channel_moments_f32(const float *R x, float *R mean, float *R var, int64_t N, int64_t C, int64_t HW,
                         int nthreads) {
    const double count = (double)(N * HW);
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t c = 0; c < C; ++c) {
        double s = 0;
        for (int64_t n = 0; n < N; ++n) s += sum_f32(x + (n * C + c) * HW, HW);
        const double m = s / count;
        double q = 0;
        for (int64_t n = 0; n < N; ++n) q += squared_deviations_f32(x + (n * C + c) * HW, HW, m);
        mean[c] = (float)m;
        var[c] = (float)(q / count);
    }
}
