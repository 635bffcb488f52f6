"""The command line: ``customgrad fit | derive | check | list``. Parses arguments, calls the library, prints.

Errors from the library reach the user as one line ``error: ...`` and exit code 1 (2 for usage
errors), converted in one place, `main`; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import CustomgradError, FormulaError, UsageError


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises `UsageError` instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _positive_int(option: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a positive integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{option} must be a positive integer (1 or more), got {text!r}")
        return value

    return parse


def _positive_float(option: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a number, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{option} must be a finite positive number such as 1e-6, got {text!r}")
        return value

    return parse


def _add_definitions(parser) -> None:
    group = parser.add_argument_group("your own functions, for this run")
    group.add_argument(
        "--define",
        action="append",
        default=[],
        metavar='"NAME(INPUTS) = FORMULA"',
        help='a function formulas may call, e.g. --define "Lor(u) = 1/(1 + u**2)" (repeatable; '
        "a definition may call those before it)",
    )
    group.add_argument(
        "--defines",
        action="append",
        default=[],
        metavar="FILE",
        help="a file of such definitions, one a line ('#' starts a comment); read before --define",
    )


def _define_functions(args) -> None:
    if args.define or args.defines:
        from .definitions import define_all

        define_all(args.define, args.defines)


def _json_destination(args) -> Path | str | None:
    """Where ``--json`` goes, checked before the run: None, ``"-"`` (stdout) or a writable path."""
    if args.json in (None, "-"):
        return args.json
    from .plot import check_writable

    return check_writable(args.json, "--json")


@contextlib.contextmanager
def _stdout_for_json(args):
    """With ``--json -`` stdout carries the JSON document alone: whatever else is printed goes to stderr."""
    args.json_stream = sys.stdout
    if args.json != "-":
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _write_json(args, destination: Path | str | None, text: str) -> None:
    if destination is None:
        return
    if destination == "-":
        args.json_stream.write(text if text.endswith("\n") else text + "\n")
        args.json_stream.flush()
        return
    Path(destination).write_text(text)
    if not getattr(args, "quiet", False):
        print(f"wrote {destination}")


#: What ``customgrad fit``'s exit status means: the rule, stated once (``fit --help`` prints it).
EXIT_STATUS = (
    "exit status: 0 when the fit converged, or when a gradient method (the built-in run, --method lbfgs, "
    "adam, sgd) ran its steps: its status line says so, and no convergence is claimed; 1 when the fit "
    "failed: the loss became NaN or inf (or underflowed), Levenberg-Marquardt reached --steps without "
    "converging, or no curve of a --batch converged, or the model or data could not be used (a formula "
    "or data error, named in the message); 2 for a usage error (options, their values)."
)
#: Statuses of a gradient method that ran its steps: shown, not an error (`EXIT_STATUS`).
_RAN_ITS_STEPS = ("step_limit", "max_steps")


#: The names of `experiments.EXPERIMENTS`, here so that ``--help`` imports no torch (a test holds them equal).
EXPERIMENT_NAMES = ("blog", "tutorial")


def _add_fit(subparsers) -> None:
    parser = subparsers.add_parser(
        "fit",
        help="fit a model; with no arguments, the blog's experiment (fixed)",
        description="Fit a model. With no arguments: the blog's fit of a + b*P2(c*x + d) to tan(x), "
        "by the blog's own gradient descent, bugs fixed.",
        epilog=EXIT_STATUS,
    )
    parser.add_argument(
        "--experiment",
        choices=EXPERIMENT_NAMES,
        default=None,
        help="built-in experiment: blog (tan, P2, the default) or tutorial (sin, Legendre P3)",
    )
    parser.add_argument(
        "--steps",
        type=_positive_int("--steps"),
        default=None,
        help="step limit: the built-in run's gradient-descent steps (default 2000); with --model/--data or "
        "--method, the solver's (LM: Jacobian evaluations; default lm 1000, lbfgs 500, adam 5000, sgd 2000)",
    )
    parser.add_argument(
        "--lr",
        type=_positive_float("--lr"),
        default=None,
        help="learning rate (default: the experiment's, 1e-6 for blog, 5e-6 for tutorial)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="built-in experiment: seed for the random initial values (default 0)"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the result line")
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="write the result as JSON (parameters, errors, history, settings); '-': to stdout, the report to stderr",
    )
    parser.add_argument("--plot", metavar="PATH", help="write a PNG: data, fitted curve and loss curve")
    _add_fit_model_options(parser)
    _add_fit_batch_options(parser)
    parser.set_defaults(run=_run_fit)


def _add_fit_model_options(parser) -> None:
    """The options of a fit of your own model: formula, data, columns, parameters, method, intervals."""
    fitting = parser.add_argument_group("fitting your own model (or the experiment's data with --method)")
    fitting.add_argument("--model", help='formula, e.g. "a + b*P2(c*x + d)" (default for a NIST file: its model)')
    fitting.add_argument("--data", metavar="FILE", help="CSV (header optional), whitespace table, or NIST StRD .dat")
    fitting.add_argument(
        "--x",
        action="append",
        metavar="COL",
        help="predictor column, by name or 0-based index; repeat for several (default: 0)",
    )
    fitting.add_argument("--y", metavar="COL", help="response column, by name or index (default: 1)")
    fitting.add_argument("--sigma", metavar="COL", help="column of standard deviations of y")
    fitting.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="initial value of a parameter; repeat for each",
    )
    fitting.add_argument(
        "--bound",
        action="append",
        default=[],
        metavar="NAME=LOW:HIGH",
        help="bounds of a parameter (leave a side empty for none), e.g. b=0:",
    )
    fitting.add_argument(
        "--method",
        choices=["lm", "lbfgs", "adam", "sgd"],
        default=None,
        help="solver (default lm; without --model/--data and --method: the blog's SGD run)",
    )
    fitting.add_argument(
        "--loss",
        choices=["linear", "soft_l1", "huber", "cauchy"],
        default=None,
        help="rho of the squared residuals (default linear: least squares)",
    )
    fitting.add_argument(
        "--nan-policy",
        choices=["raise", "omit"],
        default=None,
        help="rows (--batch: entries) with NaN/inf or an empty cell: stop with an error or drop them "
        "(default: raise; --batch: omit)",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel over a torchrun process group (gloo on CPU, NCCL on GPU): each rank fits its share "
        "of the rows (--batch: of the curves); rank 0 prints and writes",
    )
    fitting.add_argument(
        "--start",
        type=int,
        choices=[1, 2],
        default=None,
        help="NIST files: which certified starting point to use (default 1)",
    )
    fitting.add_argument(
        "--absolute-sigma",
        action="store_true",
        help="take --sigma as absolute standard deviations (SciPy's absolute_sigma); default: relative",
    )
    fitting.add_argument("--ci", action="store_true", help="print profile-likelihood intervals at 1 and 2 sigma")
    fitting.add_argument(
        "--bands",
        choices=["confidence", "prediction"],
        default=None,
        help="2-sigma band shaded by --plot and written to --json (default for --plot: confidence)",
    )
    _add_definitions(parser)


def _add_fit_batch_options(parser) -> None:
    """The options of --batch: many curves at once, and what is written per curve."""
    batch = parser.add_argument_group("many curves at once (--batch)")
    batch.add_argument(
        "--batch",
        action="store_true",
        help="--data holds one curve per row (first row: the x values, unless --x-values); "
        "empty cells are missing points",
    )
    batch.add_argument("--x-values", metavar="FILE", help="--batch: the x values, from this file instead")
    batch.add_argument("--csv", metavar="PATH", help="--batch: write one line of results per curve")
    batch.add_argument(
        "--shared",
        action="append",
        default=[],
        metavar="NAME",
        help="--batch: one value of this parameter for all curves, fitted jointly with the others per curve "
        "(a global fit); repeat for each",
    )


def _run_fit(args) -> int:
    with _stdout_for_json(args):
        return _run_fit_command(args)


def _run_fit_command(args) -> int:
    if args.distributed:
        return _run_distributed(args)
    _warn_if_under_torchrun()
    _define_functions(args)
    if args.batch:
        return _run_batch_fit(args)
    if _fit_run(args) != "experiment":
        return _run_model_fit(args)
    from .experiments import explain_blog_fit, get_experiment, run_experiment
    from .plot import check_image_path, plot_experiment
    from .progress import progress_bar
    from .strict_json import dumps

    experiment = get_experiment(args.experiment)
    json_path = _json_destination(args)
    plot_path = check_image_path(args.plot, "--plot") if args.plot else None
    steps = args.steps or experiment.steps
    with progress_bar(steps, f"fitting ({experiment.name})", enabled=not args.quiet) as advance:

        def on_step(t: int, loss: float) -> None:
            if not args.quiet and t % experiment.log_every == experiment.log_every - 1:
                print(t, loss, flush=True)
            advance(f"loss {loss:.6g}")

        run = run_experiment(experiment, steps=steps, learning_rate=args.lr, seed=args.seed, on_step=on_step)
    print(experiment.result_line({k: _tensor(v) for k, v in run.params.items()}))
    if not args.quiet and run.diverged_at is None:
        print(
            f"(ran its fixed {len(run.losses)} steps of gradient descent in {run.seconds:.2f} s, with no "
            f"convergence test; final loss {run.losses[-1]:.7g})"
        )
        if experiment.name == "blog":
            print(explain_blog_fit(run.x, run.y))
    _write_json(args, json_path, dumps(run.to_dict()))
    if plot_path is not None:
        plot_experiment(run, plot_path)
        if not args.quiet:
            print(f"wrote {plot_path}")
    if run.divergence is not None:
        print(f"error: {run.divergence}", file=sys.stderr)
        return 1
    return 0


def _warn_if_under_torchrun() -> None:
    """Under torchrun (WORLD_SIZE > 1) without --distributed every rank would fit everything: rank 0 says so."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return
    if world > 1 and os.environ.get("RANK", "0") == "0":
        print(
            f"warning: running under torchrun (WORLD_SIZE={world}) without --distributed: each of the {world} "
            "processes fits all the data on its own and prints the same result; add --distributed to share "
            "the rows (with --batch: the curves) among them",
            file=sys.stderr,
            flush=True,
        )


def _run_distributed(args) -> int:
    """Join (or start) the torchrun process group, fit, and let only rank 0 print and write files.

    Every rank meets the same errors (same options, same file), so only rank 0 prints them; a rank
    whose own rows failed (`Shards.raise_together` marks its error ``rank_local``) prints its own.
    """
    try:
        if args.data is None:
            raise UsageError("--distributed needs --data FILE: every rank reads it and fits its share of the rows")
        _define_functions(args)
        if args.batch:  # every rank checks the options as given, before ranks > 0 drop their files
            _check_batch(args)
        else:
            _fit_run(args)
        return _fit_on_this_rank(args)
    except CustomgradError as error:
        if os.environ.get("RANK", "0") != "0" and not getattr(error, "rank_local", False):
            error.quiet = True  # rank 0 says it
        raise


def _fit_on_this_rank(args) -> int:
    import contextlib
    import io

    import torch
    import torch.distributed as dist

    started = not dist.is_initialized()
    if started:
        if "RANK" not in os.environ:
            raise UsageError("--distributed runs under torchrun: torchrun --nproc-per-node N -m customgrad fit ...")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    try:
        run = _run_batch_fit if args.batch else _run_model_fit
        if dist.get_rank() == 0:
            code = run(args)
        else:
            for option in ("json", "csv", "plot"):
                setattr(args, option, None)
            args.quiet = True
            with contextlib.redirect_stdout(io.StringIO()):
                code = run(args)
        if started:  # rank 0 writes files after the fit: no rank tears its connections down before it is done
            dist.barrier()
        return code
    finally:
        if started:
            dist.destroy_process_group()


def _fit_run(args) -> str:
    from .fit_command import fit_run

    return fit_run(args)


def _check_batch(args) -> None:
    from .fit_command import batch_run

    batch_run(args)


def _run_batch_fit(args) -> int:
    from .fit_command import batch_inputs
    from .plot import check_image_path, check_writable

    _check_batch(args)
    json_path = _json_destination(args)
    csv_path = check_writable(args.csv, "--csv") if args.csv else None
    plot_path = check_image_path(args.plot, "--plot") if args.plot else None
    result = batch_inputs(args)
    print(result.summary())
    _write_json(args, json_path, result.to_json())
    if csv_path is not None:
        result.to_csv(csv_path)
        if not args.quiet:
            print(f"wrote {csv_path}")
    if plot_path is not None:
        from .plot_batch import plot_batch

        plot_batch(result, plot_path)
        if not args.quiet:
            print(f"wrote {plot_path}")
    if not result.success.any():
        print("error: no curve's fit converged", file=sys.stderr)
        return 1
    return 0


def _run_model_fit(args) -> int:
    from .fit_command import fit_inputs, response_name
    from .plot import check_image_path

    json_path = _json_destination(args)
    plot_path = check_image_path(args.plot, "--plot") if args.plot else None
    result = fit_inputs(args)
    result.steps_option = "--steps"
    if args.ci and result.success:
        result.conf_interval((1, 2), progress=not args.quiet)
    if args.quiet:
        print(" ".join(f"{name}={value!r}" for name, value in result.params.items()))
    else:
        print(result.report(ci=args.ci and result.success))
    if args.quiet and args.ci and result.success:
        from .fit.profile import interval_table

        print("\n".join(interval_table(result)))
    _write_json(args, json_path, result.to_json(bands=args.bands))
    if plot_path is not None:
        result.plot(plot_path, bands=args.bands or "confidence", ylabel=response_name(args))
        if not args.quiet:
            print(f"wrote {plot_path}")
        shown, total = len(result.data["y"]), result.ndata
        if shown < total:  # a distributed fit: each rank holds its own rows, and rank 0 plots
            print(f"note: the plot shows rank 0's {shown} rows of the fit's {total} (the fit used them all)")
    if not result.success and not (result.method != "lm" and result.status in _RAN_ITS_STEPS):
        print(f"error: the fit did not converge: {result.message}", file=sys.stderr)
        return 1
    return 0


def _tensor(value: float):
    import torch

    return torch.tensor(value)


def _add_list(subparsers) -> None:
    parser = subparsers.add_parser("list", help="list the built-in and registered functions")
    parser.set_defaults(run=_run_list)


def _run_list(args) -> int:
    from .builtin_table import summaries

    builtins = summaries()
    print("built-in:")
    for name, summary in builtins.items():
        print(f"  {name:34s} {summary}")
    # Nothing can be registered before the registry is imported (and importing it costs SymPy).
    registry = sys.modules.get("customgrad.registry")
    entries = registry.REGISTRY.items() if registry is not None else ()
    registered = [entry for name, entry in entries if name not in builtins]
    print(
        "registered:"
        if registered
        else "registered: none yet (customgrad.function(..., name=...) adds one in Python; for one command, "
        'fit and derive take --define "Lor(u) = 1/(1 + u**2)" and --defines FILE)'
    )
    for entry in registered:
        print(f"  {entry.name:34s} {entry.summary}")
    return 0


def _add_derive(subparsers) -> None:
    parser = subparsers.add_parser(
        "derive",
        help="print the partial derivatives of a formula, or a standalone module",
        description="Derive the partial derivatives of FORMULA and print them, pretty and as torch code; "
        "with --emit python, print a standalone module (torch only) defining the Function.",
    )
    parser.add_argument("formula", help='the formula, e.g. "x**2 + 2*x"')
    parser.add_argument("--inputs", help="comma-separated input names in call order (default: order of appearance)")
    parser.add_argument("--name", default="Function", help="class name (default: Function)")
    parser.add_argument(
        "--grad",
        action="append",
        default=[],
        metavar="INPUT=FORMULA",
        help="declare a custom gradient for an input, e.g. --grad x=2*x (repeatable)",
    )
    parser.add_argument("--emit", choices=["python"], help="print a standalone module instead")
    _add_definitions(parser)
    parser.set_defaults(run=_run_derive)


def _run_derive(args) -> int:
    import sympy

    from .codegen.module import check_class_name, emit_module
    from .codegen.torch import print_torch
    from .derive import simplify_for_display
    from .formula_spec import formula_spec

    _define_functions(args)
    grads = {}
    for item in args.grad:
        input_name, separator, text = item.partition("=")
        if not separator or not input_name.strip() or not text.strip():
            raise UsageError(f"--grad expects INPUT=FORMULA such as x=2*x, got {item!r}")
        if input_name.strip() in grads:
            raise UsageError(f"--grad names input {input_name.strip()!r} twice: give one gradient per input")
        grads[input_name.strip()] = text.strip()
    if args.inputs is not None and not args.inputs.strip():
        raise UsageError("--inputs is empty: give the input names in call order, e.g. --inputs x,y")
    inputs = [n.strip() for n in args.inputs.split(",")] if args.inputs else None
    check_class_name(args.name, "--name")
    spec = formula_spec(args.formula, inputs=inputs, grads=grads, class_name=args.name)
    if args.emit == "python":
        print(emit_module(spec), end="")
        return 0
    names = ", ".join(spec.input_names)
    print(f"{args.name}({names}) = {spec.formula}\n")
    for symbol, partial in zip(spec.inputs, spec.partials[0], strict=True):
        partial = simplify_for_display(partial)
        kind = "declared" if symbol.name in spec.declared else "derived"
        print(f"d/d{symbol.name} ({kind}):")
        print("    " + sympy.pretty(partial, use_unicode=False).replace("\n", "\n    "))
        print(f"    torch: {print_torch(partial)}\n")
    return 0


def _add_check(subparsers) -> None:
    parser = subparsers.add_parser(
        "check",
        help="run the check battery on a custom autograd Function",
        description="Check a custom autograd Function: runs, gradients (first and second order), "
        "layouts, precision, hygiene, torch.func, torch.compile, lint, determinism. The Function runs in a "
        "worker process: one that hangs, exits or crashes is reported, not fatal. Exit code 0 when "
        "nothing failed, 1 when a check failed, 2 for usage errors.",
    )
    parser.add_argument("target", help="path/to/file.py:Name or package.module:Name")
    parser.add_argument("--shapes", help='shapes of the tensor arguments, e.g. "3x4,4" (default: 5 each)')
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="write the report as JSON to PATH; '-': to stdout, the text report to stderr (as fit --json)",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the (slow) torch.compile check")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="time limit of each forward or backward call, from when it starts (default 60, compile 300); "
        "one that runs past it is stopped and reported",
    )
    parser.set_defaults(run=_run_check)


def _run_check(args) -> int:
    from .check import check
    from .check.battery import checked_timeout
    from .check.target import example_inputs, load_target, user_output_to_stderr

    json_path = _json_destination(args)
    checked_timeout(args.timeout, "--timeout")  # before the user's module runs
    with user_output_to_stderr():  # what the user's module prints never mixes with the report or the JSON
        target = load_target(args.target)
        report = check(target, *example_inputs(target, args.shapes), compile=not args.no_compile, timeout=args.timeout)
    with _stdout_for_json(args):
        print(report)
        _write_json(args, json_path, report.to_json())
    return 0 if report.ok else 1


def _add_cache(subparsers) -> None:
    parser = subparsers.add_parser(
        "cache",
        help="show or clear the disk cache of generated code",
        description="Show (info) or remove (clear) the disk cache of generated code. Its folder: "
        "$CUSTOMGRAD_CACHE_DIR, else $XDG_CACHE_HOME/customgrad, else ~/.cache/customgrad.",
    )
    parser.add_argument("action", choices=["info", "clear"], help="info: folder and entries; clear: remove them")
    parser.set_defaults(run=_run_cache)


def _run_cache(args) -> int:
    from . import cache

    if args.action == "clear":
        removed = cache.clear()
        print(f"removed {removed} entr{'y' if removed == 1 else 'ies'} from {cache.directory()}")
    else:
        print(cache.info())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``customgrad`` argument parser with all its subcommands."""
    parser = _ArgumentParser(
        prog="customgrad",
        description="Define, check and fit custom autograd Functions. With no command: the blog's fit, as "
        "'customgrad fit' runs it.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    _add_fit(subparsers)
    _add_derive(subparsers)
    _add_check(subparsers)
    _add_list(subparsers)
    _add_cache(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``customgrad`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # argparse would name the top-level help: point to the command's own
            where = f"customgrad {args.command}" if args.command else "customgrad"
            raise UsageError(f"unrecognized arguments: {' '.join(unknown)} (see '{where} --help')")
        if args.command is None:  # no command: the blog's experiment, as 'customgrad fit' runs it
            args = parser.parse_args([*argv, "fit"])
        return args.run(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (customgrad ... | head): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (CustomgradError, OSError) as error:
        if debug:
            raise
        if not getattr(error, "quiet", False):  # (another rank of a distributed fit prints it)
            print(f"error: {_message(error)}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1


def _message(error: BaseException) -> str:
    # Formula errors keep their quoted formula and caret lines; everything else is one line.
    if isinstance(error, FormulaError):
        return str(error)
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
