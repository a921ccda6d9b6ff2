"""The ``refbilevel`` command-line tool (also ``python -m refbilevel``).

Subcommands: ``list``, ``run``, ``export``, ``compare``, ``plot``, ``bench``, ``check``,
``study``.
A mistake on the command line (unknown name, bad value, missing file) prints one line on
stderr and exits with status 2; ``compare`` exits with 1 when the trajectories differ. A
fault of the system (disk full, read-only folder, a file where a folder is expected, a
folder another run is writing into, data too large for the memory) prints one line naming
the path or the size and exits with status 1; so does a command whose output pipe was
closed before it finished (its results are written all the same).

``run`` never empties a folder: into a folder that already holds results it refuses unless
``--overwrite``, and then writes beside them (``DIR/.partial``) and replaces them only once
the new run has completed; files it did not write are never touched.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import textwrap

import numpy as np

from . import __version__

EXIT_USAGE = 2

_DESCRIPTION = """\
Reference first-order bilevel and minimax-bilevel optimisation: MinimaxOPT, F2SA,
F2SA with Adam, FOSL, MemCS and classic baselines on problems with hand-derived,
finite-difference-certified oracles."""

_EPILOG = """\
Start with 'refbilevel list' (problems, solvers and their settings, backends, datasets)
and 'refbilevel run' (the default job); 'refbilevel COMMAND --help' explains every option
of a command, with its default. A mistake on the command line prints one line on stderr
and exits with status 2; 'compare' exits with status 1 when the trajectories differ."""

#: Runs estimated to take longer than this many seconds say so before they start.
LONG_RUN_SECONDS = 60.0


class UsageError(ValueError):
    """A user mistake on the command line (reported in one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        if kwargs.get("description"):  # paragraphs wrapped here; the formatter keeps them
            kwargs["description"] = "\n\n".join(
                textwrap.fill(" ".join(par.split()), 88)
                for par in kwargs["description"].split("\n\n"))
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, exit 2 (argparse prints usage + message otherwise)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help lines end with the option's default; a help text that states it keeps its own.

    Options whose default is ``None`` or an empty list say in their help what happens
    when they are not given; flags are off unless given.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or "required" in text or text is argparse.SUPPRESS:
            return text
        if action.required:
            return f"{text} (required)"
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: off)"
        if (action.default is None or action.default == [] or not action.option_strings
                or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _alias(p, name, dest, **kwargs):
    """A former name of an option, accepted but not shown in ``--help``."""
    p.add_argument(name, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


# ------------------------------------------------------------------------------ check
def _literal(text: str):
    """A ``--set`` value for a user's callable: a Python literal when it parses, else the text."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _user_problem(target: str, settings, xp):
    """Call ``MODULE:CALLABLE`` (a dotted attribute path after the colon) with ``--set`` values."""
    import importlib
    import inspect

    module, _, attr = target.partition(":")
    if not module or not attr:
        raise UsageError(f"--problem {target!r}: expected a registered name or MODULE:CALLABLE")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"--problem {target!r}: {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"--problem {target!r} is not callable")
    kwargs = {}
    for item in settings:
        key, sep, text = item.partition("=")
        if not sep:
            raise UsageError(f"--set expects key=value; got {item!r}")
        kwargs[key.strip().removeprefix("problem.")] = _literal(text)
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        params = {}
    if "xp" in params and "xp" not in kwargs:
        kwargs["xp"] = xp
    problem = obj(**kwargs)
    needed = ("f", "g", "grad_f", "grad_g", "init_x")
    missing = [m for m in needed if not hasattr(problem, m)]
    if missing:
        raise UsageError(f"--problem {target!r} returned a {type(problem).__name__}, not a problem "
                         f"(missing {', '.join(missing)})")
    return problem


def _check_problem_from_args(args):
    """``(problem, description, x0)`` for ``refbilevel check``."""
    from ._backend import backend_namespace
    from .registry import build_problem, parse_settings, problem_defaults

    xp = backend_namespace(args.backend)
    if args.problem is None:
        from .problems.quadratic import Quadratic

        problem = Quadratic.random(args.dim_x, args.dim_y, seed=args.seed, cond=args.cond, xp=xp)
        return (problem, f"Quadratic.random(dim_x={args.dim_x}, dim_y={args.dim_y}, "
                f"seed={args.seed}, cond={args.cond})", problem.init_x() + 0.5, "0.5·1")
    if ":" in args.problem:
        problem = _user_problem(args.problem, args.set, xp)
        return problem, args.problem, problem.init_x(), "init_x()"
    # keys the builder declares are coerced to their default's type; others (constructor
    # keywords such as activation) are passed on as literals and checked by the constructor
    declared = problem_defaults(args.problem)
    items = [s if s.startswith("problem.") else f"problem.{s}" for s in args.set]
    known = [s for s in items if s.partition("=")[0].strip()[len("problem."):] in declared]
    _, params = parse_settings(known, None, args.problem)
    for item in items:
        if item not in known:
            key, sep, text = item.partition("=")
            if not sep:
                raise UsageError(f"--set expects key=value; got {item!r}")
            params[key.strip()[len("problem."):]] = _literal(text)
    problem = build_problem(args.problem, seed=args.seed, backend=args.backend, params=params)
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return problem, f"{args.problem}({shown})", problem.init_x(), "init_x()"


def _cmd_check(args) -> int:
    import warnings

    from . import checks
    from ._backend import to_host
    from .problems.base import CertificateWarning

    problem, label, x, where = _check_problem_from_args(args)
    print(f"{label} on {args.backend}")
    minimax = hasattr(problem, "saddle_gradient") and hasattr(problem, "n_blocks")
    certificate = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CertificateWarning)
        try:
            if minimax:
                grad, name = problem.saddle_gradient(x), "saddle gradient"
                certificate = checks.certify_exact(problem, x)
            else:
                name = "hypergradient"
                try:
                    grad, certificate = problem.hypergradient(x, return_certificate=True,
                                                              on_failure="ignore")
                except TypeError:  # a user's hypergradient without the certificate keywords
                    grad = problem.hypergradient(x)
                    certificate = checks.certify_exact(problem, x)
        except NotImplementedError:
            grad = None
    if grad is not None:
        host = to_host(grad).ravel()
        with np.printoptions(precision=12, suppress=False):
            shown = str(host) if host.size <= 8 else f"{host[:6]} ... ({host.size} entries)"
        print(f"exact {name} at x = {where}: {shown}, norm {np.linalg.norm(host):.12e}")
        print(f"certificate of the inner solution there: {certificate.summary()}")
    table = checks.check_problem(problem, seed=args.seed, n_points=args.points)
    print(checks.format_table(table))
    failed = [c for c in [certificate, *table.certificates.values()] if c is not None and not c.ok]
    if failed:
        print("the exact oracles are not certified at the points above (status 1): their "
              "inner point is not a stationary minimiser", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------ study
def _cmd_study(args) -> int:
    from .studies import STUDIES, run_study
    from .studies._core import table_markdown

    if args.name == "list":
        for name, (_, desc) in STUDIES.items():
            print(f"  {name:<16} {desc}")
        return 0
    if args.name not in STUDIES:
        raise UsageError(f"unknown study {args.name!r}; valid studies: {', '.join(STUDIES)}")
    mode = "full" if args.full else "quick"
    out = args.out or os.path.join("studies", f"{args.name}-{mode}")
    result = run_study(args.name, mode, seeds=args.seeds, out=out)
    print(f"{result.title}  ({mode}, seeds {result.seeds}, {result.runtime:.1f} s)")
    print(table_markdown(result.table), end="")
    for line in result.notes:
        print(f"note: {line}")
    for claim, ok in result.checks.items():
        print(f"{'reproduced' if ok else 'NOT reproduced'}: {claim}")
    print(f"written: {out}/ (runs/, table.md, table.csv, figure.pdf, figure.png, "
          "summary.json)")
    return 0


# ------------------------------------------------------------------------------- list
def _fmt_defaults(d: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in d.items())


def _cmd_list(args) -> int:
    from .registry import DEFAULT_RUN, describe_all

    info = describe_all()
    print("problems (synthetic by default; --set problem.KEY=VALUE):")
    for name, p in info["problems"].items():
        kind = "minimax-bilevel" if p["minimax"] else "bilevel"
        print(f"  {name:<18} [{kind}] {p['description']}")
        if p["datasets"]:
            print(f"  {'':<18} real data: --data {' | '.join(p['datasets'])}")
        print(f"  {'':<18} {_fmt_defaults(p['defaults'])}")
        for solver, hyper in p["suggested"].items():
            print(f"  {'':<18} suggested for {solver}: {_fmt_defaults(hyper)}")
    print("solvers (--set KEY=VALUE; a problem's suggested settings apply under --set):")
    for name, s in info["solvers"].items():
        kind = "minimax-bilevel" if s["minimax"] else "bilevel"
        print(f"  {name:<22} {s['class']} [{kind}]")
        print(f"  {'':<22} {_fmt_defaults(s['defaults'])}")
    print("backends available here: " + ", ".join(info["backends"]))
    from .datasets import dataset_availability

    status = dataset_availability()
    print("datasets (--data NAME, or --data NAME:PATH for data in a file or folder):")
    for name, desc in info["datasets"].items():
        usable, how = status.get(name, (True, ""))
        users = [p for p, d in info["problems"].items() if name in d["datasets"]]
        mark = "installed" if usable else "missing"
        print(f"  {name:<16} [{mark}] {desc}")
        print(f"  {'':<16} {how}" + (f"; used by {', '.join(users)}" if users else ""))
    print(f"default run: {DEFAULT_RUN['solver']} on {DEFAULT_RUN['problem']} "
          f"({_fmt_defaults(DEFAULT_RUN['hyperparameters'])}, iters={DEFAULT_RUN['iters']})")
    return 0


# -------------------------------------------------------------------------------- run
def _run_config(args) -> dict:
    """The reproducible description of a run from the command-line options."""
    from .registry import DEFAULT_RUN, get_solver, parse_settings

    problem = args.problem or DEFAULT_RUN["problem"]
    solver = args.solver or DEFAULT_RUN["solver"]
    solver_cls = get_solver(solver)
    _check_kinds(problem, solver_cls)
    hyper = {}
    if solver == DEFAULT_RUN["solver"] and problem == DEFAULT_RUN["problem"]:
        hyper.update(DEFAULT_RUN["hyperparameters"])
    s_kw, p_kw = parse_settings(args.set, solver_cls, problem)
    hyper.update(s_kw)
    from .registry import problem_defaults

    p_kw = {**problem_defaults(problem), **p_kw}
    return {"problem": problem, "problem_params": p_kw, "dataset": args.data, "solver": solver,
            "hyperparameters": hyper, "seed": args.seed, "backend": args.backend,
            "dtype": args.dtype, "iters": args.iters,
            "record_every": args.record_every or DEFAULT_RUN["record_every"],
            "checkpoint_every": args.checkpoint_every, "metrics": args.metrics}


def _check_kinds(problem: str, solver_cls) -> None:
    from .registry import PROBLEMS, get_problem

    spec = get_problem(problem)
    if spec.minimax != bool(getattr(solver_cls, "minimax", False)):
        kind = "minimax-bilevel" if not spec.minimax else "bilevel"
        fits = [n for n, s in PROBLEMS.items() if s.minimax != spec.minimax and s.available()]
        raise UsageError(f"solver {solver_cls.name!r} needs a {kind} problem "
                         f"({', '.join(fits)}); problem {problem!r} is not one")


def _summary(result, config, out) -> str:
    h = result.history
    rows = [("problem", f"{config['problem']}" + (f" ({config['dataset']})" if config.get("dataset") else "")),
            ("solver", config["solver"]),
            ("backend / dtype", f"{config['backend']} / {config['dtype']} on {config.get('device', '?')}"),
            ("iterations", str(result.n_iter)),
            ("final outer value f(x, y)", f"{h['value'][-1]:.8g}" if "value" in h else "-"),
            ("inner residual", f"{h['inner_residual'][-1]:.4g}" if "inner_residual" in h else "-")]
    for name in ("test_accuracy", "test_auc"):
        if name in h:
            rows.append((name.replace("_", " "), f"{h[name][-1]:.4g} (start {h[name][0]:.4g})"))
    if "hypergradient_norm" in h and np.isfinite(h["hypergradient_norm"][-1]):
        rows.append(("exact hypergradient norm", f"{h['hypergradient_norm'][-1]:.4g} "
                                                 f"(start {h['hypergradient_norm'][0]:.4g})"))
    calls = result.calls.as_dict()
    rows += [("oracle calls", ", ".join(f"{k}={v}" for k, v in calls.items() if v) or "0"),
             ("wall time (solver)", f"{result.wall_time:.3f} s"),
             ("status", f"{result.status}: {result.message}"),
             ("results", out)]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _default_out(problem, solver, backend, seed) -> str:
    return os.path.join("runs", f"{problem}-{solver}-{backend}-seed{seed}")


def _prepare(config: dict, args):
    """``(problem, solver, n_iter, metrics)`` of a run configuration; completes ``config``."""
    from ._backend import backend_namespace
    from .results import environment

    backend_namespace(config["backend"])  # unknown or unavailable: raises the precise reason
    if args.iters is not None:
        config["iters"] = args.iters
    from .config import build_from_config, run_metrics

    problem, solver, n_iter, split = build_from_config(config, return_split=True)
    config["iters"] = n_iter
    config["hyperparameters"] = solver.hyperparameters()
    config.update(environment(problem.xp))
    config["problem_description"] = problem.describe()
    try:
        metrics = run_metrics(config, problem, split)
    except ValueError as exc:
        raise UsageError(f"--metrics: {exc}") from None
    return problem, solver, n_iter, metrics


def _cmd_run(args) -> int:
    from .registry import DEFAULT_RUN
    from .results import CHECKPOINT, FINAL, RunFolder, load_config, save_run, write_config
    from .run import run

    if args.resume:
        _refuse_with_resume(args)
        out = args.out or _default_out(args.problem or DEFAULT_RUN["problem"],
                                       args.solver or DEFAULT_RUN["solver"], args.backend,
                                       args.seed)
        folder = RunFolder(out, resume=True)
    else:
        config = _run_config(args)
        config["command"] = "refbilevel " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        problem, solver, n_iter, metrics = _prepare(config, args)  # before any file is touched
        out = args.out or _default_out(config["problem"], config["solver"], config["backend"],
                                       config["seed"])
        folder = RunFolder(out, overwrite=args.overwrite)
    with folder:
        changed = not args.resume
        if args.resume:
            config = load_config(folder.workdir)
            if config.get("status") != "running":
                print(f"{out}: the run is already complete (status {config.get('status')!r}, "
                      f"{config.get('n_iter_done', '?')} iterations); nothing to resume "
                      "(--overwrite starts it again)")
                return 0
            changed = args.iters is not None and args.iters != config.get("iters")
            problem, solver, n_iter, metrics = _prepare(config, args)
        checkpoint = folder.path(CHECKPOINT)
        if changed:
            config["status"] = "running"
            write_config(folder.workdir, config)
        if args.resume:
            print(f"resuming the run in {folder.workdir} from {checkpoint}"
                  if os.path.isfile(checkpoint) else
                  f"resuming the run in {folder.workdir}: no checkpoint, restarting at iteration 0",
                  file=sys.stderr)
        _announce_long_run(problem, solver, n_iter, config["seed"])
        try:
            result = run(problem, solver, n_iter=n_iter, seed=config["seed"],
                         record_every=config["record_every"], metrics=metrics,
                         progress=not args.no_progress, checkpoint=checkpoint,
                         checkpoint_every=config.get("checkpoint_every"))
        except OSError as exc:  # a checkpoint write: name the file the user can find
            if exc.filename is None or os.path.basename(str(exc.filename)).startswith("."):
                raise type(exc)(exc.errno, exc.strerror, checkpoint) from None
            raise
        save_run(folder.workdir, config, result)
        if os.path.exists(checkpoint) and not args.keep_checkpoint:
            os.remove(checkpoint)
        where = out
        if result.status == "diverged" and folder.workdir != out \
                and os.path.isfile(os.path.join(out, FINAL)):
            where = folder.workdir  # a diverged run never replaces earlier results
            print(f"the new run diverged: the earlier results in {out} are kept; the new ones "
                  f"are in {where}", file=sys.stderr)
        else:
            folder.commit()
    print(_summary(result, config, where))
    return 0 if result.status != "diverged" else 1


def _refuse_with_resume(args) -> None:
    """``--resume`` continues the run of ``config.json``: options that would change it refuse."""
    named = args.out is None  # without --out, --problem and --solver name the default folder
    given = [opt for opt, value in (("--problem", None if named else args.problem),
                                    ("--solver", None if named else args.solver),
                                    ("--set", args.set or None), ("--data", args.data),
                                    ("--metrics", args.metrics),
                                    ("--record-every", args.record_every),
                                    ("--checkpoint-every", args.checkpoint_every))
             if value is not None]
    if given:
        where = args.out or "the default results folder"
        raise UsageError(f"--resume continues the run configured in {where}/config.json; "
                         f"{', '.join(given)} would change it (start a new run with another "
                         "--out instead)")


def _announce_long_run(problem, solver, n_iter, seed, threshold=LONG_RUN_SECONDS) -> float:
    """Time a few discarded steps and say on stderr when the whole run will take long.

    Returns the estimate in seconds. Solver steps are pure, so the probe does not touch the
    run; it costs one warm-up step and then at least one and at most five timed steps
    (stopping after half a second).
    """
    import time

    from ._backend import host_rng, synchronize

    xp = problem.xp
    state = solver.init(problem, problem.init_x(), problem.init_y(), host_rng(seed))
    state = solver.step(problem, state)                      # warm-up (compilation, caches)
    synchronize(xp)
    start, steps = time.perf_counter(), 0
    while steps < 5 and (steps == 0 or time.perf_counter() - start < 0.5):
        state = solver.step(problem, state)
        synchronize(xp)
        steps += 1
    per_step = (time.perf_counter() - start) / steps
    estimate = per_step * n_iter
    if estimate > threshold:
        minutes = estimate / 60.0
        shown = f"{minutes:.0f} min" if minutes >= 2 else f"{estimate:.0f} s"
        each = f"{per_step:.3g} s" if per_step >= 1 else f"{per_step * 1e3:.3g} ms"
        print(f"note: this run will take about {shown} ({n_iter} iterations at {each} each, "
              "timed on the first steps); --iters N runs fewer", file=sys.stderr)
    return estimate


# ----------------------------------------------------------------------------- export
def _cmd_export(args) -> int:
    from .registry import get_solver, parse_settings
    from .verify import export

    s_kw, p_kw = parse_settings(args.set, get_solver(args.solver), args.problem)
    both = [k for k in ("batch_size_outer", "batch_size_inner") if k in s_kw]
    if args.batch_size is not None and both:
        raise UsageError(f"--batch-size {args.batch_size} and --set {both[0]}=... both set the "
                         "minibatch size; give one of them")
    path = export(args.problem, seed=args.seed, steps=args.iters, batch_size=args.batch_size,
                  path=args.out, solver=args.solver, hyperparameters=s_kw, problem_params=p_kw,
                  dtype=args.dtype, dataset=args.data, backend=args.backend)
    described = path[:-4] + ".json"
    with open(described, encoding="utf-8") as fh:
        hyper = json.load(fh)["solver"]["hyperparameters"]
    sizes = {lv: hyper.get(f"batch_size_{lv}") for lv in ("outer", "inner")}
    batches = ", ".join(f"{lv} {'full' if v is None else v}" for lv, v in sizes.items())
    print(f"wrote {path} (problem {args.problem}, solver {args.solver}, {args.iters} steps, "
          f"batch sizes: {batches}); description: array 'description' and {described}")
    return 0


# ---------------------------------------------------------------------------- compare
def _cmd_compare(args) -> int:
    from .verify import compare, load_candidate, reference_for

    if (args.reference is None) == (args.solver is None):
        raise UsageError("compare needs exactly one of --reference DIR|FILE.npz and --solver NAME")
    candidate = load_candidate(args.candidate)
    reference = reference_for(candidate, reference=args.reference, solver=args.solver,
                              problem=args.problem, seed=args.seed, settings=args.set)
    report = compare(reference, candidate, rtol=args.rtol, atol=args.atol, prefix=args.prefix)
    print(report.format(max_rows=args.max_rows))
    return 0 if report.passed else 1


# ------------------------------------------------------------------------------- plot
def _cmd_plot(args) -> int:
    from .plotting import plot_runs

    path = plot_runs(args.dirs, x=args.x, y=args.y, out=args.out)
    print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------ bench
def _cmd_bench(args) -> int:
    from .bench import bench, format_table

    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    from .registry import get_solver, parse_settings

    s_kw, p_kw = parse_settings(args.set, get_solver(args.solver), args.problem)
    rows = bench(args.problem, args.solver, backends=backends, sizes=sizes, dtype=args.dtype,
                 n_steps=args.iters, repeats=args.repeats, hyperparameters=s_kw,
                 problem_params=p_kw, seed=args.seed, blas_threads=args.blas_threads)
    print(format_table(rows))
    return 0


# ----------------------------------------------------------------------------- parser
def _int_arg(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}") from None


def _pos_int(text):
    v = _int_arg(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return v


def _nonneg_int(text):
    v = _int_arg(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; got {text!r}")
    return v


_DATA_HELP = ("a real dataset instead of the problem's synthetic data: NAME, or NAME:PATH for "
              "data read from a file or folder (libsvm:/path/to/file, "
              "fashion_mnist:/path/to/idx/folder); 'refbilevel list' shows which datasets "
              "each problem accepts and which are installed here (default: synthetic data)")
_SET_HELP = ("KEY=VALUE: a solver hyperparameter (lr=0.05), or problem.KEY=VALUE for a problem "
             "parameter (problem.dim_y=30); repeatable; 'refbilevel list' shows the keys and "
             "their defaults (default: none)")


def _add_common(p, *, problem_default=None, solver_default=None):
    if problem_default is None:
        problem_help = "problem name, see 'refbilevel list' (default: that of the default run)"
        solver_help = "solver name, see 'refbilevel list' (default: that of the default run)"
    else:
        problem_help = "problem name, see 'refbilevel list'"
        solver_help = "solver name, see 'refbilevel list'"
    p.add_argument("--problem", default=problem_default, help=problem_help)
    p.add_argument("--solver", default=solver_default, help=solver_help)
    p.add_argument("--seed", type=_nonneg_int, default=0,
                   help="seed of the synthetic data, the initial point and the minibatches")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="floating-point precision of data and iterates")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    p.add_argument("--data", default=None, metavar="NAME[:PATH]", help=_DATA_HELP)


_BACKEND_HELP = ("numpy | array_api_strict | torch | jax | dask | cupy (jax runs in 64-bit "
                 "mode; dask runs on a dask.distributed client if one is started, else "
                 "on local threads)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="refbilevel", description=_DESCRIPTION, epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"refbilevel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="COMMAND", title="commands")

    p = sub.add_parser("check", help="exact hypergradient with its certificate and the derivative-check "
                                     "table of a problem (default: a random quadratic); status 1 when "
                                     "a certificate fails",
                       description="Print the exact hypergradient (with its certificate) and the "
                                   "table of derivative checks; the error column is the relative "
                                   "error beyond the finite difference's own round-off.")
    p.add_argument("--problem", default=None, metavar="NAME|MODULE:CALLABLE",
                   help="a registered problem (refbilevel list) or a callable returning a problem; "
                        "default: Quadratic.random with --dim-x, --dim-y, --cond")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="problem parameter (the 'problem.' prefix is optional); for "
                        "MODULE:CALLABLE a keyword argument (Python literal); repeatable; default: the "
                        "problem's defaults")
    p.add_argument("--dim-x", type=_pos_int, default=3, help="dimension of x (random quadratic)")
    p.add_argument("--dim-y", type=_pos_int, default=5, help="dimension of y (random quadratic)")
    p.add_argument("--cond", type=float, default=10.0,
                   help="condition number of the lower-level Hessian (random quadratic)")
    p.add_argument("--points", type=_pos_int, default=2, help="random points of the table")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the problem and the points")
    p.add_argument("--backend", default="numpy", help="array library")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("list", help="problems, solvers and their defaults, backends, datasets",
                       description="List the problems, the solvers with their hyperparameter "
                                   "defaults, the backends usable here and the datasets "
                                   "(which are installed here, and how to get the others).")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", help="run a solver on a problem and write a results folder",
                       description="Run a solver on a problem and write config.json, "
                                   "history.csv and final.npz to a results folder. Without "
                                   "options: MinimaxOPT on the synthetic logistic-regression "
                                   "problem of the MinimaxOPT paper.")
    _add_common(p)
    p.add_argument("--backend", default="numpy", help=_BACKEND_HELP)
    p.add_argument("--iters", type=_nonneg_int, default=None,
                   help="outer iterations (solver steps) to run (default: n_stages * "
                        "steps_per_stage for MinimaxOPT, 2000 for the default run, else 1000)")
    p.add_argument("--record-every", type=_pos_int, default=None, metavar="N",
                   help="evaluate the metrics every N iterations (default: 50)")
    p.add_argument("--checkpoint-every", type=_pos_int, default=None, metavar="N",
                   help="write a resumable checkpoint every N iterations (default: at every "
                        "record point)")
    p.add_argument("--metrics", default=None, type=lambda s: tuple(m for m in s.split(",") if m),
                   help="comma-separated metrics to record: value, inner_residual, "
                        "hypergradient_norm (default: all three); held out: test_accuracy "
                        "(classification problems), test_auc (multitask_auc), on the "
                        "problem's test split")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="results folder (default: runs/PROBLEM-SOLVER-BACKEND-seedN)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out DIR from its checkpoint (without "
                        "--out: the default folder of --problem, --solver, --backend, --seed)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results already in --out, once the new run has completed "
                        "(files the run did not write are kept)")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep checkpoint.npz after the run completes")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("export", help="write a problem instance and its batch schedule (.npz)",
                       description="Write one problem instance, the minibatch schedule a solver "
                                   "consumes and the reference iterates of every step to "
                                   "FILE.npz, and a description of formulas, array layouts "
                                   "and batch order to FILE.json beside it.")
    _add_common(p, problem_default="logreg", solver_default="f2sa")
    p.add_argument("--backend", default="numpy",
                   help="array library that computes the reference iterates (the file holds "
                        "host arrays)")
    p.add_argument("--iters", type=_pos_int, default=10,
                   help="solver steps whose batches and reference iterates are written")
    _alias(p, "--steps", "iters", type=_pos_int)
    p.add_argument("--batch-size", type=_pos_int, default=None,
                   help="minibatch size of both levels; sets the solver's batch_size_outer and "
                        "batch_size_inner, so --set cannot also set them (default: the "
                        "solver's own, full batches for most)")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="output file")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("compare", help="compare a foreign trajectory with the reference",
                       description="Compare iterates (x, y, ... one row per step) or oracle "
                                   "values at points with the reference; print the relative "
                                   "deviation per row, the first row beyond tolerance and the "
                                   "variable that departed first; exit 1 on a mismatch.")
    p.add_argument("--candidate", required=True, metavar="FILE.npz",
                   help="the arrays of the implementation under test")
    p.add_argument("--reference", default=None, metavar="DIR|FILE.npz",
                   help="a results folder of 'refbilevel run' or a file of 'refbilevel export' "
                        "(give this or --solver; default: none)")
    p.add_argument("--solver", default=None,
                   help="compute the reference with this solver instead of reading --reference "
                        "(default: none)")
    p.add_argument("--problem", default=None,
                   help="with --solver: the problem the reference is computed on (default: "
                        "logreg)")
    p.add_argument("--seed", type=_nonneg_int, default=None,
                   help="with --solver: seed of data and batches (default: 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="with --solver: " + _SET_HELP)
    p.add_argument("--rtol", type=float, default=1e-6,
                   help="relative tolerance: a row passes when ||cand - ref|| <= atol + "
                        "rtol ||ref||")
    p.add_argument("--atol", type=float, default=1e-12, help="absolute tolerance (see --rtol)")
    p.add_argument("--max-rows", type=_pos_int, default=12,
                   help="rows of the deviation table shown (first and last halves, plus the "
                        "first row beyond tolerance)")
    p.add_argument("--prefix", action="store_true",
                   help="accept a candidate holding only the first k rows of the reference, "
                        "reported as a prefix (default: exactly the reference's rows)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("plot", help="convergence curves of results folders (PNG)",
                       description="Plot a history column of one or more results folders "
                                   "against iterations, wall time or oracle calls (log scale; "
                                   "one curve per folder, labelled by solver and backend).")
    p.add_argument("dirs", nargs="+", metavar="DIR",
                   help="results folders written by 'refbilevel run'")
    p.add_argument("--x", choices=("iteration", "time", "oracle_calls"), default="iteration",
                   help="horizontal axis")
    p.add_argument("--y", default=None,
                   help="history column on the vertical axis: hypergradient_norm, value, "
                        "inner_residual, ... (default: hypergradient_norm where recorded, "
                        "else value)")
    p.add_argument("--out", required=True, metavar="FILE.png", help="output image")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("bench", help="time per step of a solver across backends",
                       description="Time the steps of a solver on one or more backends "
                                   "(synchronised, warm-up excluded, median of the repeats) "
                                   "and print the speedup over the first backend and the "
                                   "achieved memory bandwidth.")
    p.add_argument("--problem", default="logreg", help="problem name, see 'refbilevel list'")
    p.add_argument("--solver", default="minimaxopt", help="solver name, see 'refbilevel list'")
    p.add_argument("--backend", default="numpy",
                   help="one or more array libraries, comma-separated (e.g. numpy,torch,jax); "
                        "the first is the baseline of the speedup column")
    _alias(p, "--backends", "backend")
    p.add_argument("--sizes", default=None,
                   help="comma-separated values of the problem's size parameter (default: the "
                        "problem's default size)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="floating-point precision")
    p.add_argument("--iters", type=_pos_int, default=20, help="solver steps per timed repeat")
    _alias(p, "--steps", "iters", type=_pos_int)
    p.add_argument("--repeats", type=_pos_int, default=5,
                   help="timed repeats; the median is reported")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of data and batches")
    p.add_argument("--blas-threads", type=_pos_int, default=None, metavar="N",
                   help="threads of NumPy's BLAS during the run (default: as the environment "
                        "sets them; the table states the count)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("study", help="reproduce a paper's experiment: runs, table, figure "
                                     "(refbilevel study list)")
    p.add_argument("name", help="study name, or 'list'")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="small sizes and budgets, well under a minute (default)")
    mode.add_argument("--full", action="store_true",
                      help="the paper's sizes and budgets (minutes on 2 cores)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default studies/NAME-MODE)")
    p.add_argument("--seeds", type=_pos_int, default=None,
                   help="repeats over seeds 0..N-1 (default: the study's)")
    p.set_defaults(func=_cmd_study)
    return parser


class _PipeGuard:
    """A text stream whose reader may go away (``refbilevel run | head -2``).

    The first ``BrokenPipeError`` marks the stream closed and redirects its descriptor to
    the null device, so the command still completes (and writes its results); ``main`` then
    exits with status 1 instead of losing work or reporting success.
    """

    def __init__(self, stream):
        self._stream, self.broken = stream, False

    def _closed(self):
        self.broken = True
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):
            pass

    def write(self, text):
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._closed()
        return len(text)

    def flush(self):
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._closed()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _oserror_line(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else None
    cause = exc.strerror or str(exc) or type(exc).__name__
    return f"{where}: {cause}" if where is not None else cause


#: Where a TypeError/ValueError means "the input was refused": argument validation, the
#: registry's lookups and coercions, configuration building, constructors' checks.
_VALIDATION_FILES = ("_validation.py", "registry.py", "config.py", "cli.py", "results.py",
                     "datasets.py")
_VALIDATION_FUNCTIONS = ("__post_init__", "__init__", "_validate", "random", "synthetic",
                         "run", "read", "_read", "_decode", "export", "trajectory", "compare",
                         "reference_for", "backend_namespace", "resolve_dtype", "host_rng",
                         "resolve_seed", "stream_spec", "load_candidate", "load_export",
                         "_oracles_at")


def _is_usage_error(exc) -> bool:
    """Whether ``exc`` reports a refused input (exit 2, one line) rather than a bug.

    :class:`UsageError`, results-file errors, missing files and imports always are. A
    ``TypeError``/``ValueError`` is when the frame that raised it is a refbilevel
    validation site (a ``check_*`` helper, the registry, configuration building, a
    constructor's checks, the driver's own checks); raised anywhere else (inside a solver
    step, an oracle, a metric, a library) it is a bug and keeps its traceback.
    """
    if isinstance(exc, (UsageError, FileNotFoundError, NotADirectoryError, ImportError)):
        return True
    from .results import ResultsError

    if isinstance(exc, ResultsError):
        return True
    tb = exc.__traceback__
    while tb.tb_next is not None:     # the frame that raised
        tb = tb.tb_next
    site = tb.tb_frame.f_code
    if f"{os.sep}refbilevel{os.sep}" not in site.co_filename:
        return False                  # raised in a library or in user code: not a refusal
    return (os.path.basename(site.co_filename) in _VALIDATION_FILES
            or site.co_name in _VALIDATION_FUNCTIONS or site.co_name.startswith("check"))


def _dispatch(argv) -> tuple[str, int]:
    """Parse ``argv`` and run the subcommand; faults become one line and an exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.command, args.func(args)
    except (TypeError, ValueError, ImportError) as exc:
        if not _is_usage_error(exc):
            raise                     # a fault of the program: keep its traceback
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"refbilevel {args.command}: error: {msg}", file=sys.stderr)
        return args.command, EXIT_USAGE
    except OSError as exc:  # disk full, read-only, a file where a folder is expected ...
        print(f"refbilevel {args.command}: error: {' '.join(_oserror_line(exc).split())}",
              file=sys.stderr)
        return args.command, 1
    except MemoryError as exc:
        msg = " ".join(str(exc).split()) or "out of memory"
        print(f"refbilevel {args.command}: error: not enough memory ({msg})", file=sys.stderr)
        return args.command, 1
    except KeyboardInterrupt:
        print("refbilevel: interrupted", file=sys.stderr)
        return args.command, 130


def main(argv: list[str] | None = None) -> int:
    out, err = sys.stdout, sys.stderr
    guards = _PipeGuard(out), _PipeGuard(err)
    sys.stdout, sys.stderr = guards
    try:
        command, status = _dispatch(argv)
    finally:
        sys.stdout.flush()
        sys.stdout, sys.stderr = out, err
    if guards[0].broken or guards[1].broken:
        if not guards[1].broken:
            print(f"refbilevel {command}: error: the output pipe was closed before all "
                  "output was written (the command itself ran to its end)", file=sys.stderr)
        return 1 if status == 0 else status
    return status
