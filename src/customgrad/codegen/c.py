"""SymPy -> C99 source: the fused CPU kernels' loop bodies, one function call per row of the C column of
the printer table (`codegen.rules`), in float or double.

Float kernels call the ``f`` variants (``expf``). No fast-math anywhere: inf and NaN behave as IEEE says,
and `kernel_source` declares the vector variants glibc's libmvec provides (``#pragma omp declare simd``),
so gcc vectorises the math calls without ``-ffinite-math-only``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import sympy
from sympy.printing.c import C99CodePrinter

from .cse import shared_subexpressions
from .hoist import hoisted
from .rules import BINARY_RULES, FUNCTION_RULES, column

C_FUNCTIONS = column(FUNCTION_RULES, "c")
C_BINARY_FUNCTIONS = column(BINARY_RULES, "c")
#: Helpers the C column names, defined in every kernel over ``real`` (float or double), and the libm
#: functions each calls.
HELPERS = {
    "cg_sigmoid": ("static inline real cg_sigmoid(real x) { return (real)1 / ((real)1 + EXP(-x)); }", ("exp",)),
    # torch's softplus: x above the threshold 20, else log1p(exp(x))
    "cg_softplus": (
        "static inline real cg_softplus(real x) { return x > (real)20 ? x : LOG1P(EXP(x)); }",
        ("exp", "log1p"),
    ),
    # torch.sign: 0 at 0 and at NaN
    "cg_sign": ("static inline real cg_sign(real x) { return (real)((x > 0) - (x < 0)); }", ()),
    # torch.maximum / minimum: NaN in either argument gives NaN
    "cg_max": ("static inline real cg_max(real a, real b) { return (a > b || a != a) ? a : b; }", ()),
    "cg_min": ("static inline real cg_min(real a, real b) { return (a < b || a != a) ? a : b; }", ()),
}
#: Half storage read and written by the kernel itself, computed in float: C storage type and the two
#: conversions (bit-exact as torch's: float16 and bfloat16 round to nearest even, overflow to inf, NaN
#: stays NaN). Integer and float operations only, so gcc vectorises them (it does not vectorise
#: ``_Float16`` conversions in gcc 12), and no F16C or ``_Float16`` support is needed.
STORAGE = {
    "float16": (
        "uint16_t",
        """static inline float cg_bits_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t cg_float_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float cg_load(uint16_t h) {
  uint32_t o = (uint32_t)(h & 0x7fffu) << 13, e = o & 0x0f800000u;
  o += (uint32_t)(127 - 15) << 23;
  o = e == 0x0f800000u ? o + ((uint32_t)(128 - 16) << 23) : o;
  const float subnormal = cg_bits_float(o + (1u << 23)) - cg_bits_float(113u << 23);
  o = e == 0 ? cg_float_bits(subnormal) : o;
  return cg_bits_float(o | ((uint32_t)(h & 0x8000u) << 16));
}
static inline uint16_t cg_store(float f) {
  uint32_t x = cg_float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  const uint32_t big = x > 0x7f800000u ? 0x7e00u : 0x7c00u;
  const uint32_t subnormal = cg_float_bits(cg_bits_float(x) + cg_bits_float(126u << 23)) - (126u << 23);
  const uint32_t normal = (x + ((uint32_t)(15 - 127) << 23) + 0xfffu + ((x >> 13) & 1u)) >> 13;
  return (uint16_t)((x >= (143u << 23) ? big : x < (113u << 23) ? subnormal : normal) | sign);
}""",
    ),
    "bfloat16": (
        "uint16_t",
        """static inline float cg_load(uint16_t b) {
  const uint32_t u = (uint32_t)b << 16;
  float f; memcpy(&f, &u, 4); return f;
}
static inline uint16_t cg_store(float f) {
  uint32_t u; memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded);
}""",
    ),
}
_BUILTIN = {"fabs", "floor", "ceil", "rint"}  # compiled to instructions, not calls
_MULTIPLY_UP_TO = 4  # x**n for |n| <= 4 as products: exact like torch.square, cheaper than pow


class CCodePrinter(C99CodePrinter):
    """Prints a SymPy expression as a C expression over ``real`` variables named ``v_<symbol>``."""

    printmethod = "_customgrad_ccode"

    def __init__(self, single: bool):
        super().__init__({"math_macros": {}})
        self.single = single
        self.used: set[str] = set()

    def _call(self, name: str) -> str:
        if name.startswith("cg_"):
            self.used.add(name)
            self.used.update(HELPERS[name][1])
            return name
        self.used.add(name)
        return name + "f" if self.single else name

    def _print_constant_value(self, expr) -> str:
        value = float(sympy.N(expr, 17))
        if math.isnan(value):
            return "((real)NAN)"
        if math.isinf(value):
            return "((real)INFINITY)" if value > 0 else "(-(real)INFINITY)"
        text = repr(value)
        text = text if ("." in text or "e" in text) else text + ".0"
        return f"{text}f" if self.single else text

    _print_Integer = _print_constant_value
    _print_Rational = _print_constant_value
    _print_Float = _print_constant_value
    _print_NumberSymbol = _print_constant_value
    _print_Pi = _print_constant_value
    _print_Exp1 = _print_constant_value
    _print_Half = _print_constant_value
    _print_Infinity = _print_constant_value
    _print_NegativeInfinity = _print_constant_value
    _print_NaN = _print_constant_value

    def _print_Symbol(self, expr):
        return f"v_{expr.name}"

    def _print_Pow(self, expr, rational=False):
        base, exponent = expr.args
        if not expr.free_symbols:
            return self._print_constant_value(expr)
        printed = self.parenthesize(base, 1000)
        if exponent.is_Integer and 0 < abs(int(exponent)) <= _MULTIPLY_UP_TO:
            product = "*".join([printed] * abs(int(exponent)))
            return f"({product})" if exponent > 0 else f"((real)1/({product}))"
        if exponent == sympy.S.Half:
            return f"{self._call('sqrt')}({self._print(base)})"
        if exponent == -sympy.S.Half:
            return f"((real)1/{self._call('sqrt')}({self._print(base)}))"
        return f"{self._call('pow')}({self._print(base)}, {self._print(exponent)})"

    def _print_Function(self, expr):
        if not expr.free_symbols:
            return self._print_constant_value(expr)
        kind = type(expr)
        if kind in C_FUNCTIONS:
            return f"{self._call(C_FUNCTIONS[kind])}({self._print(expr.args[0])})"
        if kind in C_BINARY_FUNCTIONS:
            call = self._call(C_BINARY_FUNCTIONS[kind])
            printed = [self._print(arg) for arg in expr.args]
            result = printed[0]
            for item in printed[1:]:
                result = f"{call}({result}, {item})"
            return result
        raise NotImplementedError(f"no C translation for {kind.__name__}")

    def _print_Heaviside(self, expr):
        # H(0) = 1/2, as the torch printer
        return f"((real)0.5 + (real)0.5 * {self._call('cg_sign')}({self._print(expr.args[0])}))"

    def _print_DiracDelta(self, expr):
        return "((real)0)"

    def _print_Piecewise(self, expr):
        pieces = list(expr.args)
        result = "((real)NAN)" if pieces[-1].cond != sympy.true else self._print(pieces.pop().expr)
        for piece in reversed(pieces):
            result = f"(({self._print(piece.cond)}) ? ({self._print(piece.expr)}) : ({result}))"
        return result

    def _print_Relational(self, expr):
        return f"({self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)})"

    def _print_BooleanTrue(self, expr):
        return "1"

    def _print_BooleanFalse(self, expr):
        return "0"


# SymPy's C printer has a method per math function (_print_tanh, ...): route every one through the table.
for _kind in (*C_FUNCTIONS, *C_BINARY_FUNCTIONS):
    setattr(CCodePrinter, f"_print_{_kind.__name__}", CCodePrinter._print_Function)


def _prototypes(names: set[str], single: bool, vector: set[str]) -> list[str]:
    """``#pragma omp declare simd`` prototypes of the libm functions with a libmvec vector variant."""
    kind = "float" if single else "double"
    lines = []
    for name in sorted(names - _BUILTIN - set(HELPERS)):
        if name not in vector:
            continue
        arity = 2 if name in ("atan2", "pow") else 1
        arguments = ", ".join([kind] * arity)
        lines += ["#pragma omp declare simd notinbranch", f"{kind} {name}{'f' if single else ''}({arguments});"]
    return lines


#: How a kernel reads input k at element i = o * inner + j: a number, the full shape, or a tensor that
#: varies only along the inner (trailing) or only along the outer (leading) dimensions.
READS = {"s": "in{k}[0]", "v": "in{k}[i]", "r": "in{k}[j]", "c": "in{k}[o]"}


#: What a kernel does with output k's value r at element i: store it, or add it into a sum over all
#: elements ("s"), over the outer index ("r": out[j]) or over the inner index ("c": out[o]).
STORES = {"v": "out{k}[i] = r{k};", "s": "acc_s{k} += r{k};", "r": "acc_r{k}[j] += r{k};", "c": "acc_c{k} += r{k};"}


def kernel_source(
    argument_names: Sequence[str],
    outputs: Sequence[sympy.Expr],
    *,
    single: bool,
    layouts: str,
    vector: set[str],
    reductions: str = "",
    storage: str = "",
) -> str:
    """C source of ``void kernel(int64_t n, int64_t inner, int threads, const real* in..., real* out...)``.

    One parallel SIMD loop over ``n`` elements, split into ``n / inner`` rows of ``inner`` when an input
    varies along only one side of that split; ``layouts[k]`` says how input ``k`` is read (`READS`),
    ``reductions[k]`` what happens to output ``k`` (`STORES`; default: stored at full shape; the sums
    accumulate in double and are added into zero-filled outputs). Common subexpressions are shared.
    ``vector`` names the libm functions libmvec vectorises here. ``storage`` ("float16" or "bfloat16",
    with ``single``) makes the inputs and the full-shape outputs half storage (`STORAGE`), converted to
    and from float inside the loop; sums stay float.
    """
    reductions = reductions or "v" * len(outputs)
    split = any(mode in "rc" for mode in layouts + reductions)
    replacements, reduced = shared_subexpressions(outputs)
    # what is constant along the inner loop is computed before it (`hoist`): numbers, and per-row values
    invariant = "sc" if split else "s"
    constant = {name for name, layout in zip(argument_names, layouts, strict=True) if layout in invariant}
    symbols = {s for value in outputs for s in value.free_symbols if s.name in constant}
    pieces, replacements, reduced = hoisted(replacements, reduced, symbols) if symbols else ([], replacements, reduced)
    printer = CCodePrinter(single)
    body = [f"    const real v_{t.name} = {printer.doprint(value)};" for t, value in replacements]
    body += [f"    const real r{k} = {printer.doprint(value)};" for k, value in enumerate(reduced)]
    stores = {**STORES, **SPLIT_STORES} if split else STORES
    stores = {**stores, "v": "out{k}[i] = cg_store(r{k});"} if storage else stores
    body += ["    " + stores[mode].format(k=k) for k, mode in enumerate(reductions)]
    load = "cg_load({})" if storage else "{}"
    loads_before = [
        f"  const real v_{name} = {load.format(f'in{k}[0]')};"
        for k, name in enumerate(argument_names)
        if layouts[k] == "s"
    ]
    per_call = {s for s in symbols if s.name not in argument_names or layouts[argument_names.index(s.name)] == "s"}
    per_row = []
    for symbol, value in pieces:  # in order: each uses only inputs and earlier pieces
        if value.free_symbols <= per_call:
            per_call.add(symbol)
            loads_before.append(f"  const real v_{symbol.name} = {printer.doprint(value)};")
        else:
            per_row.append(f"  const real v_{symbol.name} = {printer.doprint(value)};")
    # Per-row values ("c") are read once per row, before the inner SIMD loop (gcc does not vectorise a
    # loop that converts a loop-invariant half value inside it).
    loads, row_loads = [], []
    for k, name in enumerate(argument_names):
        if layouts[k] != "s":
            line = f"const real v_{name} = {load.format(READS[layouts[k]].format(k=k))};"
            (row_loads if layouts[k] == "c" else loads).append(line)
    row_loads += [line.strip() for line in per_row]
    stored = STORAGE[storage][0] if storage else "real"
    parameters = [f"const {stored}* restrict in{k}" for k in range(len(argument_names))]
    parameters += [f"{stored if mode == 'v' else 'real'}* restrict out{k}" for k, mode in enumerate(reductions)]
    suffix = "f" if single else ""
    loads = ["    " + line for line in loads]
    row_loads = ["  " + line for line in row_loads]
    loops = _split_loops(loads, row_loads, body, reductions) if split else _flat_loops(loads, body, reductions)
    lines = [
        "#include <math.h>",
        "#include <stdint.h>",
        "#include <stdlib.h>",
        "#include <string.h>" if storage else "",
        f"typedef {'float' if single else 'double'} real;",
        STORAGE[storage][1] if storage else "",
        f"#define EXP exp{suffix}",
        f"#define LOG1P log1p{suffix}",
        *_prototypes(printer.used, single, vector),
        *(HELPERS[name][0] for name in sorted(printer.used & set(HELPERS))),
        f"void kernel(int64_t n, int64_t inner, int threads, {', '.join(parameters)}) {{",
        *loads_before,
        *loops,
        "}",
    ]
    return "\n".join(line for line in lines if line) + "\n"


def _flat_loops(loads: list[str], body: list[str], reductions: str) -> list[str]:
    """One loop over i, twice: gcc does not vectorise a parallel loop whose if() clause is false."""
    sums = [f"acc_s{k}" for k, mode in enumerate(reductions) if mode == "s"]
    clause = f" reduction(+:{', '.join(sums)})" if sums else ""
    return [
        *(f"  double {name} = 0;" for name in sums),
        "  if (threads > 1) {",
        f"  #pragma omp parallel for simd schedule(static) num_threads(threads){clause}",
        "  for (int64_t i = 0; i < n; i++) {",
        *loads,
        *body,
        "  }",
        "  } else {",
        f"  #pragma omp simd{clause}",
        "  for (int64_t i = 0; i < n; i++) {",
        *loads,
        *body,
        "  }",
        "  }",
        *(f"  out{name[5:]}[0] = (real){name};" for name in sums),
    ]


#: Sums of a split loop: in ``real`` over blocks (a row chunk of `COLUMN_BLOCK` columns; `ROW_BLOCK` rows per
#: column), then added into double: float vectors at full SIMD width, the error of a blocked sum.
SPLIT_STORES = {"s": "part_s{k} += r{k};", "r": "blk_r{k}[j] += r{k};", "c": "part_c{k} += r{k};"}
COLUMN_BLOCK, ROW_BLOCK = 1024, 64


def _split_loops(loads: list[str], row_loads: list[str], body: list[str], reductions: str) -> list[str]:
    """Rows of ``inner`` in parallel, each a SIMD loop (over chunks of `COLUMN_BLOCK` where a sum runs
    along it); per-thread sums are added into the outputs at the end."""
    by_mode = {mode: [k for k, m in enumerate(reductions) if m == mode] for mode in "src"}
    along = [f"s{k}" for k in by_mode["s"]] + [f"c{k}" for k in by_mode["c"]]  # sums along the inner loop
    clause = f" reduction(+:{', '.join(f'part_{name}' for name in along)})" if along else ""
    first, last = ("jb", "je") if along else ("0", "inner")
    inner_loop = [
        f"  #pragma omp simd{clause}",
        f"  for (int64_t j = {first}; j < {last}; j++) {{",
        "    const int64_t i = o * inner + j;",
        *loads,
        *body,
        "  }",
    ]
    if along:
        inner_loop = [
            f"  for (int64_t jb = 0; jb < inner; jb += {COLUMN_BLOCK}) {{",
            f"  const int64_t je = jb + {COLUMN_BLOCK} < inner ? jb + {COLUMN_BLOCK} : inner;",
            *(f"  real part_{name} = 0;" for name in along),
            *inner_loop,
            *(f"  acc_{name} += part_{name};" for name in along),
            "  }",
        ]
    flush = [
        f"  for (int64_t j = 0; j < inner; j++) {{ acc_r{k}[j] += blk_r{k}[j]; blk_r{k}[j] = 0; }}"
        for k in by_mode["r"]
    ]
    return [
        "  #pragma omp parallel num_threads(threads) if(threads > 1)",
        "  {",
        *(f"  double* restrict acc_r{k} = (double*)calloc(inner, sizeof(double));" for k in by_mode["r"]),
        *(f"  real* restrict blk_r{k} = (real*)calloc(inner, sizeof(real));" for k in by_mode["r"]),
        "  int64_t pending = 0;" if by_mode["r"] else "",
        *(f"  double acc_s{k} = 0;" for k in by_mode["s"]),
        "  #pragma omp for schedule(static)",
        "  for (int64_t o = 0; o < n / inner; o++) {",
        *(f"  double acc_c{k} = 0;" for k in by_mode["c"]),
        *row_loads,
        *inner_loop,
        *(f"  out{k}[o] = (real)acc_c{k};" for k in by_mode["c"]),
        *(([f"  if (++pending == {ROW_BLOCK}) {{", *flush, "  pending = 0;", "  }"]) if by_mode["r"] else []),
        "  }",
        *flush,
        "  #pragma omp critical",
        "  {",
        *(f"  for (int64_t j = 0; j < inner; j++) out{k}[j] += (real)acc_r{k}[j];" for k in by_mode["r"]),
        *(f"  out{k}[0] += (real)acc_s{k};" for k in by_mode["s"]),
        "  }",
        *(f"  free(acc_r{k});" for k in by_mode["r"]),
        *(f"  free(blk_r{k});" for k in by_mode["r"]),
        "  }",
    ]


def device_source(source: str) -> str:
    """A `kernel_source` kernel (double or float, no half storage) as CUDA device code.

    The same loop body: ``kernel`` and the helpers become ``static __device__`` functions, ``restrict``
    ``__restrict__``; the includes, OpenMP pragmas and the libmvec prototypes (host declarations of the
    math functions, which CUDA provides itself) are dropped. Wrap the result in a namespace to compile
    two kernels into one CUDA translation unit.
    """
    lines, prototype = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if prototype:  # the declaration after "#pragma omp declare simd"
            prototype = False
            continue
        prototype = stripped.startswith("#pragma omp declare simd")
        if stripped.startswith(("#include", "#pragma omp")):
            continue
        line = line.replace("static inline ", "static __device__ inline ").replace(" restrict ", " __restrict__ ")
        lines.append("static __device__ " + line if line.startswith("void kernel(") else line)
    return "\n".join(lines) + "\n"
