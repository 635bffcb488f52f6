/* A global fit's per-curve factors R_b straight from the model, curve by curve (`global_rows.py`).
 *
 * Compiled after `native_lm.c` and `global_native.c` in one translation unit (a model's native
 * library, `native._compiled`): each curve's rows [J_b | r_b] are evaluated by the model's generated
 * rows function into its thread's small Work (`native_lm.c`'s `augmented`: weights, mask and bounds
 * as the native engine applies them) and reduced at once while they are still in the L1 cache: their
 * Gram matrix (`global_native.c`), then its Cholesky factor for BLOCK curves side by side, so the
 * (B, N, P + 1) rows of all curves are never written to memory. A curve whose Gram matrix is poorly
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
  double gram[q * q][BLOCK], factor[q * q][BLOCK];
  int64_t failed[BLOCK];
  for (int64_t l = 0; l < count; l++) {
    augmented(P, W, G->index[first + l], G->theta + (first + l) * p, (int)G->plain);
    gram_matrix(W->block, n, n, q, &gram[0][l], BLOCK);
  }
  cholesky_block(q, count, gram, G->pivot, factor, failed);
  double *upper = G->upper + first * q * q;
  store_block(q, count, factor, failed, upper, failed);
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
