/* A global fit's per-curve factors R_b straight from the model, curve by curve (`global_rows.py`).
 *
 * Compiled after `native_lm.c` and `global_native.c` in one translation unit (a model's native
 * library, `native._compiled`): each curve's rows [J_b | r_b] are evaluated by the model's generated
 * rows function into its thread's small Work (`native_lm.c`'s `augmented`: weights, mask and bounds
 * as the native engine applies them) and reduced at once to R_b while they are still in the L1 cache
 * (`global_native.c`'s CholeskyQR, Householder QR where it is poorly conditioned), so the (B, N, P + 1)
 * rows of all curves are never written to memory. */

typedef struct {
  const double *theta; /* count x p: the curves' parameters (internal coordinates, or values when plain) */
  int64_t plain;       /* 1: J with respect to the values themselves */
  double pivot;        /* `reduction.GRAM_PIVOT` */
  double *upper;       /* count x (p + 1) x (p + 1): R_b */
} GlobalFactors;

static void global_factor_task(const Problem *P, const Options *O, Work *W, int64_t k, int64_t b, void *context) {
  (void)O;
  GlobalFactors *G = (GlobalFactors *)context;
  int64_t n = P->points, q = P->p + 1;
  double *r = G->upper + k * q * q;
  augmented(P, W, b, G->theta + k * P->p, (int)G->plain);
  if (gram_cholesky(W->block, n, n, q, G->pivot, r)) reduce(W->block, n, q, W->qr, r);
}

/* R_b of [J_b | r_b] (columns in the model's order, then r) of the curves ``index[0..count)`` at rows of
   ``theta``; returns 0, or -1 when memory ran out. */
int global_factors(const Problem *P, const Options *O, const int64_t *index, int64_t count, int threads,
                   const double *theta, int64_t plain, double pivot, double *upper) {
  GlobalFactors factors = {theta, plain, pivot, upper};
  return for_each_curve(P, O, index, count, threads, global_factor_task, &factors);
}
