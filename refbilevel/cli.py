"""The ``refbilevel`` command-line tool."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import __version__, checks
from ._backend import backend_namespace, to_host
from .problems.quadratic import Quadratic


def _cmd_check(args) -> int:
    xp = backend_namespace(args.backend)
    problem = Quadratic.random(args.dim_x, args.dim_y, seed=args.seed, cond=args.cond, xp=xp)
    x = problem.init_x() + 0.5
    hg = to_host(problem.hypergradient(x))
    print(f"Quadratic.random(dim_x={args.dim_x}, dim_y={args.dim_y}, seed={args.seed}, "
          f"cond={args.cond}) on {args.backend}")
    with np.printoptions(precision=12, suppress=False):
        print(f"exact hypergradient at x = 0.5·1: {hg}")
    print(checks.format_table(checks.check_problem(problem, seed=args.seed)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refbilevel", description=__doc__)
    parser.add_argument("--version", action="version", version=f"refbilevel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="exact hypergradient and derivative-check table of a random quadratic")
    p.add_argument("--dim-x", type=int, default=3)
    p.add_argument("--dim-y", type=int, default=5)
    p.add_argument("--cond", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="numpy")
    p.set_defaults(func=_cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (TypeError, ValueError) as exc:
        print(f"refbilevel: error: {exc}", file=sys.stderr)
        return 2
