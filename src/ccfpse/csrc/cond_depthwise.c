/* Conditional depthwise 3x3 convolution (the DepthConv of CC-FPSE), forward and backward, on
 * CPU. ccfpse/native.py compiles it once per scalar type, replacing scalar_t by float or double
 * and SUFFIX by f32 or f64.
 *
 * out (N, C, h, wd) from x (N, C, xh, wd) and per-pixel kernels w (N, 9C, h, wd):
 *   out[n, c, y, q] = sum_{i,j} w[n, 9c + 3i + j, y, q] * x[n, c, y + xoff + i - 1, q + j - 1],
 * zero where x is outside its rows and columns. xoff = 0, xh = h is the same-size convolution;
 * xoff = 1 means x starts one row above the output rows (a halo row), as for a strip of rows
 * cut out of an image (xoff = 0 with xh = h + 1: a strip at the top of the image). x may be such
 * a window of a larger tensor: sn and sc are its image and channel strides (rows are wd apart);
 * out, w and the gradients are contiguous.
 *
 * One parallel loop over rows per pass. Products are added in tap order 0..8 without FMA
 * contraction (-ffp-contract=off), as the release's multiply-then-sum does.
 */
#include <stdint.h>
#define R __restrict__

void cdw_fwd_SUFFIX(const scalar_t* R x, const scalar_t* R w, scalar_t* R out, int64_t N, int64_t C,
                    int64_t h, int64_t wd, int64_t xh, int64_t xoff, int64_t sn, int64_t sc,
                    int nthreads) {
    const int64_t hw = h * wd;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < N * C * h; ++r) {
        const int64_t p = r / h, y = r % h, n = p / C, c = p % C;
        scalar_t* R o = out + p * hw + y * wd;
        for (int64_t q = 0; q < wd; ++q) o[q] = 0;
        for (int i = 0; i < 3; ++i) {
            const int64_t yy = y + xoff + i - 1;
            if (yy < 0 || yy >= xh) continue;
            const scalar_t* R xr = x + n * sn + c * sc + yy * wd;
            for (int j = 0; j < 3; ++j) {
                const scalar_t* R wr = w + (p * 9 + i * 3 + j) * hw + y * wd;
                const int64_t d = j - 1, lo = d < 0 ? 1 : 0, hi = d > 0 ? wd - 1 : wd;
                for (int64_t q = lo; q < hi; ++q) o[q] += wr[q] * xr[q + d];
            }
        }
    }
}

/* gx (N, C, xh, wd) and gw (N, 9C, h, wd) from the output gradient g (N, C, h, wd); either may be
 * null when that gradient is not needed. */
void cdw_bwd_SUFFIX(const scalar_t* R x, const scalar_t* R w, const scalar_t* R g, scalar_t* R gx,
                    scalar_t* R gw, int64_t N, int64_t C, int64_t h, int64_t wd, int64_t xh,
                    int64_t xoff, int64_t sn, int64_t sc, int nthreads) {
    const int64_t hw = h * wd;
    if (gw) {
        /* gw[k][y][q] = g[y][q] * x[y + xoff + i - 1][q + j - 1] */
        #pragma omp parallel for num_threads(nthreads) schedule(static)
        for (int64_t r = 0; r < N * C * h; ++r) {
            const int64_t p = r / h, y = r % h, n = p / C, c = p % C;
            const scalar_t* R gr = g + p * hw + y * wd;
            for (int i = 0; i < 3; ++i) {
                const int64_t yy = y + xoff + i - 1;
                for (int j = 0; j < 3; ++j) {
                    scalar_t* R o = gw + (p * 9 + i * 3 + j) * hw + y * wd;
                    if (yy < 0 || yy >= xh) {
                        for (int64_t q = 0; q < wd; ++q) o[q] = 0;
                        continue;
                    }
                    const scalar_t* R xr = x + n * sn + c * sc + yy * wd;
                    const int64_t d = j - 1, lo = d < 0 ? 1 : 0, hi = d > 0 ? wd - 1 : wd;
                    if (lo) o[0] = 0;
                    if (hi < wd) o[wd - 1] = 0;
                    for (int64_t q = lo; q < hi; ++q) o[q] = gr[q] * xr[q + d];
                }
            }
        }
    }
    if (gx) {
        /* x row yy fed output row y = yy - xoff - i + 1 through the taps (i, j). */
        const int64_t xhw = xh * wd;
        #pragma omp parallel for num_threads(nthreads) schedule(static)
        for (int64_t r = 0; r < N * C * xh; ++r) {
            const int64_t p = r / xh, yy = r % xh;
            scalar_t* R o = gx + p * xhw + yy * wd;
            for (int64_t q = 0; q < wd; ++q) o[q] = 0;
            for (int i = 0; i < 3; ++i) {
                const int64_t y = yy - xoff - i + 1;
                if (y < 0 || y >= h) continue;
                const scalar_t* R gr = g + p * hw + y * wd;
                for (int j = 0; j < 3; ++j) {
                    const scalar_t* R wr = w + (p * 9 + i * 3 + j) * hw + y * wd;
                    const int64_t d = j - 1, lo = d > 0 ? 1 : 0, hi = d < 0 ? wd - 1 : wd;
                    for (int64_t q = lo; q < hi; ++q) o[q] += wr[q - d] * gr[q - d];
                }
            }
        }
    }
}
