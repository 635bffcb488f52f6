/* Per-curve linear algebra of a global fit (`global_lm`) in one pass per curve, curves in parallel.
 *
 * global_reduce: R_b of each curve's rows [A_b | C_b | r_b] by CholeskyQR (`gram_matrix`, `cholesky_block`), as
 *   `reduction.reduce_gram`; poor[b] = 1 where the caller is to redo it by Householder QR.
 * global_damp: `global_lm._eliminate_damping` (Givens rotations appending diag(sqrt(lambda) D_b) to R_b's
 *   local columns, MINPACK's qrsolv), writing the new local rows, and the remainder rows of many curves
 *   (R_b's shared rows and the damping rows' leftovers) rotated into one small R per lane (TSQR).
 * global_local_step: `global_lm._damped_step`'s per-curve part: d_b by back-substitution once d_phi is
 *   known, and per curve ||R_b d||^2 + 2 (R_b d).q_b and ||D_b d_b||^2 for the predicted reduction.
 * global_linearize: `global_lm._linearize_torch`: the scales D from the column norms of R_b, J^T r, the shared
 *   columns' sums, the non-finite check, ||D theta|| and the largest cosine, one pass.
 * global_costs: ||r_b||^2 of each curve from R_b and their total (`global_lm._evaluate`).
 * global_local_inverse: `global_statistics._local_inverse` where R_AA is regular beyond doubt (its inverse).
 * global_local_weights, global_local_covariance: `global_statistics.global_uncertainty`'s per-curve blocks.
 * global_factors (only where compiled after `native_lm.c`, in a model's native library): R_b straight from the
 *   model, each curve's rows reduced while they are in the L1 cache, so the (B, N, P + 1) rows of all curves are
 *   never written to memory.
 *
 * global_local_step, global_linearize and the three covariance kernels, whose per-curve work is short loops over L
 * and S, are compiled once more for each usual small (L, S) with the sizes constant (the loops unrolled: 1.3x to
 * 3.5x faster at L = 3, S = 1); the same operations in the same order, so the same numbers.
 *
 * Each operation rounded on its own (built with -ffp-contract=off): the torch path's roundoff; only the Gram
 * matrices use fused multiply-adds, as torch's BLAS does (GCC).
 */
#include <math.h>
#include <stdint.h>

/* Dot products over the points in this many interleaved sums (a vector register of doubles). */
#define LANES 8

/* Curves handled together, innermost, where each curve's work is a chain of dependent sqrt and divisions. */
#define BLOCK 8

/* RUN(l, s) with the usual small sizes (L, S) as constants where they match (RUN's loops unrolled), else with L
 * and S themselves: the one list of the sizes compiled with constants. */
#define SIZE_DISPATCH(RUN) \
    if (L == 1 && S == 1) { RUN(1, 1); return; } \
    if (L == 2 && S == 1) { RUN(2, 1); return; } \
    if (L == 3 && S == 1) { RUN(3, 1); return; } \
    if (L == 4 && S == 1) { RUN(4, 1); return; } \
    if (L == 2 && S == 2) { RUN(2, 2); return; } \
    if (L == 3 && S == 2) { RUN(3, 2); return; } \
    RUN(L, S);

/* `call` for each curve b = 0 .. count - 1, on `threads` threads. */
#define EACH_CURVE(call) \
    _Pragma("omp parallel for schedule(static) num_threads(threads)") \
    for (int64_t b = 0; b < count; b++) call

/* LANES doubles, one vector register (GCC's and Clang's vector extension). */
typedef double lanes __attribute__((vector_size(LANES * sizeof(double))));

/* Gram matrices of up to this many rows are formed in one pass over the points, every product's running sums
 * in registers; larger ones one pair of rows at a time. */
#define GRAM_ROWS 8

/* The Gram matrices' products and sums in fused multiply-adds where the CPU has them (half the instructions;
 * their roundoff is that of torch's path too, whose BLAS fuses them). */
#if defined(__GNUC__) && !defined(__clang__)
#define GRAM_CONTRACT __attribute__((optimize("fp-contract=fast")))
#else
#define GRAM_CONTRACT
#endif

/* `gram_matrix` for a q known where it is inlined (up to GRAM_ROWS): all q (q + 1) / 2 products per pass. */
static inline __attribute__((always_inline)) GRAM_CONTRACT void gram_rows(const double *rows, int64_t stride, int64_t points,
                                                            const int q, double *gram, int64_t step) {
    lanes part[GRAM_ROWS * (GRAM_ROWS + 1) / 2], row[GRAM_ROWS];
#pragma GCC unroll 36
    for (int t = 0; t < q * (q + 1) / 2; t++) part[t] = (lanes){0.0};
    int64_t k = 0;
    for (; k + LANES <= points; k += LANES) {
#pragma GCC unroll 8
        for (int i = 0; i < q; i++) __builtin_memcpy(&row[i], rows + i * stride + k, sizeof(lanes));
        int t = 0;
#pragma GCC unroll 8
        for (int i = 0; i < q; i++)
#pragma GCC unroll 8
            for (int j = i; j < q; j++) part[t++] += row[i] * row[j];
    }
    int t = 0;
    for (int i = 0; i < q; i++)
        for (int j = i; j < q; j++, t++) {
            double sum = 0.0;
            for (int l = 0; l < LANES; l++) sum += part[t][l];
            for (int64_t m = k; m < points; m++) sum += rows[i * stride + m] * rows[j * stride + m];
            gram[(i * q + j) * step] = sum;
        }
}

/* The upper triangle of the Gram matrix (q x q, row-major, entry (i, j) at gram[(i q + j) step]) of the q rows of
 * ``points`` entries ``stride`` apart from ``rows``: each product summed in LANES interleaved sums (one vector
 * register), then those in order. */
static GRAM_CONTRACT void gram_matrix(const double *rows, int64_t stride, int64_t points, int64_t q, double *gram, int64_t step) {
    switch (q) {
        case 2: gram_rows(rows, stride, points, 2, gram, step); return;
        case 3: gram_rows(rows, stride, points, 3, gram, step); return;
        case 4: gram_rows(rows, stride, points, 4, gram, step); return;
        case 5: gram_rows(rows, stride, points, 5, gram, step); return;
        case 6: gram_rows(rows, stride, points, 6, gram, step); return;
        case 7: gram_rows(rows, stride, points, 7, gram, step); return;
        case 8: gram_rows(rows, stride, points, 8, gram, step); return;
        default: break;
    }
    for (int64_t i = 0; i < q; i++)
        for (int64_t j = i; j < q; j++) {
            const double *row_i = rows + i * stride, *row_j = rows + j * stride;
            double part[LANES] = {0.0}, sum = 0.0;
            int64_t k = 0;
            for (; k + LANES <= points; k += LANES)
                for (int64_t l = 0; l < LANES; l++) part[l] += row_i[k + l] * row_j[k + l];
            for (int64_t l = 0; l < LANES; l++) sum += part[l];
            for (; k < points; k++) sum += row_i[k] * row_j[k];
            gram[(i * q + j) * step] = sum;
        }
}

/* The scaled Cholesky factors of BLOCK curves' Gram matrices ``gram`` (q x q row-major upper triangles, the curve
 * innermost; the first ``count`` curves used) scaled back: ``upper`` = R of CholeskyQR, the curve innermost;
 * failed[l] = 1 where the factorisation failed or a scaled pivot is below ``pivot``. The BLOCK curves' chains of
 * sqrt and division run side by side in vector registers. */
static void cholesky_block(int64_t q, int64_t count, double gram[][BLOCK], double pivot, double upper[][BLOCK],
                           int64_t *failed) {
    double scale[q][BLOCK], inverse[q][BLOCK], reciprocal[BLOCK];
    for (int64_t i = 0; i < q * q; i++)
        for (int64_t l = 0; l < BLOCK; l++) {
            if (l >= count) gram[i][l] = i % (q + 1) == 0; /* the identity in unused lanes */
            upper[i][l] = 0.0;
        }
    for (int64_t l = 0; l < BLOCK; l++) failed[l] = 0;
    for (int64_t i = 0; i < q; i++)
        for (int64_t l = 0; l < BLOCK; l++) {
            double norm = sqrt(gram[i * q + i][l]);
            scale[i][l] = norm > 0 ? norm : 1.0;
            inverse[i][l] = 1.0 / scale[i][l];
        }
    for (int64_t i = 0; i < q; i++) {
        for (int64_t l = 0; l < BLOCK; l++) {
            double value = gram[i * q + i][l] * inverse[i][l] * inverse[i][l];
            for (int64_t k = 0; k < i; k++) value -= upper[k * q + i][l] * upper[k * q + i][l];
            int64_t bad = !(value > 0);
            double diagonal = sqrt(bad ? 1.0 : value); /* (a failed curve goes on harmlessly, then is redone) */
            failed[l] |= bad | !(diagonal >= pivot);
            upper[i * q + i][l] = diagonal;
            reciprocal[l] = 1.0 / diagonal;
        }
        for (int64_t j = i + 1; j < q; j++)
            for (int64_t l = 0; l < BLOCK; l++) {
                double value = gram[i * q + j][l] * inverse[i][l] * inverse[j][l];
                for (int64_t k = 0; k < i; k++) value -= upper[k * q + i][l] * upper[k * q + j][l];
                upper[i * q + j][l] = value * reciprocal[l];
            }
    }
    for (int64_t i = 0; i < q; i++)
        for (int64_t j = i; j < q; j++)
            for (int64_t l = 0; l < BLOCK; l++) upper[i * q + j][l] *= scale[j][l];
}

/* R_b (q x q, row-major) of the first ``count`` of the BLOCK curves from their Gram matrices ``gram``
 * (`cholesky_block`), one after the other into ``upper``; poor[l] = 1 where it is to be redone by QR. */
static void factor_block(int64_t q, int64_t count, double gram[][BLOCK], double pivot, double *upper, int64_t *poor) {
    double factor[q * q][BLOCK];
    int64_t failed[BLOCK];
    cholesky_block(q, count, gram, pivot, factor, failed);
    for (int64_t l = 0; l < count; l++) {
        for (int64_t i = 0; i < q * q; i++) upper[l * q * q + i] = factor[i][l];
        poor[l] = failed[l];
    }
}

void global_reduce(int64_t count, int64_t points, int64_t q, const double *rows, double pivot, double *upper,
                   int64_t *poor, int threads) {
    const int64_t blocks = (count + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t block = 0; block < blocks; block++) {
        const int64_t first = block * BLOCK, n = count - first < BLOCK ? count - first : BLOCK;
        double gram[q * q][BLOCK];
        for (int64_t l = 0; l < n; l++) gram_matrix(rows + (first + l) * points, count * points, points, q, &gram[0][l], BLOCK);
        factor_block(q, n, gram, pivot, upper + first * q * q, poor + first);
    }
}

/* Rotations making row k of ``rows`` (row k's diagonal at column k, its entries k to q - 1) absorb ``extra``'s
 * entries k to q - 1 (zeroing extra[k]), for BLOCK curves side by side: one Givens rotation each. */
static inline void rotate_block(double (*row)[BLOCK], double (*extra)[BLOCK], int64_t k, int64_t q) {
    double cosine[BLOCK], sine[BLOCK];
    for (int64_t l = 0; l < BLOCK; l++) {
        /* sqrt(d^2 + e^2) without overflow or underflow (hypot's value to an ulp; inputs finite) */
        double d = row[k][l], e = extra[k][l];
        double a = fabs(d), c = fabs(e), big = a > c ? a : c, small = a > c ? c : a;
        double ratio = small / (big > 0 ? big : 1.0);
        double radius = big * sqrt(1.0 + ratio * ratio), safe = radius > 0 ? radius : 1.0;
        /* (divisions outside the selections: the loop then runs in vector registers) */
        double along = d / safe, across = e / safe;
        cosine[l] = radius > 0 ? along : 1.0;
        sine[l] = radius > 0 ? across : 0.0;
    }
    for (int64_t i = k; i < q; i++)
        for (int64_t l = 0; l < BLOCK; l++) {
            double value = row[i][l], other = extra[i][l];
            row[i][l] = cosine[l] * value + sine[l] * other;
            extra[i][l] = cosine[l] * other - sine[l] * value;
        }
}

/* Curves per accumulated remainder factor (`global_damp`), a fixed count: the answer does not depend on the threads. */
#define CHUNK_BLOCKS 16

int64_t global_damp_chunks(int64_t count) { return (count + CHUNK_BLOCKS * BLOCK - 1) / (CHUNK_BLOCKS * BLOCK); }

void global_damp(int64_t count, int64_t L, int64_t S, const double *upper, const double *root_scale,
                 double *local_rows, double *remainder, int threads) {
    /* BLOCK curves at a time, the curve innermost: each rotation's chain of sqrt and divisions runs for
     * BLOCK curves in one vector register instead of one curve after the other. Each curve's remainder
     * rows (R_b's rows L to L + S - 1 and the damping rows' leftovers, in the shared and r columns) are
     * rotated into the first S rows of a running R per lane, for CHUNK_BLOCKS * BLOCK curves (the last
     * row, the residual's norm, is not needed for the shared step and not formed); remainder gets these
     * rows (global_damp_chunks(count) x BLOCK x S x (S + 1)), whose R's first S rows are the remainders'. */
    const int64_t q = L + S + 1, blocks = (count + BLOCK - 1) / BLOCK, chunks = global_damp_chunks(count);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t chunk = 0; chunk < chunks; chunk++) {
        double rows[L * q][BLOCK], extra[q][BLOCK], factor[S * (S + 1)][BLOCK], tail[S + 1][BLOCK];
        double leftover[L][S + 1][BLOCK]; /* each damping row's leftover, before it joins the running factor */
        for (int64_t i = 0; i < S * (S + 1); i++)
            for (int64_t l = 0; l < BLOCK; l++) factor[i][l] = 0.0;
        const int64_t last = (chunk + 1) * CHUNK_BLOCKS < blocks ? (chunk + 1) * CHUNK_BLOCKS : blocks;
        for (int64_t block = chunk * CHUNK_BLOCKS; block < last; block++) {
            const int64_t first = block * BLOCK, n = count - first < BLOCK ? count - first : BLOCK;
            for (int64_t i = 0; i < L * q; i++)
                for (int64_t l = 0; l < BLOCK; l++) rows[i][l] = l < n ? upper[(first + l) * q * q + i] : 1.0;
            for (int64_t j = 0; j < L; j++) {
                for (int64_t i = 0; i < q; i++)
                    for (int64_t l = 0; l < BLOCK; l++) extra[i][l] = 0.0;
                for (int64_t l = 0; l < n; l++) extra[j][l] = root_scale[(first + l) * L + j];
                for (int64_t k = j; k < L; k++) rotate_block(rows + k * q, extra, k, q);
                for (int64_t i = 0; i <= S; i++)
                    for (int64_t l = 0; l < BLOCK; l++) leftover[j][i][l] = extra[L + i][l];
            }
            /* (then into the running factor, in the same order: its chain of rotations apart from the local rows') */
            for (int64_t j = 0; j < L; j++)
                for (int64_t k = 0; k < S; k++) rotate_block(factor + k * (S + 1), leftover[j], k, S + 1);
            for (int64_t s = 0; s < S; s++) { /* R_b's own remainder row L + s (zero in the padding lanes) */
                for (int64_t i = 0; i <= S; i++)
                    for (int64_t l = 0; l < BLOCK; l++) tail[i][l] = l < n ? upper[(first + l) * q * q + (L + s) * q + L + i] : 0.0;
                for (int64_t k = 0; k < S; k++) rotate_block(factor + k * (S + 1), tail, k, S + 1);
            }
            for (int64_t i = 0; i < L * q; i++)
                for (int64_t l = 0; l < n; l++) local_rows[(first + l) * L * q + i] = rows[i][l];
        }
        for (int64_t l = 0; l < BLOCK; l++)
            for (int64_t i = 0; i < S * (S + 1); i++)
                remainder[(chunk * BLOCK + l) * S * (S + 1) + i] = factor[i][l];
    }
}

/* Curve b's part of `global_local_step` (L and S constants where inlined from its dispatch: loops unrolled). */
static inline __attribute__((always_inline)) void local_step_curve(int64_t b, const int64_t L, const int64_t S,
                                                                   const double *upper, const double *local_rows,
                                                                   const double *local_scale, const double *d_shared,
                                                                   double *d_local, double *parts) {
    const int64_t q = L + S + 1, p = L + S;
    const double *rows = local_rows + b * L * q, *r = upper + b * q * q;
    double *x = d_local + b * L, step[p];
    for (int64_t j = L - 1; j >= 0; j--) { /* R'_AA (-d_b) = q'_A + R'_AC d_phi */
        double right = rows[j * q + p];
        for (int64_t s = 0; s < S; s++) right += rows[j * q + L + s] * d_shared[s];
        double known = 0.0;
        for (int64_t k = j + 1; k < L; k++) known += rows[j * q + k] * step[k];
        step[j] = (right - known) / rows[j * q + j];
    }
    for (int64_t j = 0; j < L; j++) x[j] = step[j] = -step[j];
    for (int64_t s = 0; s < S; s++) step[L + s] = d_shared[s];
    double change_square = 0.0, cross = 0.0, local_norm = 0.0;
    for (int64_t i = 0; i < p; i++) {
        double change = 0.0;
        for (int64_t j = i; j < p; j++) change += r[i * q + j] * step[j];
        change_square += change * change;
        cross += change * r[i * q + p];
    }
    for (int64_t j = 0; j < L; j++) local_norm += (local_scale[b * L + j] * x[j]) * (local_scale[b * L + j] * x[j]);
    parts[b * 3] = change_square;
    parts[b * 3 + 1] = cross;
    parts[b * 3 + 2] = local_norm;
}

#define STEP(l, s) EACH_CURVE(local_step_curve(b, l, s, upper, local_rows, local_scale, d_shared, d_local, parts))

void global_local_step(int64_t count, int64_t L, int64_t S, const double *upper, const double *local_rows,
                       const double *local_scale, const double *d_shared, double *d_local, double *parts,
                       int threads) {
    SIZE_DISPATCH(STEP)
}

/* Curve b's part of `global_local_inverse` (sizes constant where inlined from its dispatch: loops unrolled). */
static inline __attribute__((always_inline)) void local_inverse_curve(int64_t b, const int64_t L, const int64_t q,
        const double *upper, double limit, double *pseudo, int64_t *doubtful) {
    const double *r = upper + b * q * q;
    double scale[L], scaled[L * L], inverse[L * L], scaled_square = 0.0, inverse_square = 0.0;
    for (int64_t j = 0; j < L; j++) {
        double largest = 0.0, sum = 0.0;
        for (int64_t i = 0; i <= j; i++) largest = fmax(largest, fabs(r[i * q + j]));
        double safe = largest > 0 ? largest : 1.0;
        for (int64_t i = 0; i <= j; i++) sum += (r[i * q + j] / safe) * (r[i * q + j] / safe);
        double norm = largest * sqrt(sum);
        scale[j] = norm > 0 ? norm : 1.0;
    }
    for (int64_t i = 0; i < L; i++)
        for (int64_t j = 0; j < L; j++) {
            scaled[i * L + j] = j >= i ? r[i * q + j] / scale[j] : 0.0;
            scaled_square += scaled[i * L + j] * scaled[i * L + j];
        }
    for (int64_t c = 0; c < L; c++) /* (R_AA D^-1) X = I, column by column */
        for (int64_t i = L - 1; i >= 0; i--) {
            double value = i == c ? 1.0 : 0.0;
            for (int64_t k = i + 1; k < L; k++) value -= scaled[i * L + k] * inverse[k * L + c];
            inverse[i * L + c] = value / scaled[i * L + i];
        }
    for (int64_t i = 0; i < L; i++)
        for (int64_t j = 0; j < L; j++) {
            inverse_square += inverse[i * L + j] * inverse[i * L + j];
            pseudo[b * L * L + i * L + j] = inverse[i * L + j] / scale[i];
        }
    doubtful[b] = !(sqrt(scaled_square) * sqrt(inverse_square) < limit);
}

#define INVERSE(l, s) EACH_CURVE(local_inverse_curve(b, l, (l) + (s) + 1, upper, limit, pseudo, doubtful))

void global_local_inverse(int64_t count, int64_t L, int64_t q, const double *upper, double limit, double *pseudo,
                          int64_t *doubtful, int threads) {
    /* R_AA^-1 = D^-1 (R_AA D^-1)^-1 of each curve (its leading L x L block of R_b, columns scaled by their safe
     * norms D), and doubtful[b] = 1 unless ||R_AA D^-1||_F ||(R_AA D^-1)^-1||_F < limit */
    const int64_t S = q - L - 1;
    SIZE_DISPATCH(INVERSE)
}

/* Curve b's part of `global_local_weights` (sizes constant where inlined from its dispatch: loops unrolled). */
static inline __attribute__((always_inline)) void local_weights_curve(int64_t b, const int64_t L, const int64_t S,
        const double *upper, const double *pseudo, double *weights, double *outside) {
    const int64_t q = L + S + 1;
    const double *r = upper + b * q * q, *inverse = pseudo + b * L * L;
    double *w = weights + b * L * S, *out = outside + b * L * S;
    for (int64_t i = 0; i < L; i++)
        for (int64_t s = 0; s < S; s++) {
            double sum = 0.0;
            for (int64_t k = 0; k < L; k++) sum += inverse[i * L + k] * r[k * q + L + s];
            w[i * S + s] = sum;
        }
    for (int64_t i = 0; i < L; i++)
        for (int64_t s = 0; s < S; s++) {
            double sum = 0.0;
            for (int64_t k = 0; k < L; k++) sum += r[i * q + k] * w[k * S + s];
            out[i * S + s] = r[i * q + L + s] - sum;
        }
}

#define WEIGHTS(l, s) EACH_CURVE(local_weights_curve(b, l, s, upper, pseudo, weights, outside))

void global_local_weights(int64_t count, int64_t L, int64_t S, const double *upper, const double *pseudo,
                          double *weights, double *outside, int threads) {
    /* W_b = R_AA^+ R_AC (L x S) and R_AC - R_AA W_b (R_AC's part outside R_AA's range) of each curve */
    SIZE_DISPATCH(WEIGHTS)
}

/* Curve b's part of `global_local_covariance` (sizes constant where inlined from its dispatch: loops unrolled). */
static inline __attribute__((always_inline)) void local_covariance_curve(int64_t b, const int64_t L, const int64_t S,
        const double *pseudo, const double *weights, const double *core, double variance, double *local,
        double *cross, double *stderr_) {
    const double *inverse = pseudo + b * L * L, *w = weights + b * L * S;
    double *c = cross + b * L * S, *v = local + b * L * L, product[L * S];
    for (int64_t i = 0; i < L; i++)
        for (int64_t s = 0; s < S; s++) {
            double sum = 0.0;
            for (int64_t k = 0; k < S; k++) sum += w[i * S + k] * core[k * S + s];
            product[i * S + s] = sum;
            c[i * S + s] = -variance * sum;
        }
    for (int64_t i = 0; i < L; i++)
        for (int64_t j = 0; j < L; j++) {
            double direct = 0.0, shared = 0.0;
            for (int64_t k = 0; k < L; k++) direct += inverse[i * L + k] * inverse[j * L + k];
            for (int64_t s = 0; s < S; s++) shared += product[i * S + s] * w[j * S + s];
            v[i * L + j] = variance * (direct + shared);
        }
    for (int64_t j = 0; j < L; j++) stderr_[b * L + j] = sqrt(fabs(v[j * L + j]));
}

#define COVARIANCE(l, s) \
    EACH_CURVE(local_covariance_curve(b, l, s, pseudo, weights, core, variance, local, cross, stderr_))

void global_local_covariance(int64_t count, int64_t L, int64_t S, const double *pseudo, const double *weights,
                             const double *core, double variance, double *local, double *cross, double *stderr_,
                             int threads) {
    /* cov(theta_b, phi) = -s^2 W_b C and cov(theta_b) = s^2 (R_AA^+ R_AA^+T + W_b C W_b^T) of each curve (C the
     * shared block's inverse core), and the local standard errors sqrt |cov(theta_b)_jj| */
    SIZE_DISPATCH(COVARIANCE)
}

void global_costs(int64_t count, int64_t q, const double *upper, double *cost, double *total) {
    /* cost[b] = ||r_b||^2, the squared norm of R_b's last column; total = (the sum of the costs, 0 where any is
     * not finite; how many are not finite). One thread: a few entries per curve, summed in curve order. */
    double sum = 0.0, failures = 0.0;
    for (int64_t b = 0; b < count; b++) {
        const double *r = upper + b * q * q + q - 1;
        double square = 0.0;
        for (int64_t i = 0; i < q; i++) square += r[i * q] * r[i * q];
        cost[b] = square;
        if (isfinite(square))
            sum += square;
        else
            failures += 1.0;
    }
    total[0] = failures > 0 ? 0.0 : sum;
    total[1] = failures;
}

/* Running sums over curves in this many interleaved parts (curve b into part b % SUM_PARTS): independent chains
 * of additions, and the same order on any number of threads. */
#define SUM_PARTS 4

static inline __attribute__((always_inline)) void linearize_sized(int64_t count, const int64_t L, const int64_t S,
                                                                  const double *upper, const double *previous,
                                                                  const double *local, double *scale, double *gradient,
                                                                  double *totals) {
    /* From each R_b (columns local, shared, r): D_b = max(previous D_b, ||J_j||) (1 where zero; previous may be
     * NULL), (J^T r)_j of the local columns, and totals = (sum_b ||J_s||^2 (S), sum_b (J^T r)_s (S), how many
     * entries of R_b are not finite, sum_b ||D_b theta_b||^2, max_b,j |J_j^T r| / D_j over the local columns).
     * One thread: a few entries per curve. */
    const int64_t p = L + S, q = p + 1;
    double sums[SUM_PARTS][2 * S + 2], largest[SUM_PARTS];
    for (int64_t l = 0; l < SUM_PARTS; l++) {
        largest[l] = 0.0;
        for (int64_t s = 0; s < 2 * S + 2; s++) sums[l][s] = 0.0;
    }
    for (int64_t b = 0; b < count; b++) {
        const double *r = upper + b * q * q;
        double *sum = sums[b % SUM_PARTS], *most = largest + b % SUM_PARTS;
        double check = 0.0; /* NaN where an entry is inf or NaN (summed in any order: vector registers) */
#pragma omp simd reduction(+ : check)
        for (int64_t i = 0; i < q * q; i++) check += r[i] * 0.0;
        if (check != 0.0)
            for (int64_t i = 0; i < q * q; i++) sum[2 * S] += isfinite(r[i]) ? 0.0 : 1.0;
        for (int64_t j = 0; j < p; j++) {
            double square = 0.0, product = 0.0;
            for (int64_t i = 0; i <= j; i++) {
                square += r[i * q + j] * r[i * q + j];
                product += r[i * q + j] * r[i * q + p];
            }
            if (j >= L) {
                sum[j - L] += square;
                sum[S + j - L] += product;
                continue;
            }
            double norm = sqrt(square), d;
            if (previous && previous[b * L + j] > norm) norm = previous[b * L + j];
            d = norm > 0 ? norm : 1.0;
            scale[b * L + j] = d;
            gradient[b * L + j] = product;
            sum[2 * S + 1] += (d * local[b * L + j]) * (d * local[b * L + j]);
            double cosine = fabs(product) / d;
            if (cosine > *most || cosine != cosine) *most = cosine;
        }
    }
    for (int64_t s = 0; s < 2 * S + 3; s++) totals[s] = 0.0;
    for (int64_t l = 0; l < SUM_PARTS; l++) {
        for (int64_t s = 0; s < 2 * S + 2; s++) totals[s] += sums[l][s];
        if (largest[l] > totals[2 * S + 2] || largest[l] != largest[l]) totals[2 * S + 2] = largest[l];
    }
}

#define LINEARIZE(l, s) linearize_sized(count, l, s, upper, previous, local, scale, gradient, totals)

void global_linearize(int64_t count, int64_t L, int64_t S, const double *upper, const double *previous,
                      const double *local, double *scale, double *gradient, double *totals) {
    /* `linearize_sized` with the usual small (L, S) constant (its loops unrolled), any other generic */
    SIZE_DISPATCH(LINEARIZE)
}

#ifdef CG_FN /* after `native_lm.c` in one translation unit (`native._host_solver_source`): a model's library */
/* A curve's rows [J_b | r_b] are evaluated by the model's generated rows function into its thread's small Work
 * (`native_lm.c`'s `augmented`: weights, mask and bounds as the native engine applies them), their Gram matrix
 * formed at once, then its Cholesky factor for BLOCK curves side by side. A curve whose Gram matrix is poorly
 * conditioned is evaluated again and reduced by Householder QR. */

typedef struct {
  const int64_t *index; /* count: the curves */
  int64_t count;
  const double *theta; /* count x p: the curves' parameters (internal coordinates, or values when plain) */
  int64_t plain;       /* 1: J with respect to the values themselves */
  double pivot;        /* `reduction.GRAM_PIVOT` */
  double *upper;       /* count x (p + 1) x (p + 1): R_b */
} GlobalFactors;

/* R_b of the curves BLOCK k to k + BLOCK (of G->index); ``b`` unused (`for_each_curve` runs over blocks). */
static void global_factor_task(const Problem *P, const Options *O, Work *W, int64_t k, int64_t b, void *context) {
  (void)O, (void)b;
  GlobalFactors *G = (GlobalFactors *)context;
  const int64_t n = P->points, p = P->p, q = p + 1, first = k * BLOCK;
  const int64_t count = G->count - first < BLOCK ? G->count - first : BLOCK;
  double gram[q * q][BLOCK], *upper = G->upper + first * q * q;
  int64_t failed[BLOCK];
  for (int64_t l = 0; l < count; l++) {
    augmented(P, W, G->index[first + l], G->theta + (first + l) * p, (int)G->plain);
    gram_matrix(W->block, n, n, q, &gram[0][l], BLOCK);
  }
  factor_block(q, count, gram, G->pivot, upper, failed);
  for (int64_t l = 0; l < count; l++)
    if (failed[l]) {
      augmented(P, W, G->index[first + l], G->theta + (first + l) * p, (int)G->plain);
      reduce(W->block, n, q, W->qr, upper + l * q * q);
    }
}

/* R_b of [J_b | r_b] (columns in the model's order, then r) of the curves ``index[0..count)`` at rows of
   ``theta``; returns 0, or -1 when memory ran out. */
int global_factors(const Problem *P, const Options *O, const int64_t *index, int64_t count, int threads,
                   const double *theta, int64_t plain, double pivot, double *upper) {
  GlobalFactors factors = {index, count, theta, plain, pivot, upper};
  /* one task per BLOCK curves: the first (count + BLOCK - 1) / BLOCK entries of ``index`` stand for them */
  return for_each_curve(P, O, index, (count + BLOCK - 1) / BLOCK, threads, global_factor_task, &factors);
}
#endif
