/* Levenberg-Marquardt for a batch of curves in C: each curve solved alone, the curves in parallel.

   The C twin of `lm.batch_levenberg_marquardt` (the same trust region, lambda from the SVD of R D^-1 by
   Hebden's iteration, geodesic acceleration, stopping rules and polish step), for formula models on
   the CPU in float64. The model enters through two generated functions compiled into the same
   library (`native.py` writes them): the rows [df/db_j..., f] and the values f of one curve.
   Each curve's [J | r] is reduced by Householder QR, its small R by one-sided Jacobi rotations.
   The constants (tolerances, windows) come from Python in `Options`, so there is one copy of each.
   The same file compiles for CUDA (`cuda_engine.py` defines CG_DEVICE): every function becomes
   __device__, each thread's Work is carved from one workspace, and cg_lm_batch / cg_lm_errors at the
   end run one curve per thread. */
#ifdef CG_DEVICE /* compiled for CUDA by `cuda_engine.py`, whose prelude defines the types and constants */
#define CG_FN static __device__
#define CG_MODEL_FN static __device__
#else
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#define CG_FN static
#define CG_MODEL_FN
#endif

CG_MODEL_FN void cg_model_rows(const double *const *in, double *const *out, int64_t n);
CG_MODEL_FN void cg_model_values(const double *const *in, double *const *out, int64_t n);

/* Status codes: the order of `status.STATUSES`. */
enum { RUNNING, FTOL, XTOL, GTOL, ROUNDOFF, EXACT, DRIFT, MAX_STEPS, NONFINITE };

typedef struct {
  int64_t points, p, inputs; /* N per curve, free parameters, inputs of the generated functions */
  const int64_t *kind;       /* per input: 0 shared column (N), 1 per-curve column (B x N), 2 free, 3 fixed */
  const int64_t *slot;       /* which column, free parameter or fixed parameter */
  const double *const *columns;
  const double *const *fixed; /* fixed values, (B,) each */
  const double *y;            /* B x N */
  const double *weights;      /* 1 / sigma: NULL, N or B x N */
  int64_t weights_per_curve;
  const uint8_t *mask;        /* NULL (all count) or B x N */
  const double *scales;       /* NULL or (B,): residuals times 2^k per curve, where the cost would overflow */
  const int64_t *bound;       /* per free parameter: 0 none, 1 both, 2 lower, 3 upper */
  const double *lower, *upper;
} Problem;

typedef struct {
  double ftol, xtol, gtol, factor;
  double rank_tolerance, drift_tolerance, polish_slack, probe, acceleration_ratio, unexploited_share,
      visible_step, statistics_rank_tolerance, null_component, saturation, shrunk,
      column_shrunk, insensitive;
  int64_t max_steps, history, drift_window, nonfinite_retries;
  int64_t polished; /* bit mask of the statuses after which the polish step runs */
} Options;

typedef struct {
  const double **in;
  double **out;
  double *memory; /* everything below lives in this one allocation */
  double *values, *theta, *trial, *velocity, *probe_point, *scale, *norms, *qtr, *a, *v, *s, *vt, *products,
      *gauss_newton, *squares, *coordinates, *projected;
  double *live_scale; /* D where the column is nonzero, else 0: ||D theta|| over these (`lm`) */
  double *block, *qr, *r, *r_trial, *r_probe, *reduced, *recent;
  int64_t *order;
} Work;

CG_FN double squared(const double *x, int64_t n) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; i++) sum += x[i] * x[i];
  return sum;
}

/* ||x|| of n entries ``stride`` apart, without overflow or underflow for entries near 1e+-200
   (as `statistics.column_norms`). */
CG_FN double safe_norm(const double *x, int64_t n, int64_t stride) {
  double sum = 0, largest = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; i++) sum += x[i * stride] * x[i * stride];
  double plain = sqrt(sum);
  if (plain > 1e-140 && plain < 1e140) return plain;
  for (int64_t i = 0; i < n; i++) largest = fmax(largest, fabs(x[i * stride]));
  if (largest == 0 || !isfinite(largest)) return largest == 0 ? 0 : plain;
  sum = 0;
  for (int64_t i = 0; i < n; i++) sum += (x[i * stride] / largest) * (x[i * stride] / largest);
  return largest * sqrt(sum);
}

CG_FN void to_external(const Problem *P, const double *theta, double *values) {
  for (int64_t j = 0; j < P->p; j++) {
    double t = theta[j], lo = P->lower[j], hi = P->upper[j];
    switch (P->bound[j]) {
      case 1: values[j] = lo + (hi - lo) * (sin(t) + 1) / 2; break;
      case 2: values[j] = lo - 1 + sqrt(t * t + 1); break;
      case 3: values[j] = hi + 1 - sqrt(t * t + 1); break;
      default: values[j] = t;
    }
  }
}

CG_FN double external_slope(const Problem *P, int64_t j, double t) {
  switch (P->bound[j]) {
    case 1: return (P->upper[j] - P->lower[j]) * cos(t) / 2;
    case 2: return t / sqrt(t * t + 1);
    case 3: return -t / sqrt(t * t + 1);
    default: return 1;
  }
}

CG_FN void set_inputs(const Problem *P, Work *W, int64_t b, const double *values) {
  for (int64_t k = 0; k < P->inputs; k++) {
    int64_t slot = P->slot[k];
    switch (P->kind[k]) {
      case 0: W->in[k] = P->columns[slot]; break;
      case 1: W->in[k] = P->columns[slot] + b * P->points; break;
      case 2: W->in[k] = values + slot; break;
      default: W->in[k] = P->fixed[slot] + b;
    }
  }
}

/* (f - y) w s, 0 where masked; the ``rows`` J rows before f (if any) times w s, 0 where masked
   (s: the curve's power-of-two scale). */
CG_FN void finish(const Problem *P, int64_t b, double *f, double *jacobian, int64_t rows) {
  int64_t n = P->points;
  const double *y = P->y + b * n;
  const uint8_t *mask = P->mask ? P->mask + b * n : NULL;
  const double *w = P->weights ? P->weights + (P->weights_per_curve ? b * n : 0) : NULL;
  double scale = P->scales ? P->scales[b] : 1;
  for (int64_t k = 0; k <= rows; k++) {
    double *row = k < rows ? jacobian + k * n : f;
    if (k == rows)
      for (int64_t i = 0; i < n; i++) row[i] -= y[i];
    if (w)
      for (int64_t i = 0; i < n; i++) row[i] *= w[i];
    if (scale != 1)
      for (int64_t i = 0; i < n; i++) row[i] *= scale;
    if (mask)
      for (int64_t i = 0; i < n; i++) row[i] = mask[i] ? row[i] : 0;
  }
}

/* r at theta into ``r``; returns the cost ||r||^2. */
CG_FN double residuals(const Problem *P, Work *W, int64_t b, const double *theta, double *r) {
  to_external(P, theta, W->values);
  set_inputs(P, W, b, W->values);
  W->out[0] = r;
  cg_model_values((const double *const *)W->in, W->out, P->points);
  finish(P, b, r, NULL, 0);
  return squared(r, P->points);
}

/* [J | r] at theta into W->block, column k at block + k N (J with respect to the values when ``plain``). */
CG_FN void augmented(const Problem *P, Work *W, int64_t b, const double *theta, int plain) {
  int64_t n = P->points, p = P->p;
  if (plain)
    memcpy(W->values, theta, p * sizeof(double));
  else
    to_external(P, theta, W->values);
  set_inputs(P, W, b, W->values);
  for (int64_t k = 0; k <= p; k++) W->out[k] = W->block + k * n;
  cg_model_rows((const double *const *)W->in, W->out, n);
  finish(P, b, W->block + p * n, W->block, p);
  if (plain) return;
  for (int64_t j = 0; j < p; j++) {
    if (!P->bound[j]) continue;
    double slope = external_slope(P, j, theta[j]);
    for (int64_t i = 0; i < n; i++) W->block[j * n + i] *= slope;
  }
}

/* R (c x c, row-major, upper) of the n x c column-major ``block`` by Householder QR (zero rows
   appended when n < c). Returns 0 when R holds a NaN or inf. */
CG_FN int reduce(const double *block, int64_t n, int64_t c, double *work, double *R) {
  int64_t m = n > c ? n : c;
  for (int64_t k = 0; k < c; k++) {
    memcpy(work + k * m, block + k * n, n * sizeof(double));
    memset(work + k * m + n, 0, (m - n) * sizeof(double));
  }
  memset(R, 0, c * c * sizeof(double));
  for (int64_t k = 0; k < c; k++) {
    double *x = work + k * m;
    double norm = safe_norm(x + k, m - k, 1);
    if (norm != 0) {
      /* H = I - tau v v^T with v = (1, x_rest / (alpha - beta)) maps x to beta e_k (LAPACK's dlarfg):
         v stays of order 1, so columns near 1e-200 neither underflow nor lose digits when squared */
      double alpha = x[k], beta = alpha > 0 ? -norm : norm;
      double tau = (beta - alpha) / beta, inverse = 1 / (alpha - beta);
      for (int64_t i = k + 1; i < m; i++) x[i] *= inverse;
      for (int64_t j = k + 1; j < c; j++) {
        double *column = work + j * m, dot = column[k];
#pragma omp simd reduction(+ : dot)
        for (int64_t i = k + 1; i < m; i++) dot += x[i] * column[i];
        double factor = tau * dot;
        column[k] -= factor;
        for (int64_t i = k + 1; i < m; i++) column[i] -= factor * x[i];
      }
      x[k] = beta;
    }
    for (int64_t j = k; j < c; j++) R[k * c + j] = work[j * m + k];
  }
  for (int64_t i = 0; i < c * c; i++)
    if (!isfinite(R[i])) return 0;
  return 1;
}

/* SVD of the p x p row-major ``a`` (destroyed) by one-sided Jacobi rotations: singular values ``s``
   in decreasing order, ``vt`` = V^T (row j: the j-th right singular vector), and products_j =
   (A v_j) . qtr = s_j u_j^T qtr (no division, so zero singular values are harmless). ``warm``:
   rotations start from the V in ``vt`` (the previous linearisation's), not from the identity. */
CG_FN void svd(Work *W, int64_t p, const double *qtr, int warm) {
  double *a = W->a, *v = W->v;
  if (warm) { /* start from the previous V (W->vt): A V0 is nearly orthogonal already, fewer sweeps */
    for (int64_t i = 0; i < p; i++)
      for (int64_t j = 0; j < p; j++) v[i * p + j] = W->vt[j * p + i];
    for (int64_t i = 0; i < p; i++) {
      double *row = W->norms; /* scratch: svd writes the norms below */
      for (int64_t j = 0; j < p; j++) {
        double sum = 0;
        for (int64_t k = 0; k < p; k++) sum += a[i * p + k] * v[k * p + j];
        row[j] = sum;
      }
      memcpy(a + i * p, row, p * sizeof(double));
    }
  } else {
    for (int64_t i = 0; i < p * p; i++) v[i] = 0;
    for (int64_t i = 0; i < p; i++) v[i * p + i] = 1;
  }
  for (int sweep = 0; sweep < 60; sweep++) {
    int rotated = 0;
    for (int64_t i = 0; i < p; i++)
      for (int64_t j = i + 1; j < p; j++) {
        double alpha = 0, beta = 0, gamma = 0;
        for (int64_t k = 0; k < p; k++) {
          alpha += a[k * p + i] * a[k * p + i];
          beta += a[k * p + j] * a[k * p + j];
          gamma += a[k * p + i] * a[k * p + j];
        }
        if (gamma == 0 || fabs(gamma) <= DBL_EPSILON * sqrt(alpha) * sqrt(beta)) continue;
        rotated = 1;
        double zeta = (beta - alpha) / (2 * gamma);
        /* the smaller root of t^2 + 2 zeta t - 1; 1 / (2 zeta) where zeta^2 would overflow */
        double t = fabs(zeta) < 1e150 ? copysign(1.0, zeta) / (fabs(zeta) + sqrt(1 + zeta * zeta)) : 0.5 / zeta;
        double c = 1 / sqrt(1 + t * t), s = c * t;
        for (int64_t k = 0; k < p; k++) {
          double ai = a[k * p + i], aj = a[k * p + j];
          a[k * p + i] = c * ai - s * aj;
          a[k * p + j] = s * ai + c * aj;
          double vi = v[k * p + i], vj = v[k * p + j];
          v[k * p + i] = c * vi - s * vj;
          v[k * p + j] = s * vi + c * vj;
        }
      }
    if (!rotated) break;
  }
  for (int64_t j = 0; j < p; j++) {
    double sum = 0;
    for (int64_t k = 0; k < p; k++) sum += a[k * p + j] * a[k * p + j];
    W->norms[j] = sqrt(sum);
    W->order[j] = j;
  }
  for (int64_t i = 1; i < p; i++) /* insertion sort, decreasing (p is small) */
    for (int64_t j = i; j > 0 && W->norms[W->order[j]] > W->norms[W->order[j - 1]]; j--) {
      int64_t swap = W->order[j];
      W->order[j] = W->order[j - 1];
      W->order[j - 1] = swap;
    }
  for (int64_t j = 0; j < p; j++) {
    int64_t o = W->order[j];
    double product = 0;
    for (int64_t k = 0; k < p; k++) {
      W->vt[j * p + k] = v[k * p + o];
      product += a[k * p + o] * qtr[k];
    }
    W->s[j] = W->norms[o];
    W->products[j] = product;
  }
}

/* What `lm._linearize_fresh` keeps of the SVD: Gauss-Newton coordinates, their norm and promised decrease. */
typedef struct {
  double gauss_newton_norm, gauss_newton_decrease, start;
} Damped;

CG_FN Damped damped_step(Work *W, int64_t p, const Options *O) {
  Damped d = {0, 0, 0};
  double largest = p ? W->s[0] : 0;
  int all_kept = 1;
  for (int64_t j = 0; j < p; j++) {
    double value = W->s[j];
    int kept = largest > 0 && value > largest * O->rank_tolerance;
    all_kept &= kept;
    W->squares[j] = value * value;
    /* products_j = s_j u_j; the Gauss-Newton coordinate -u_j / s_j = -products_j / s_j^2 */
    W->gauss_newton[j] = kept ? -W->products[j] / W->squares[j] : 0;
    d.gauss_newton_norm += W->gauss_newton[j] * W->gauss_newton[j];
    if (kept) d.gauss_newton_decrease += (W->products[j] / value) * (W->products[j] / value);
  }
  d.gauss_newton_norm = sqrt(d.gauss_newton_norm);
  d.start = all_kept ? 0 : DBL_EPSILON * largest * largest;
  return d;
}

/* `lm._damped_steps`: lambda, coordinates (into W->coordinates), their norm and ||S c||^2. */
CG_FN double solve(Work *W, int64_t p, const Damped *d, double radius, double *norm_out, double *decrease) {
  double lam = 0, norm = d->gauss_newton_norm;
  if (d->gauss_newton_norm <= 1.1 * radius) {
    memcpy(W->coordinates, W->gauss_newton, p * sizeof(double));
  } else {
    lam = d->start;
    for (int iteration = 0; iteration < 60; iteration++) {
      double sum = 0, slope = 0;
      for (int64_t j = 0; j < p; j++) {
        double q = W->squares[j] + lam, c = q != 0 ? W->products[j] / q : 0; /* s = 0 at lambda = 0 */
        sum += c * c;
        slope += q != 0 ? c * c / q : 0;
      }
      norm = sqrt(sum);
      if (fabs(norm - radius) <= 0.1 * radius || norm == 0) break;
      double derivative = -slope / norm;
      lam = fmax(lam + (norm - norm * norm / radius) / derivative, 0.0);
    }
    double sum = 0;
    for (int64_t j = 0; j < p; j++) {
      double q = W->squares[j] + lam;
      W->coordinates[j] = q != 0 ? -W->products[j] / q : 0;
      sum += W->coordinates[j] * W->coordinates[j];
    }
    norm = sqrt(sum);
  }
  double reduction = 0;
  for (int64_t j = 0; j < p; j++) reduction += W->squares[j] * W->coordinates[j] * W->coordinates[j];
  *norm_out = norm;
  *decrease = reduction;
  return lam;
}

/* out = D^-1 V c: out_i = sum_j vt[j][i] c_j / scale_i. */
CG_FN void step_from(Work *W, int64_t p, const double *c, double *out) {
  for (int64_t i = 0; i < p; i++) {
    double sum = 0;
    for (int64_t j = 0; j < p; j++) sum += W->vt[j * p + i] * c[j];
    out[i] = sum / W->scale[i];
  }
}

CG_FN double scaled_norm(const double *scale, const double *theta, int64_t p) {
  double sum = 0;
  for (int64_t j = 0; j < p; j++) sum += (scale[j] * theta[j]) * (scale[j] * theta[j]);
  return sqrt(sum);
}

/* The SVD of R D^-1 from W->reduced (c = p + 1 square): upper / scale into a, Q^T r into qtr. */
CG_FN void decompose(Work *W, int64_t p, int warm) {
  for (int64_t i = 0; i < p; i++) {
    for (int64_t j = 0; j < p; j++) W->a[i * p + j] = W->reduced[i * (p + 1) + j] / W->scale[j];
    W->qtr[i] = W->reduced[i * (p + 1) + p];
  }
  svd(W, p, W->qtr, warm);
}

/* Half the geodesic acceleration into W->projected (see `lm._half_acceleration`); 0 when too large. */
CG_FN void half_acceleration(const Problem *P, Work *W, int64_t b, double lam, double velocity_norm,
                              const Options *O) {
  int64_t n = P->points, p = P->p;
  for (int64_t j = 0; j < p; j++) W->probe_point[j] = W->theta[j] + O->probe * W->velocity[j];
  residuals(P, W, b, W->probe_point, W->r_probe);
  double *curvature = W->r_probe;
  for (int64_t i = 0; i < n; i++) {
    double jv = 0;
    for (int64_t j = 0; j < p; j++) jv += W->velocity[j] * W->block[j * n + i];
    curvature[i] = (W->r_probe[i] - W->r[i] - O->probe * jv) * (2 / (O->probe * O->probe));
  }
  for (int64_t j = 0; j < p; j++) {
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; i++) sum += W->block[j * n + i] * curvature[i];
    W->trial[j] = sum / W->scale[j]; /* J^T r'' / D */
  }
  double norm = 0;
  for (int64_t k = 0; k < p; k++) {
    double sum = 0;
    for (int64_t j = 0; j < p; j++) sum += W->vt[k * p + j] * W->trial[j];
    W->coordinates[k] = -sum / (W->squares[k] + lam);
    norm += W->coordinates[k] * W->coordinates[k];
  }
  if (!(2 * sqrt(norm) <= O->acceleration_ratio * velocity_norm)) {
    for (int64_t j = 0; j < p; j++) W->projected[j] = 0;
    return;
  }
  step_from(W, p, W->coordinates, W->projected);
  for (int64_t j = 0; j < p; j++) W->projected[j] *= 0.5;
}

typedef struct {
  double cost;
  int64_t status, evaluations, jacobians, steps, recorded;
} Outcome;

CG_FN void record(Outcome *o, double *history, const Options *O, double cost) {
  int64_t slot = o->recorded < O->history ? o->recorded : O->history - 1;
  if (O->history > 0) history[slot] = cost;
  o->recorded++;
}

/* The status of a trial step (`lm._trial_step`'s tests, in its order); RUNNING when none. */
CG_FN int64_t trial_status(double actual, double predicted, int exhausted, double radius, double theta_norm,
                            double cost, int accepted, int low_rank, const double *recent, int64_t steps,
                            const Options *O) {
  if (fabs(actual) <= O->ftol && predicted <= O->ftol && exhausted) return FTOL;
  if (radius <= O->xtol * theta_norm) return XTOL;
  if ((fabs(actual) <= DBL_EPSILON && predicted <= DBL_EPSILON && exhausted) || radius <= DBL_EPSILON * theta_norm)
    return ROUNDOFF;
  if (cost == 0) return EXACT;
  if (accepted && low_rank && steps + 1 > O->drift_window && recent[0] - cost <= O->drift_tolerance * cost)
    return DRIFT;
  return RUNNING;
}

/* One Gauss-Newton step from the solution, kept unless the cost rises (`lm._polish`). */
CG_FN void polish(const Problem *P, Work *W, int64_t b, Outcome *o, double *history, const Options *O) {
  int64_t n = P->points, p = P->p;
  augmented(P, W, b, W->theta, 0);
  o->jacobians++;
  if (!reduce(W->block, n, p + 1, W->qr, W->reduced)) return;
  decompose(W, p, 1);
  damped_step(W, p, O);
  step_from(W, p, W->gauss_newton, W->velocity);
  for (int64_t j = 0; j < p; j++) W->trial[j] = W->theta[j] + W->velocity[j];
  double cost = residuals(P, W, b, W->trial, W->r_trial);
  o->evaluations++;
  if (cost <= o->cost * (1 + O->polish_slack)) {
    memcpy(W->theta, W->trial, p * sizeof(double));
    o->cost = cost;
    o->steps++;
    record(o, history, O, cost);
  }
}

/* Fit curve b from W->theta (see `lm.batch_levenberg_marquardt`, per curve). */
CG_FN Outcome solve_curve(const Problem *P, Work *W, int64_t b, double *history, const Options *O) {
  int64_t n = P->points, p = P->p;
  Outcome o = {0, MAX_STEPS, 1, 0, 0, 0};
  double cost = residuals(P, W, b, W->theta, W->r), radius = 0;
  int64_t nonfinite_run = 0;
  o.cost = cost;
  record(&o, history, O, cost);
  for (int64_t k = 0; k <= O->drift_window; k++) W->recent[k] = cost;
  while (o.jacobians < O->max_steps) {
    augmented(P, W, b, W->theta, 0);
    o.jacobians++;
    if (!reduce(W->block, n, p + 1, W->qr, W->reduced) || !isfinite(cost)) {
      o.status = NONFINITE;
      break;
    }
    double gradient = 0;
    /* D restarts at the first Jacobian, and where every column shrank below `shrunk` of its maximum;
       a single column that shrank below `column_shrunk` of its maximum restarts alone (`lm.COLUMN_SHRUNK`) */
    int restart = 1;
    for (int64_t j = 0; j < p; j++) {
      W->norms[j] = safe_norm(W->reduced + j, p, p + 1);
      restart &= o.jacobians == 1 || W->norms[j] < O->shrunk * W->scale[j];
    }
    for (int64_t j = 0; j < p; j++) {
      double norm = W->norms[j];
      if (restart)
        W->scale[j] = norm > 0 ? norm : 1;
      else if (norm > 0 && norm < O->column_shrunk * W->scale[j])
        W->scale[j] = norm;
      else
        W->scale[j] = fmax(W->scale[j], norm);
      W->live_scale[j] = norm > 0 ? W->scale[j] : 0;
      double dot = 0;
      for (int64_t i = 0; i < p; i++) dot += W->reduced[i * (p + 1) + j] * W->reduced[i * (p + 1) + p];
      gradient = fmax(gradient, fabs(dot) / fmax(norm, DBL_MIN));
    }
    if (restart) {
      double start = O->factor * scaled_norm(W->scale, W->theta, p);
      radius = fmax(start != 0 ? start : O->factor, O->visible_step * sqrt(cost));
    }
    if (cost == 0) {
      o.status = EXACT;
      break;
    }
    if (gradient <= O->gtol * sqrt(cost)) {
      o.status = GTOL;
      break;
    }
    decompose(W, p, !restart); /* warm from this curve's previous V only: results never depend on
                                   which curve a thread fitted before */
    Damped d = damped_step(W, p, O);
    int low_rank = W->s[p - 1] <= O->rank_tolerance * W->s[0];
    double theta_norm = scaled_norm(W->live_scale, W->theta, p);
    int64_t status = RUNNING;
    for (;;) {
      double step_norm, decrease;
      double lam = solve(W, p, &d, radius, &step_norm, &decrease);
      if (o.steps == 0 && o.jacobians == 1) radius = fmin(radius, step_norm);
      step_from(W, p, W->coordinates, W->velocity);
      if (lam > 0) {
        half_acceleration(P, W, b, lam, step_norm, O);
        o.evaluations++;
        for (int64_t j = 0; j < p; j++) W->velocity[j] += W->projected[j];
      }
      for (int64_t j = 0; j < p; j++) W->trial[j] = W->theta[j] + W->velocity[j];
      double cost_trial = residuals(P, W, b, W->trial, W->r_trial);
      o.evaluations++;
      int finite = isfinite(cost_trial), near = 0.1 * sqrt(cost_trial) < sqrt(cost);
      double actual = finite && near ? 1 - cost_trial / cost : -1.0;
      double linear_part = decrease / cost, damping_part = lam * step_norm * step_norm / cost;
      double predicted = linear_part + 2 * damping_part, directional = -(linear_part + damping_part);
      double ratio = predicted != 0 ? actual / predicted : 0.0;
      if (ratio <= 0.25) {
        double shrink = actual >= 0 ? 0.5 : 0.5 * directional / (directional + 0.5 * actual);
        if (!finite || !near || shrink < 0.1) shrink = 0.1;
        radius = shrink * fmin(radius, step_norm / 0.1);
      } else if (lam == 0 || ratio >= 0.75) {
        radius = step_norm / 0.5;
      }
      int accepted = ratio >= 1e-4;
      if (accepted) {
        memcpy(W->theta, W->trial, p * sizeof(double));
        double *swap = W->r;
        W->r = W->r_trial;
        W->r_trial = swap;
        cost = cost_trial;
        theta_norm = scaled_norm(W->live_scale, W->theta, p);
        o.steps++;
        record(&o, history, O, cost);
        memmove(W->recent, W->recent + 1, O->drift_window * sizeof(double));
        W->recent[O->drift_window] = cost;
      }
      int exhausted = 0.5 * ratio <= 1 && d.gauss_newton_decrease <= O->unexploited_share * cost;
      status = trial_status(actual, predicted, exhausted, radius, theta_norm, cost, accepted, low_rank, W->recent,
                            o.steps, O);
      nonfinite_run = finite ? 0 : nonfinite_run + 1;
      if (nonfinite_run && (status != RUNNING || nonfinite_run >= O->nonfinite_retries)) status = NONFINITE;
      if (status != RUNNING || accepted) break;
    }
    o.cost = cost;
    if (status != RUNNING) {
      o.status = status;
      break;
    }
  }
  o.cost = cost;
  if ((O->polished >> o.status) & 1) polish(P, W, b, &o, history, O);
  return o;
}

/* The SVD of R D^-1 (R: the p x p head of W->reduced, row stride p + 1; D: its column norms, 1 for zero
   columns) into W->s, W->vt, with D in W->scale. With ``values``, a column whose reach ||J_j||
   max(|b_j|, 1) is below ``floor`` counts as zero (rounding noise: `statistics.INSENSITIVE`). Returns
   0 (and zero columns) when R holds a NaN or inf. */
CG_FN int scaled_svd(Work *W, int64_t p, const double *values, double floor) {
  int finite = 1;
  for (int64_t i = 0; i < p; i++) /* R of J only, as Python checks it (not the residual column) */
    for (int64_t j = 0; j < p; j++) finite &= isfinite(W->reduced[i * (p + 1) + j]) != 0;
  for (int64_t j = 0; j < p; j++) {
    double norm = finite ? safe_norm(W->reduced + j, p, p + 1) : 0;
    if (values && norm * fmax(fabs(values[j]), 1.0) < floor) norm = 0;
    W->norms[j] = norm;
    W->scale[j] = norm > 0 ? norm : 1;
  }
  for (int64_t i = 0; i < p; i++)
    for (int64_t j = 0; j < p; j++)
      W->a[i * p + j] = finite && W->norms[j] > 0 ? W->reduced[i * (p + 1) + j] / W->scale[j] : 0;
  for (int64_t i = 0; i < p; i++) W->qtr[i] = 0;
  svd(W, p, W->qtr, 0);
  return finite;
}

/* Entry (i, j) of core = V diag(1 / S^2) V^T over the directions kept (singular values above
   `statistics.RANK_TOLERANCE` of the largest) of the SVD in W (`statistics.gram_pseudo_inverse`). */
CG_FN double core_entry(const Work *W, int64_t p, int64_t i, int64_t j, const Options *O) {
  double core = 0;
  for (int64_t m = 0; m < p; m++)
    if (W->s[0] > 0 && W->s[m] > O->statistics_rank_tolerance * W->s[0])
      core += W->vt[m * p + i] * W->vt[m * p + j] / (W->s[m] * W->s[m]);
  return core;
}

/* Standard errors of curve b from the R of J (with respect to the values) at its solution (as
   `statistics.batch_stderr`): s^2 D^-1 V diag(1 / S^2) V^T D^-1, NaN for the parameters of a null
   direction (their entry of the projector onto the null space above `statistics.NULL_COMPONENT`^2),
   a column whose reach is below ``floor`` counting as zero (`scaled_svd` at the ``values``). */
CG_FN void standard_errors(Work *W, int64_t p, double cost, double dof, const Options *O, const double *values,
                           double floor, double *out) {
  int finite = scaled_svd(W, p, values, floor);
  double variance = dof > 0 ? cost / dof : NAN;
  for (int64_t i = 0; i < p; i++) {
    double null_share = 0;
    for (int64_t m = 0; m < p; m++)
      if (!(W->s[0] > 0 && W->s[m] > O->statistics_rank_tolerance * W->s[0]))
        null_share += W->vt[m * p + i] * W->vt[m * p + i];
    int involved = null_share > O->null_component * O->null_component;
    /* square roots before the units, so that parameters near 1e300 keep finite errors */
    out[i] = involved || !finite ? NAN : sqrt(fabs(core_entry(W, p, i, i, O))) * sqrt(variance) / W->scale[i];
  }
}

/* ||y w s|| of curve b (weights w, the curve's scale s), safe from overflow: the norm of the residuals
   of f = 0 (-y w s, rounded as y w s); uses W->r_probe. */
CG_FN double data_norm(const Problem *P, Work *W, int64_t b) {
  memset(W->r_probe, 0, P->points * sizeof(double));
  finish(P, b, W->r_probe, NULL, 0);
  return safe_norm(W->r_probe, P->points, 1);
}

/* The vectors of p + 1 doubles in Work (values ... live_scale). */
enum { VECTORS = 15 };

/* The words (8 bytes each) of one curve's Work: doubles, then the pointer and index arrays. */
CG_FN int64_t work_words(int64_t n, int64_t p, int64_t inputs, const Options *O) {
  int64_t c = p + 1, m = n > c ? n : c;
  return VECTORS * c + 3 * p * p + c * n + c * m + 3 * n + c * c + O->drift_window + 1 + inputs + 1 + 2 * c;
}

/* W's arrays laid out over ``memory`` (`work_words` words). */
CG_FN void carve(Work *W, double *memory, int64_t n, int64_t p, int64_t inputs, const Options *O) {
  int64_t c = p + 1, m = n > c ? n : c;
  double **vectors[VECTORS] = {&W->values, &W->theta, &W->trial,        &W->velocity, &W->probe_point,
                               &W->scale,  &W->norms, &W->qtr,          &W->s,        &W->products,
                               &W->gauss_newton, &W->squares, &W->coordinates, &W->projected, &W->live_scale};
  W->memory = memory;
  for (int64_t k = 0; k < VECTORS; k++, memory += c) *vectors[k] = memory;
  W->a = memory, memory += p * p;
  W->v = memory, memory += p * p;
  W->vt = memory, memory += p * p;
  W->block = memory, memory += c * n;
  W->qr = memory, memory += c * m;
  W->r = memory, memory += n;
  W->r_trial = memory, memory += n;
  W->r_probe = memory, memory += n;
  W->reduced = memory, memory += c * c;
  W->recent = memory, memory += O->drift_window + 1;
  W->in = (const double **)memory, memory += inputs + 1; /* pointers and int64: 8 bytes, as a double */
  W->out = (double **)memory, memory += c;
  W->order = (int64_t *)memory;
}

typedef struct {
  double *theta, *cost, *history;
  int64_t *counts, *recorded;
} Fits;

/* Whether a parameter of curve b stopped mattering at W->theta: ||J_j|| max(|b_j|, 1) below
   O->saturation ||y / sigma|| (J with respect to the internal coordinates, b the values: as
   `api._saturated`). */
CG_FN int saturated(const Problem *P, Work *W, int64_t b, const Options *O) {
  int64_t n = P->points, p = P->p;
  to_external(P, W->theta, W->probe_point);
  augmented(P, W, b, W->theta, 0);
  double threshold = O->saturation * data_norm(P, W, b); /* J is weighted and scaled: so is y */
  for (int64_t j = 0; j < p; j++)
    if (safe_norm(W->block + j * n, n, 1) * fmax(fabs(W->probe_point[j]), 1.0) < threshold) return 1;
  return 0;
}

CG_FN void fit_task(const Problem *P, const Options *O, Work *W, int64_t k, int64_t b, void *context) {
  Fits *F = (Fits *)context;
  int64_t p = P->p;
  memcpy(W->theta, F->theta + k * p, p * sizeof(double));
  Outcome o = solve_curve(P, W, b, F->history + k * O->history, O);
  memcpy(F->theta + k * p, W->theta, p * sizeof(double));
  F->cost[k] = o.cost;
  int64_t counts[5] = {o.status, o.evaluations, o.jacobians, o.steps, 0};
  if (o.status != NONFINITE) counts[4] = saturated(P, W, b, O);
  memcpy(F->counts + k * 5, counts, sizeof(counts));
  F->recorded[k] = o.recorded;
}

typedef struct {
  const double *values, *dof;
  double *stderr, *cost;
} Errors;

CG_FN void errors_task(const Problem *P, const Options *O, Work *W, int64_t k, int64_t b, void *context) {
  Errors *E = (Errors *)context;
  int64_t p = P->p, n = P->points;
  augmented(P, W, b, E->values + k * p, 1);
  reduce(W->block, n, p + 1, W->qr, W->reduced);
  E->cost[k] = squared(W->block + p * n, n);
  double floor = O->insensitive * data_norm(P, W, b); /* as a single fit's report: `statistics.INSENSITIVE` */
  standard_errors(W, p, E->cost[k], E->dof[k], O, E->values + k * p, floor, E->stderr + k * p);
}

typedef struct {
  const double *values;  /* count x p: the parameter values */
  const double *dof;     /* count: degrees of freedom */
  int64_t absolute;      /* sigma absolute: variance = scale^2 (1 in the data's units), else cost / dof */
  double insensitive;    /* `statistics.INSENSITIVE` */
  double *cost, *norm;   /* count each: ||r||^2 and ||y w|| (in the curve's scaled units) */
  double *fitted;        /* count x N: f at the values, unweighted */
  double *covariance, *correlation, *stderr, *s, *vt; /* count x p x p, x p x p, x p, x p, x p x p */
  int64_t *finite;       /* count: 0 where J held a NaN or inf (the statistics are then NaN) */
} Report;

/* `statistics.uncertainty` of curve b at its values: covariance s^2 D^-1 V diag(1/S^2) V^T D^-1 over
   the directions kept (singular values above `statistics.RANK_TOLERANCE` of the largest), standard
   errors, correlation; and the SVD (S, V^T) from which Python groups the parameters of null directions. */
CG_FN void report_task(const Problem *P, const Options *O, Work *W, int64_t k, int64_t b, void *context) {
  Report *R = (Report *)context;
  int64_t p = P->p, n = P->points;
  const double *values = R->values + k * p;
  augmented(P, W, b, values, 1);
  double cost = squared(W->block + p * n, n), norm = data_norm(P, W, b);
  R->cost[k] = cost;
  R->norm[k] = norm;
  W->out[0] = R->fitted + k * n; /* inputs as `augmented` set them: curve b at the values */
  cg_model_values((const double *const *)W->in, W->out, n);
  reduce(W->block, n, p + 1, W->qr, W->reduced);
  int finite = R->finite[k] = scaled_svd(W, p, values, R->insensitive * norm);
  double unit = P->scales ? P->scales[b] : 1;
  double variance = R->absolute ? unit * unit : R->dof[k] > 0 ? cost / R->dof[k] : NAN;
  double *covariance = R->covariance + k * p * p, *correlation = R->correlation + k * p * p;
  double *spread = W->products; /* sqrt |core_ii| */
  for (int64_t i = 0; i < p; i++) /* units below, once every core_ii is known */
    for (int64_t j = 0; j < p; j++) covariance[i * p + j] = core_entry(W, p, i, j, O);
  for (int64_t i = 0; i < p; i++) spread[i] = sqrt(fabs(covariance[i * p + i]));
  for (int64_t i = 0; i < p; i++) {
    R->stderr[k * p + i] = finite ? sqrt(variance) * spread[i] / W->scale[i] : NAN;
    for (int64_t j = 0; j < p; j++) {
      double core = covariance[i * p + j];
      correlation[i * p + j] = finite ? core / (spread[i] * spread[j]) : NAN;
      covariance[i * p + j] = finite ? core * variance / (W->scale[i] * W->scale[j]) : NAN;
    }
  }
  memcpy(R->s + k * p, W->s, p * sizeof(double));
  memcpy(R->vt + k * p * p, W->vt, p * p * sizeof(double));
}

#ifndef CG_DEVICE /* the host's threads: OpenMP, each thread's Work from calloc */
CG_FN int allocate(Work *W, int64_t n, int64_t p, int64_t inputs, const Options *O) {
  double *memory = (double *)calloc(work_words(n, p, inputs, O), sizeof(double));
  W->memory = memory;
  if (!memory) return 0;
  carve(W, memory, n, p, inputs, O);
  return 1;
}

CG_FN void release(Work *W) { free(W->memory); }

/* task(..., k, index[k], context) for every k < count, in parallel, each thread with its own Work.
   Returns 0, or -1 when memory ran out. */
typedef void (*Task)(const Problem *P, const Options *O, Work *W, int64_t k, int64_t b, void *context);

CG_FN int for_each_curve(const Problem *P, const Options *O, const int64_t *index, int64_t count, int threads,
                          Task task, void *context) {
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1 && count > 1) reduction(| : failed)
  {
    Work W;
    int ready = allocate(&W, P->points, P->p, P->inputs, O);
    failed |= !ready;
    /* every thread must reach the worksharing loop (its barrier), even one without memory */
#pragma omp for schedule(dynamic, 16)
    for (int64_t k = 0; k < count; k++)
      if (ready) task(P, O, &W, k, index[k], context);
    release(&W);
  }
  return failed ? -1 : 0;
}

/* Fit the curves ``index[0..count)``; row k of theta (count x p) holds curve index[k]'s start and
   receives its solution. Per row: cost, counts (status, evaluations, jacobians, steps, and 1 when a
   curve that did not fail stopped on a plateau: see `saturated`), ``history``
   (H costs: the first H - 1 recorded and the last) with ``recorded`` the number there were.
   Returns 0, or -1 when memory ran out. */
int lm_batch(const Problem *P, const Options *O, const int64_t *index, int64_t count, int threads, double *theta,
             double *cost, int64_t *counts, double *history, int64_t *recorded) {
  Fits fits = {theta, cost, history, counts, recorded};
  return for_each_curve(P, O, index, count, threads, fit_task, &fits);
}

/* Standard errors (count x p) and costs of the curves ``index`` at parameter ``values`` (count x p),
   with ``dof`` degrees of freedom each. Returns 0, or -1 when memory ran out. */
int lm_errors(const Problem *P, const Options *O, const int64_t *index, int64_t count, int threads,
              const double *values, const double *dof, double *stderr, double *cost) {
  Errors errors = {values, dof, stderr, cost};
  return for_each_curve(P, O, index, count, threads, errors_task, &errors);
}

/* The statistics of the curves ``index`` at their ``values`` (see `Report`). Returns 0, or -1 when
   memory ran out. */
int lm_report(const Problem *P, const Options *O, const int64_t *index, int64_t count, int threads,
              Report *report) {
  return for_each_curve(P, O, index, count, threads, report_task, report);
}
#else /* the GPU's threads: one curve each, its Work carved from one preallocated workspace */
/* Thread k's Work from ``workspace`` (``words`` = `work_words` per thread); 0 past ``count``. */
CG_FN int thread_work(const Problem *P, const Options *O, double *workspace, int64_t words, int count, Work *W,
                      int64_t *k) {
  *k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (*k >= count) return 0;
  carve(W, workspace + *k * words, P->points, P->p, P->inputs, O);
  return 1;
}

/* `lm_batch` on the GPU: curve ``index[k]`` on thread k. */
extern "C" __global__ void cg_lm_batch(const Problem *P, const Options *O, const int64_t *index, int count,
                                       double *workspace, int words, double *theta, double *cost,
                                       int64_t *counts, double *history, int64_t *recorded) {
  Work W;
  int64_t k;
  Fits fits = {theta, cost, history, counts, recorded};
  if (thread_work(P, O, workspace, words, count, &W, &k)) fit_task(P, O, &W, k, index[k], &fits);
}

/* `lm_errors` on the GPU: curve ``index[k]`` on thread k. */
extern "C" __global__ void cg_lm_errors(const Problem *P, const Options *O, const int64_t *index, int count,
                                        double *workspace, int words, const double *values, const double *dof,
                                        double *stderr, double *cost) {
  Work W;
  int64_t k;
  Errors errors = {values, dof, stderr, cost};
  if (thread_work(P, O, workspace, words, count, &W, &k)) errors_task(P, O, &W, k, index[k], &errors);
}
#endif
