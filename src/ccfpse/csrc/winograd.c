/* Tile transforms of the Winograd convolution F(4x4, 3x3) (Lavin & Gray, 2016; interpolation
 * points 0, +-1, +-2 and infinity), float32. The channel products in the transformed domain are
 * 36 matrix products that the caller runs with torch.bmm; here are only the four transforms:
 *
 *   wino_input     V = B^T d B  of every 6x6 input tile          (forward, and for dW)
 *   wino_output    y = A^T m A  of every 6x6 product tile, + bias  (forward)
 *   wino_output_t  the transpose of wino_output                   (backward: dM from dY)
 *   wino_input_t   the transpose of wino_input, added into dX      (backward: dX from dV)
 *
 * Geometry, for x of (N, C, H, W) and Ho output rows of W columns: output tile (ty, tx) is rows
 * 4ty..4ty+3 and columns 4tx..4tx+3; its input tile is rows 4ty-ph .. 4ty-ph+5 and columns
 * 4tx-1 .. 4tx+4, zero outside x. So ph is the zero padding above x (0 or 1); the padding below
 * follows from Ho (Ho = H + 2 ph - 2 is the usual "same" convolution, padding 1 all round). x may
 * be a window of rows of a larger tensor: sn and sc are its image and channel strides (rows are
 * W apart). A call handles the tile rows [ty0, ty0 + nty) of all N
 * images. Transformed tensors (V, M and their gradients) are laid out [36][channels][tiles]
 * with tile t = (n * nty + ty - ty0) * ntx + tx: 36 contiguous row-major matrices, which
 * torch.bmm multiplies in one batched call (callers keep a block small enough to stay in
 * cache between the product and the transform). The
 * output transforms handle K of the ky channels of y (or of its gradient gy), whose pointer the
 * caller offsets to the first of them, so that a block of output channels is done at a time.
 *
 * Every loop over a row of pixels or of tiles is a plain loop over contiguous memory that the
 * compiler vectorises; parallel loops are over (image, channel, tile row) work items that write
 * disjoint memory (wino_input_t: over whole planes, since neighbouring tiles overlap there).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define R __restrict__

/* The row loops live in small functions with restrict-qualified arguments: inside the OpenMP
 * regions GCC cannot prove the pointers distinct and would not vectorise them. */

/* six rows d -> B^T d (vertical input transform), n columns */
static void bt_rows(const float *R d0, const float *R d1, const float *R d2, const float *R d3,
                    const float *R d4, const float *R d5, float *R o0, float *R o1, float *R o2,
                    float *R o3, float *R o4, float *R o5, int64_t n) {
    for (int64_t q = 0; q < n; ++q) {
        const float a = d1[q], b = d2[q], c = d3[q], e = d4[q];
        o0[q] = 4.0f * d0[q] - 5.0f * b + e;
        o1[q] = -4.0f * (a + b) + c + e;
        o2[q] = 4.0f * (a - b) - c + e;
        o3[q] = 2.0f * (c - a) - b + e;
        o4[q] = 2.0f * (a - c) - b + e;
        o5[q] = 4.0f * a - 5.0f * c + d5[q];
    }
}

/* B^T along a row of tiles: tile tx reads u[4tx .. 4tx+5], writes o_j[tx] */
static void bt_tiles(const float *R u, float *R o0, float *R o1, float *R o2, float *R o3,
                     float *R o4, float *R o5, int64_t ntx) {
    for (int64_t tx = 0; tx < ntx; ++tx) {
        const float *d = u + 4 * tx;
        const float a = d[1], b = d[2], c = d[3], e = d[4];
        o0[tx] = 4.0f * d[0] - 5.0f * b + e;
        o1[tx] = -4.0f * (a + b) + c + e;
        o2[tx] = 4.0f * (a - b) - c + e;
        o3[tx] = 2.0f * (c - a) - b + e;
        o4[tx] = 2.0f * (a - c) - b + e;
        o5[tx] = 4.0f * a - 5.0f * c + d[5];
    }
}

/* A^T along a row of tiles: six transformed values per tile -> four pixels h[4tx .. 4tx+3] */
static void at_tiles(const float *R m0, const float *R m1, const float *R m2, const float *R m3,
                     const float *R m4, const float *R m5, float *R h, int64_t ntx) {
    for (int64_t tx = 0; tx < ntx; ++tx) {
        const float s12 = m1[tx] + m2[tx], d12 = m1[tx] - m2[tx];
        const float s34 = m3[tx] + m4[tx], d34 = m3[tx] - m4[tx];
        h[4 * tx] = m0[tx] + s12 + s34;
        h[4 * tx + 1] = d12 + 2.0f * d34;
        h[4 * tx + 2] = s12 + 4.0f * s34;
        h[4 * tx + 3] = d12 + 8.0f * d34 + m5[tx];
    }
}

/* A^T down the six rows of a tile row -> four output rows, plus bias */
static void at_rows(const float *R m0, const float *R m1, const float *R m2, const float *R m3,
                    const float *R m4, const float *R m5, float *R y0, float *R y1, float *R y2,
                    float *R y3, float bias, int64_t n) {
    for (int64_t q = 0; q < n; ++q) {
        const float s12 = m1[q] + m2[q], d12 = m1[q] - m2[q];
        const float s34 = m3[q] + m4[q], d34 = m3[q] - m4[q];
        y0[q] = m0[q] + s12 + s34 + bias;
        y1[q] = d12 + 2.0f * d34 + bias;
        y2[q] = s12 + 4.0f * s34 + bias;
        y3[q] = d12 + 8.0f * d34 + m5[q] + bias;
    }
}

/* A (the transpose of A^T) down four rows -> six rows */
static void a_rows(const float *R g0, const float *R g1, const float *R g2, const float *R g3,
                   float *R o0, float *R o1, float *R o2, float *R o3, float *R o4, float *R o5,
                   int64_t n) {
    for (int64_t q = 0; q < n; ++q) {
        const float s02 = g0[q] + g2[q], s13 = g1[q] + g3[q];
        const float f02 = g0[q] + 4.0f * g2[q], f13 = 2.0f * g1[q] + 8.0f * g3[q];
        o0[q] = g0[q];
        o1[q] = s02 + s13;
        o2[q] = s02 - s13;
        o3[q] = f02 + f13;
        o4[q] = f02 - f13;
        o5[q] = g3[q];
    }
}

/* A along a row of tiles: four values h[4tx .. 4tx+3] -> six transformed values o_j[tx] */
static void a_tiles(const float *R h, float *R o0, float *R o1, float *R o2, float *R o3,
                    float *R o4, float *R o5, int64_t ntx) {
    for (int64_t tx = 0; tx < ntx; ++tx) {
        const float *g = h + 4 * tx;
        const float s02 = g[0] + g[2], s13 = g[1] + g[3];
        const float f02 = g[0] + 4.0f * g[2], f13 = 2.0f * g[1] + 8.0f * g[3];
        o0[tx] = g[0];
        o1[tx] = s02 + s13;
        o2[tx] = s02 - s13;
        o3[tx] = f02 + f13;
        o4[tx] = f02 - f13;
        o5[tx] = g[3];
    }
}

/* B (the transpose of B^T) of six values v_i -> six values d_r; in place over n entries */
static void b_1d(const float *R v0, const float *R v1, const float *R v2, const float *R v3,
                 const float *R v4, const float *R v5, float *R d0, float *R d1, float *R d2,
                 float *R d3, float *R d4, float *R d5, int64_t n) {
    for (int64_t q = 0; q < n; ++q) {
        d0[q] = 4.0f * v0[q];
        d1[q] = 4.0f * (v2[q] - v1[q] + v5[q]) + 2.0f * (v4[q] - v3[q]);
        d2[q] = -5.0f * v0[q] - 4.0f * (v1[q] + v2[q]) - v3[q] - v4[q];
        d3[q] = v1[q] - v2[q] + 2.0f * (v3[q] - v4[q]) - 5.0f * v5[q];
        d4[q] = v0[q] + v1[q] + v2[q] + v3[q] + v4[q];
        d5[q] = v5[q];
    }
}

/* B down the six rows of a tile row, added into six rows of dx (n columns) */
static void b_rows_add(const float *R v0, const float *R v1, const float *R v2, const float *R v3,
                       const float *R v4, const float *R v5, float *d0, float *d1, float *d2,
                       float *d3, float *d4, float *d5, int64_t n) {
    /* d0..d5 are distinct rows except when several are the scratch row: no restrict there */
    for (int64_t q = 0; q < n; ++q) {
        const float a0 = v0[q], a1 = v1[q], a2 = v2[q], a3 = v3[q], a4 = v4[q], a5 = v5[q];
        d0[q] += 4.0f * a0;
        d1[q] += 4.0f * (a2 - a1 + a5) + 2.0f * (a4 - a3);
        d2[q] += -5.0f * a0 - 4.0f * (a1 + a2) - a3 - a4;
        d3[q] += a1 - a2 + 2.0f * (a3 - a4) - 5.0f * a5;
        d4[q] += a0 + a1 + a2 + a3 + a4;
        d5[q] += a5;
    }
}

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

void wino_input(const float *R x, float *R v, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sn,
                int64_t sc, int64_t ph, int64_t ty0, int64_t nty, int64_t ntx, int nthreads) {
    const int64_t T = N * nty * ntx, ncols = 4 * ntx + 2;
    #pragma omp parallel num_threads(nthreads)
    {
        /* u: the six vertically transformed rows of one tile row (column q = x column q - 1);
         * z: a row of zeros for input rows outside x. */
        float *u = malloc(sizeof(float) * 7 * ncols);
        float *z = u + 6 * ncols;
        memset(z, 0, sizeof(float) * ncols);
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < N * C * nty; ++item) {
            const int64_t n = item / (C * nty), c = (item / nty) % C, ty = ty0 + item % nty;
            const float *rows[6];
            for (int r = 0; r < 6; ++r) {
                const int64_t yy = 4 * ty - ph + r;
                rows[r] = (yy >= 0 && yy < H) ? x + n * sn + c * sc + yy * W : z;
            }
            /* columns 1..W of u come from x; column 0 and those past W are the zero padding */
            bt_rows(rows[0], rows[1], rows[2], rows[3], rows[4], rows[5], u + 1, u + ncols + 1,
                    u + 2 * ncols + 1, u + 3 * ncols + 1, u + 4 * ncols + 1, u + 5 * ncols + 1, W);
            for (int i = 0; i < 6; ++i) {
                float *ui = u + i * ncols;
                ui[0] = 0.0f;
                for (int64_t q = W + 1; q < ncols; ++q) ui[q] = 0.0f;
            }
            float *o = v + c * T + (n * nty + ty - ty0) * ntx;
            const int64_t ps = C * T; /* position stride */
            for (int i = 0; i < 6; ++i)
                bt_tiles(u + i * ncols, o + (6 * i) * ps, o + (6 * i + 1) * ps, o + (6 * i + 2) * ps,
                         o + (6 * i + 3) * ps, o + (6 * i + 4) * ps, o + (6 * i + 5) * ps, ntx);
        }
        free(u);
    }
}

void wino_output(const float *R m, float *R y, const float *R bias, int64_t N, int64_t K, int64_t ky, int64_t Ho,
                 int64_t W, int64_t ty0, int64_t nty, int64_t ntx, int nthreads) {
    const int64_t T = N * nty * ntx, ncols = 4 * ntx;
    #pragma omp parallel num_threads(nthreads)
    {
        /* h: six rows, horizontally transformed; rowbuf: four output rows */
        float *h = malloc(sizeof(float) * 10 * ncols);
        float *rowbuf = h + 6 * ncols;
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < N * K * nty; ++item) {
            const int64_t n = item / (K * nty), k = (item / nty) % K, ty = ty0 + item % nty;
            const float *p = m + k * T + (n * nty + ty - ty0) * ntx;
            const int64_t ps = K * T;
            for (int i = 0; i < 6; ++i)
                at_tiles(p + (6 * i) * ps, p + (6 * i + 1) * ps, p + (6 * i + 2) * ps, p + (6 * i + 3) * ps,
                         p + (6 * i + 4) * ps, p + (6 * i + 5) * ps, h + i * ncols, ntx);
            /* whole tiles go straight to y; a partial tile row or column through a row buffer */
            const int direct = ncols == W && 4 * ty + 3 < Ho;
            float *out[4];
            for (int a = 0; a < 4; ++a)
                out[a] = direct ? y + ((n * ky + k) * Ho + 4 * ty + a) * W : rowbuf + a * ncols;
            at_rows(h, h + ncols, h + 2 * ncols, h + 3 * ncols, h + 4 * ncols, h + 5 * ncols,
                    out[0], out[1], out[2], out[3], bias ? bias[k] : 0.0f, ncols);
            if (!direct)
                for (int a = 0; a < 4 && 4 * ty + a < Ho; ++a)
                    memcpy(y + ((n * ky + k) * Ho + 4 * ty + a) * W, rowbuf + a * ncols, sizeof(float) * W);
        }
        free(h);
    }
}

void wino_output_t(const float *R gy, float *R gm, int64_t N, int64_t K, int64_t ky, int64_t Ho, int64_t W,
                   int64_t ty0, int64_t nty, int64_t ntx, int nthreads) {
    const int64_t T = N * nty * ntx, ncols = 4 * ntx;
    #pragma omp parallel num_threads(nthreads)
    {
        float *h = malloc(sizeof(float) * 10 * ncols);
        float *rowbuf = h + 6 * ncols; /* four zero-padded rows for a partial tile row or column */
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < N * K * nty; ++item) {
            const int64_t n = item / (K * nty), k = (item / nty) % K, ty = ty0 + item % nty;
            const float *g[4];
            int direct = ncols == W && 4 * ty + 3 < Ho;
            for (int a = 0; a < 4; ++a) {
                const int64_t yy = 4 * ty + a;
                float *row = rowbuf + a * ncols;
                if (direct) {
                    g[a] = gy + ((n * ky + k) * Ho + yy) * W;
                    continue;
                }
                memset(row, 0, sizeof(float) * ncols);
                if (yy < Ho) memcpy(row, gy + ((n * ky + k) * Ho + yy) * W, sizeof(float) * W);
                g[a] = row;
            }
            a_rows(g[0], g[1], g[2], g[3], h, h + ncols, h + 2 * ncols, h + 3 * ncols, h + 4 * ncols,
                   h + 5 * ncols, ncols);
            float *o = gm + k * T + (n * nty + ty - ty0) * ntx;
            const int64_t ps = K * T;
            for (int i = 0; i < 6; ++i)
                a_tiles(h + i * ncols, o + (6 * i) * ps, o + (6 * i + 1) * ps, o + (6 * i + 2) * ps,
                        o + (6 * i + 3) * ps, o + (6 * i + 4) * ps, o + (6 * i + 5) * ps, ntx);
        }
        free(h);
    }
}

void wino_input_t(const float *R gv, float *R gx, int64_t N, int64_t C, int64_t H, int64_t W,
                  int64_t ph, int64_t ty0, int64_t nty, int64_t ntx, int nthreads) {
    const int64_t T = N * nty * ntx, ncols = 4 * ntx + 2;
    #pragma omp parallel num_threads(nthreads)
    {
        /* c: one transformed row's six column contributions per tile (c[s][tx]);
         * u: the six rows of one tile row's contributions, overlapping tiles added */
        float *c = malloc(sizeof(float) * 6 * ntx);
        float *u = malloc(sizeof(float) * (6 * ncols + W));
        float *scratch = u + 6 * ncols; /* receives the rows that lie outside x */
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < N * C; ++item) {
            const int64_t n = item / C, ch = item % C;
            for (int64_t ty = ty0; ty < ty0 + nty; ++ty) {
                const float *p = gv + ch * T + (n * nty + ty - ty0) * ntx;
                const int64_t ps = C * T;
                for (int i = 0; i < 6; ++i) {
                    b_1d(p + (6 * i) * ps, p + (6 * i + 1) * ps, p + (6 * i + 2) * ps, p + (6 * i + 3) * ps,
                         p + (6 * i + 4) * ps, p + (6 * i + 5) * ps, c, c + ntx, c + 2 * ntx, c + 3 * ntx,
                         c + 4 * ntx, c + 5 * ntx, ntx);
                    /* tile tx covers columns 4tx .. 4tx+5: its last two overlap the next tile */
                    float *ui = u + i * ncols;
                    for (int64_t tx = 0; tx < ntx; ++tx) {
                        ui[4 * tx] = c[tx];
                        ui[4 * tx + 1] = c[ntx + tx];
                        ui[4 * tx + 2] = c[2 * ntx + tx];
                        ui[4 * tx + 3] = c[3 * ntx + tx];
                    }
                    ui[4 * ntx] = 0.0f;
                    ui[4 * ntx + 1] = 0.0f;
                    for (int64_t tx = 0; tx < ntx; ++tx) {
                        ui[4 * tx + 4] += c[4 * ntx + tx];
                        ui[4 * tx + 5] += c[5 * ntx + tx];
                    }
                }
                /* vertically: input row 4ty - ph + r receives sum_i BT[i][r] u[i]; column q of u
                 * is x column q - 1 */
                float *dst[6];
                for (int r = 0; r < 6; ++r) {
                    const int64_t yy = 4 * ty - ph + r;
                    dst[r] = (yy >= 0 && yy < H) ? gx + ((n * C + ch) * H + yy) * W : scratch;
                }
                b_rows_add(u + 1, u + ncols + 1, u + 2 * ncols + 1, u + 3 * ncols + 1, u + 4 * ncols + 1,
                           u + 5 * ncols + 1, dst[0], dst[1], dst[2], dst[3], dst[4], dst[5], W);
            }
        }
        free(c);
        free(u);
    }
}
