"""Global fits in `fit_batch`: parameters marked ``{"shared": True}`` are one value for the whole batch,
the others one per curve, fitted jointly by `global_lm` (any model, device and dtype; a batch the
native engine would fit goes through this tensor solver too).

Curves without data (status no_data) are left out of the joint problem. With ``distributed=True``
each rank holds a consecutive share of the curves; ranks exchange only the shared block's totals. The
result's shared part is a `SharedParameters` (``BatchFitResult.shared``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DataError, UsageError
from ..strict_json import json_ready
from .distributed import local_shard
from .global_lm import GlobalProblem, Totals, global_levenberg_marquardt
from .global_statistics import global_uncertainty
from .goodness import correlation
from .lm import BatchOutcome
from .native import HistoryTable
from .status import TERMINATION, termination_message


def split_shared(params) -> tuple[object, tuple[str, ...]]:
    """``params`` without the "shared" keys, and the names marked shared (checked: one value each, untied)."""
    if not isinstance(params, Mapping):
        return params, ()
    clean, shared = {}, []
    for name, given in params.items():
        if not isinstance(given, Mapping) or "shared" not in given:
            clean[name] = given
            continue
        spec = dict(given)
        flag = spec.pop("shared")
        if not isinstance(flag, (bool, np.bool_)):
            raise UsageError(f"parameter {name!r}: 'shared' must be True or False, got {flag!r}")
        if flag and not spec.get("fixed", False):  # a fixed value is the same for every curve anyway
            _check_shared(name, spec, params)
            shared.append(name)
        clean[name] = spec
    # local parameters first: each curve's [J | r] then comes in the order block elimination needs
    ordered = {name: clean[name] for name in clean if name not in shared}
    ordered.update({name: clean[name] for name in shared})
    return ordered, tuple(shared)


def _check_shared(name: str, spec: dict, params: Mapping) -> None:
    """Refuse a shared parameter given one value per curve, or tied to a local one (any other tie is
    refused with every tied parameter, by `parameters.batch_parameter_specs`)."""
    value = spec.get("value")
    if value is not None and np.ndim(np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)) > 0:
        raise UsageError(
            f"shared parameter {name!r} is one value for the whole batch, but its initial value holds "
            f"{np.size(value)} numbers: give one number, or drop 'shared' to fit one value per curve"
        )
    words = set(re.findall(r"[A-Za-z_]\w*", str(spec.get("expr", ""))))
    local = sorted(n for n in words & set(params) if not isinstance(params[n], Mapping) or not params[n].get("shared"))
    if local:
        raise UsageError(
            f"shared parameter {name!r} is tied to {spec['expr']!r}, which names local (per-curve) parameter "
            f"{local[0]!r}: a shared value cannot follow a per-curve one; make {local[0]!r} shared too, "
            f"or drop 'shared' from {name!r}"
        )


def fit_global(batch, shared: tuple[str, ...], shards, threads: int) -> tuple:
    """Fit ``batch`` (a checked `api._Batch`) with the parameters ``shared`` joint; the outcome, values
    (B, p), stderr (B, p), costs (B,) for `_Batch.result`, and the `SharedParameters`. ``threads``: of the
    C kernels over the curves (torch's own operations, on small per-curve blocks, run as the caller set)."""
    problem = batch.problem
    # the L local parameter columns first, then the S shared ones (`split_shared`'s order; fixed ones left out)
    S = sum(name in shared for name in problem.names)
    L = len(problem.names) - S
    # (every curve where no entry is masked: a (B, N) reduction saved, 0.6 ms at 10^4 x 64)
    every = torch.arange(problem.batch, device=problem.mask.device)
    with_data = problem.mask.any(-1).nonzero().flatten() if problem.masked else every
    if len(with_data) == 0:
        raise DataError("no curve has a finite data point: there is nothing to fit")
    curves = with_data if shards is None else with_data[local_shard(len(with_data), shards.rank, shards.world)]
    totals = Totals(shards)
    joint = GlobalProblem(problem, curves, (L, S), batch.chunk_size, totals, batch.solver, threads)
    theta = problem.initial_theta()
    options = {name: batch.options[name] for name in ("ftol", "xtol", "gtol", "max_steps")}
    rows = slice(None) if len(curves) == problem.batch else curves  # (every curve: a view, no gather)
    outcome = global_levenberg_marquardt(joint, theta[rows, :L], theta[0, L:], **options)
    values = problem.external(joint.full(outcome.local, outcome.shared))
    # (from a stand-in curve: a rank may hold none)
    shared_values = problem.external(joint.full(outcome.local.new_zeros(1, L), outcome.shared))[0, L:]
    upper = outcome.upper  # J at the solution, where the last Jacobian was taken there and theta is the values
    if upper is None or problem.bounded:
        upper = joint.factors(values[:, :L], shared_values, external=True)
    here = problem.mask[curves].sum() if problem.masked else torch.tensor(len(curves) * problem.y.shape[-1])
    points = float(totals.sum(here.to(values.dtype)))
    dof = int(points) - S - len(with_data) * L
    variance = outcome.cost / dof if dof > 0 else float("nan")
    data_norm = _data_norm(problem, curves, totals)
    free = problem.names[L:]
    spread = global_uncertainty(upper, totals, (L, S), variance, free, data_norm, shared_values.cpu().numpy(), threads)
    parts = _gathered(shards, outcome, values, spread)
    return _assembled(batch, with_data, theta, outcome, parts, spread, dof, L)


def _data_norm(problem, curves: torch.Tensor, totals: Totals) -> float:
    """||y / sigma|| over the curves of every rank (the scale against which a column has no effect)."""
    every = len(curves) == problem.batch  # (then in order: they are sorted and distinct)
    y = problem.weighted_y(None if every else curves).flatten()
    return float(totals.sum(torch.linalg.vecdot(y, y))) ** 0.5


def _gathered(shards, outcome, values: torch.Tensor, spread) -> dict:
    """Every rank's per-curve arrays (values, internal local coordinates, costs, covariance blocks), joined."""
    local = {
        "values": values.cpu(),
        "local": outcome.local.cpu(),
        "curve_cost": outcome.curve_cost.cpu(),
        "local_covariance": spread.local_covariance.cpu(),
        "cross_covariance": spread.cross_covariance.cpu(),
        "local_stderr": spread.local_stderr.cpu(),
        "undetermined": spread.local_undetermined.cpu(),
    }
    if shards is None:
        return local
    parts = shards.gather_objects(local)
    return {key: torch.cat([part[key] for part in parts]) for key in local}


def _assembled(batch, with_data, theta, outcome, parts, spread, dof: int, L: int):
    """Per-curve arrays over the whole batch (NaN for curves without data), the outcome and the shared part."""
    problem, count = batch.problem, batch.problem.batch
    device, dtype = theta.device, theta.dtype
    index = with_data.to(device)
    every = len(with_data) == count  # (then in order: sorted and distinct) rows by a slice, not a gather
    rows = slice(None) if every else index
    values = torch.full_like(theta, float("nan"))
    values[rows] = parts["values"].to(device)
    stderr = torch.full_like(theta, float("nan"))
    stderr[rows, :L] = parts["local_stderr"].to(device, dtype)
    stderr[rows, L:] = torch.as_tensor(spread.shared_stderr, dtype=dtype, device=device)
    cost = torch.full((count,), float("nan"), dtype=dtype, device=device)
    cost[rows] = parts["curve_cost"].to(device)
    internal = theta.clone()
    internal[rows, :L] = parts["local"].to(device)
    internal[rows, L:] = outcome.shared
    batch_outcome = BatchOutcome(
        theta=internal,
        status=[outcome.status] * count,
        cost=cost,
        evaluations=torch.full((count,), outcome.evaluations),
        jacobians=torch.full((count,), outcome.jacobians),
        steps=torch.full((count,), outcome.steps),
        initial_cost=cost.clone(),
        accepted=[],
        # (one table, not 10^4 small lists: each a tracked object, and so many start a full garbage collection)
        histories=HistoryTable(cost.cpu().numpy()[:, None], np.ones(count, dtype=np.int64)),
    )
    local_names, free = problem.names[:L], problem.names[L:]
    picked = slice(None) if every else with_data.cpu().numpy()
    blocks = {key: np.full((count, L, size), np.nan) for key, size in (("local", L), ("cross", len(free)))}
    for key, block in blocks.items():
        block[picked] = parts[f"{key}_covariance"].numpy()
    shared = SharedParameters(
        params={name: float(values[index[0], L + k]) for k, name in enumerate(free)},
        stderr={name: float(error) for name, error in zip(free, spread.shared_stderr, strict=True)},
        covariance=spread.shared_covariance,
        local_names=local_names,
        local_covariance=blocks["local"],
        cross_covariance=blocks["cross"],
        cost=outcome.cost,
        dof=dof,
        status=outcome.status,
        evaluations=outcome.evaluations,
        jacobians=outcome.jacobians,
        condition=spread.condition,
        warnings=spread.warnings + _local_warnings(parts["undetermined"], with_data, local_names),
    )
    return batch_outcome, values, stderr, cost, shared


def _local_warnings(undetermined: torch.Tensor, with_data: torch.Tensor, names) -> list[str]:
    """A warning per local parameter some curves do not determine, naming the first few curves."""
    warnings = []
    for j, name in enumerate(names):
        curves = with_data[undetermined[:, j].to(with_data.device)].tolist()
        if curves:
            listed = ", ".join(map(str, curves[:10])) + (" ..." if len(curves) > 10 else "")
            warnings.append(
                f"local parameter {name} is not identifiable on {len(curves)} curve(s) ({listed}): those curves "
                "do not determine it, and its standard error there is NaN"
            )
    return warnings


def global_curve(result, i: int, shared: SharedParameters, names: tuple[str, ...]):
    """Curve ``i``'s `FitResult` with the global fit's covariance of (theta_i, phi) in place of its own
    (``names``: the model's columns, the local ones first as `split_shared` orders them)."""
    cross = shared.cross_covariance[i]
    covariance = np.block([[shared.local_covariance[i], cross], [cross.T, shared.covariance]])
    result.covariance, result.correlation = covariance, correlation(covariance)
    for j, name in enumerate(shared.local_names):
        result.stderr[name] = float(np.sqrt(abs(covariance[j, j])))
    result.stderr.update(shared.stderr)
    # the curve's own rank, dof and conditioning say nothing about the joint problem: the joint fit's instead
    alone = ("identifiable", "degrees of freedom", "ill-conditioned")
    result.warnings = [text for text in result.warnings if not any(word in text for word in alone)]
    result.warnings += shared.warnings
    result.not_identifiable = [[name] for name in names if not np.isfinite(result.stderr.get(name, 0.0))]
    result.warnings.append(
        f"curve {i} of a global fit: {', '.join(shared.names)} shared by all curves; the standard errors and "
        "covariance are the joint fit's"
    )
    return result


@dataclass
class SharedParameters:
    """Shared parameters of a global fit (``BatchFitResult.shared``): one value for all curves.

    ``covariance`` is cov(phi) (S, S); ``local_covariance[b]`` cov(theta_b) (L, L) and
    ``cross_covariance[b]`` cov(theta_b, phi) (L, S) for each curve b (NaN for curves without data),
    the blocks of s^2 (J^T J)^-1 of the dense stacked problem, s^2 = cost / dof over all curves.
    """

    params: dict[str, float]
    stderr: dict[str, float]
    covariance: np.ndarray = field(repr=False)
    local_names: tuple[str, ...] = ()
    local_covariance: np.ndarray = field(default=None, repr=False)
    cross_covariance: np.ndarray = field(default=None, repr=False)
    cost: float = math.nan
    dof: int = 0
    status: str = "max_steps"
    evaluations: int = 0
    jacobians: int = 0
    condition: float = math.nan
    warnings: list[str] = field(default_factory=list)

    @property
    def names(self) -> tuple[str, ...]:
        """The free shared parameters, in the order of ``covariance``."""
        return tuple(self.stderr)

    @property
    def success(self) -> bool:
        """True when the joint fit converged (see `TERMINATION`)."""
        return TERMINATION[self.status][0]

    @property
    def correlation(self) -> np.ndarray:
        """cov_ij / (se_i se_j) of the shared parameters."""
        return correlation(self.covariance)

    def summary(self) -> str:
        """One line per shared parameter (value +- stderr), the joint fit's status, cost and warnings."""
        lines = [
            f"global fit: {self.status} ({termination_message(self.status)}), total cost {self.cost:.6g}, "
            f"dof {self.dof}, {self.jacobians} Jacobians"
        ]
        lines += [f"  shared {name} = {value:.10g} +- {self.stderr[name]:.4g}" for name, value in self.params.items()]
        lines.extend(f"warning: {text}" for text in self.warnings)
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """The shared values, errors, covariance and joint statistics, JSON-ready (NaN -> None)."""
        return json_ready(
            {
                "params": {name: float(value) for name, value in self.params.items()},
                "stderr": {name: float(value) for name, value in self.stderr.items()},
                "covariance": np.asarray(self.covariance, dtype=np.float64),
                "status": self.status,
                "cost": float(self.cost),
                "dof": int(self.dof),
                "warnings": list(self.warnings),
            }
        )
