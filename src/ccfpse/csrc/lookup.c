/* Convolutions of one-hot label maps as table look-ups (ccfpse/nn/label_conv.py), float32.
 *
 * A label map's k x k neighbourhoods are numbered ("patterns", U of them); cls[u * kk + tap]
 * is the class under tap `tap` of pattern u (S where the tap lies outside the image), and
 * inv[j] the pattern of pixel j. With w the (out, S, k, k) weight (row stride ws per output
 * channel; taps contiguous):
 *
 *   lookup_patterns     pp[c][u] = sum over taps of w[c][cls][tap]   (each pattern's output)
 *   lookup_gather       y[i][c][j] = pp[c][inv[i][j]]                (each pixel's output)
 *   lookup_scatter      gpp[c][inv[i][j]] += gy[i][c][j]             (backward of the gather)
 *   lookup_weight_grad  gw[c][cls][tap] += gpp[c][u]                 (backward of the patterns)
 *
 * Work is split over blocks of output channels, so no two threads write the same row; a
 * block's rows of pp and w (U and S * kk floats a channel) stay in cache while it is done.
 */
#include <stdint.h>

#define R __restrict__

/* Channels are done LOOKUP_WIDTH at a time: the taps' classes are read once for all of them, and
 * in the scatter and the weight gradient the adds of consecutive pixels or patterns, which often
 * hit the same address, form that many independent chains instead of one. */
#define LOOKUP_WIDTH 8

/* the channels c0 .. c0 + width - 1 of a block */
static inline int64_t block_width(int64_t out, int64_t c0) {
    return out - c0 < LOOKUP_WIDTH ? out - c0 : LOOKUP_WIDTH;
}

void lookup_patterns_f32(const float *R w, int64_t ws, const int32_t *R cls, float *R pp, int64_t out,
                         int64_t u, int64_t kk, int64_t s, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t c0 = 0; c0 < out; c0 += LOOKUP_WIDTH) {
        const int64_t width = block_width(out, c0);
        for (int64_t q = 0; q < u; ++q) {
            float acc[LOOKUP_WIDTH] = {0.0f};
            const int32_t *R t = cls + q * kk;
            for (int64_t tap = 0; tap < kk; ++tap) {
                if (t[tap] >= s) continue;
                const float *R wt = w + c0 * ws + t[tap] * kk + tap;
                for (int64_t r = 0; r < width; ++r) acc[r] += wt[r * ws];
            }
            for (int64_t r = 0; r < width; ++r) pp[(c0 + r) * u + q] = acc[r];
        }
    }
}

void lookup_gather_f32(const float *R pp, const int32_t *R inv, float *R y, int64_t n, int64_t out, int64_t u,
                       int64_t p, int64_t inv_stride, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t ic = 0; ic < n * out; ++ic) {
        const int64_t i = ic / out, c = ic % out;
        const float *R row = pp + c * u;
        const int32_t *R idx = inv + i * inv_stride;
        float *R dst = y + ic * p;
        for (int64_t j = 0; j < p; ++j) dst[j] = row[idx[j]];
    }
}

void lookup_scatter_f32(const float *R gy, const int32_t *R inv, float *R gpp, int64_t n, int64_t out, int64_t u,
                        int64_t p, int64_t inv_stride, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t c0 = 0; c0 < out; c0 += LOOKUP_WIDTH) {
        const int64_t width = block_width(out, c0);
        for (int64_t i = 0; i < n; ++i) {
            const int32_t *R idx = inv + i * inv_stride;
            const float *R g = gy + (i * out + c0) * p;
            float *R acc = gpp + c0 * u;
            if (width == LOOKUP_WIDTH) { /* a fixed count the compiler unrolls */
                for (int64_t j = 0; j < p; ++j) {
                    const int64_t q = idx[j];
                    for (int64_t r = 0; r < LOOKUP_WIDTH; ++r) acc[r * u + q] += g[r * p + j];
                }
            } else {
                for (int64_t j = 0; j < p; ++j) {
                    const int64_t q = idx[j];
                    for (int64_t r = 0; r < width; ++r) acc[r * u + q] += g[r * p + j];
                }
            }
        }
    }
}

void lookup_weight_grad_f32(const float *R gpp, const int32_t *R cls, float *R gw, int64_t out, int64_t u,
                            int64_t kk, int64_t s, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t c0 = 0; c0 < out; c0 += LOOKUP_WIDTH) {
        const int64_t width = block_width(out, c0);
        for (int64_t q = 0; q < u; ++q) {
            float g[LOOKUP_WIDTH];
            for (int64_t r = 0; r < width; ++r) g[r] = gpp[(c0 + r) * u + q];
            const int32_t *R t = cls + q * kk;
            for (int64_t tap = 0; tap < kk; ++tap) {
                if (t[tap] >= s) continue;
                float *R dst = gw + c0 * s * kk + t[tap] * kk + tap;
                for (int64_t r = 0; r < width; ++r) dst[r * s * kk] += g[r];
            }
        }
    }
}
