"""The command line explains itself: help texts, option names, refused combinations.

Oracles: the argparse definitions themselves (every option is inspected, so a new option
without help fails), the file system (which datasets are installed), and the Python API
(``str(report)`` against what ``refbilevel compare`` prints). NumPy only: the subject is
the command line, not the numerics.
"""

from __future__ import annotations

import argparse
import os
import re

import numpy as np
import pytest

from refbilevel import cli, datasets

SOLVER_STEPS = "--iters"     # the one name for "how many solver steps"
BACKEND = "--backend"        # the one name for "which array library (or libraries)"


def _subparsers():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def _visible_options(sub):
    return [a for a in sub._actions
            if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]


_PARSER, _SUBS = _subparsers()


def test_top_level_help_is_plain_text():
    text = _PARSER.format_help()
    assert not re.search(r"``|:(class|func|mod|meth):`|\.\. ", text), text
    for name in _SUBS:
        assert name in text
    assert "--help" in text and "default" in text


@pytest.mark.parametrize("command", sorted(_SUBS))
def test_every_option_has_help_with_its_default(command):
    sub = _SUBS[command]
    formatter = sub._get_formatter()
    missing, no_default = [], []
    for action in _visible_options(sub):
        name = "/".join(action.option_strings) or action.dest
        if not action.help:
            missing.append(name)
            continue
        shown = formatter._expand_help(action)
        if action.option_strings and not re.search(r"default|required", shown):
            no_default.append(f"{name}: {shown!r}")
    assert not missing, f"{command}: options without help: {missing}"
    assert not no_default, f"{command}: help without the default: {no_default}"


def test_help_states_the_actual_default():
    """The default shown is the parser's default (not a hand-written copy that may drift)."""
    export = _SUBS["export"]
    action = next(a for a in export._actions if "--iters" in a.option_strings)
    assert f"(default: {action.default})" in export._get_formatter()._expand_help(action)


@pytest.mark.parametrize("command", sorted(_SUBS))
def test_one_name_per_concept(command):
    options = {o for a in _visible_options(_SUBS[command]) for o in a.option_strings}
    assert not options & {"--steps", "--backends", "--n-iter", "--iterations"}, options
    if command in ("run", "export", "bench"):
        assert SOLVER_STEPS in options and BACKEND in options


@pytest.mark.parametrize("argv, dest, value", [
    (["export", "--out", "a.npz", "--steps", "3"], "iters", 3),
    (["bench", "--steps", "4"], "iters", 4),
    (["bench", "--backends", "numpy,numpy"], "backend", "numpy,numpy"),
])
def test_former_option_names_still_parse(argv, dest, value):
    assert getattr(_PARSER.parse_args(argv), dest) == value


def test_conflicting_batch_sizes_refuse(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli.main(["export", "--set", "batch_size_outer=16", "--batch-size", "32",
                     "--out", "a.npz"])
    err = capsys.readouterr().err
    assert code == 2 and "--batch-size 32" in err and "batch_size_outer" in err
    assert not (tmp_path / "a.npz").exists()


def test_export_reports_the_batch_sizes_it_used(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli.main(["export", "--set", "problem.n=40", "--set", "batch_size_outer=16",
                     "--set", "batch_size_inner=8", "--iters", "2", "--out", "a.npz"])
    out = capsys.readouterr().out
    assert code == 0 and "batch sizes: outer 16, inner 8" in out, out
    d = np.load(tmp_path / "a.npz")
    assert d["batch_outer"].shape[-1] == 16 and d["batch_inner"].shape[-1] == 8


def test_export_backend_gives_the_same_reference(tmp_path, monkeypatch):
    """The reference iterates computed on array_api_strict equal NumPy's."""
    pytest.importorskip("array_api_strict")
    monkeypatch.chdir(tmp_path)
    common = ["export", "--set", "problem.n=40", "--batch-size", "8", "--iters", "3"]
    assert cli.main([*common, "--out", "np.npz"]) == 0
    assert cli.main([*common, "--backend", "array_api_strict", "--out", "st.npz"]) == 0
    a, b = np.load(tmp_path / "np.npz"), np.load(tmp_path / "st.npz")
    refs = [k for k in a.files if k.startswith("ref_")]
    assert refs
    for k in refs:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_resume_refuses_options_that_would_change_the_run(tmp_path, capsys):
    code = cli.main(["run", "--resume", "--out", str(tmp_path), "--problem", "quadratic"])
    err = capsys.readouterr().err
    assert code == 2 and "--problem" in err and "config.json" in err


def test_list_shows_which_datasets_are_installed(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "NAME:PATH" in out and "libsvm:PATH" in out
    fashion = next(line for line in out.splitlines() if line.strip().startswith("fashion_mnist"))
    installed = any(os.path.isdir(d) for d in datasets.FASHION_MNIST_DIRS)
    assert ("[installed]" if installed else "[missing]") in fashion
    if not installed:
        assert "apt-get install dataset-fashion-mnist" in out
        assert "--data fashion_mnist:DIR" in out


def test_fashion_mnist_message_names_the_command_line_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data fashion_mnist:DIR"):
        datasets.load_fashion_mnist(tmp_path)          # an empty folder: no IDX files
    if not any(os.path.isdir(d) for d in datasets.FASHION_MNIST_DIRS):
        with pytest.raises(FileNotFoundError, match="--data fashion_mnist:DIR"):
            datasets.load_fashion_mnist()


def test_long_run_is_announced(capsys):
    from refbilevel.registry import DEFAULT_RUN, build_problem, build_solver

    problem = build_problem(DEFAULT_RUN["problem"], params={"n": 40})
    solver = build_solver(DEFAULT_RUN["solver"], DEFAULT_RUN["hyperparameters"])
    estimate = cli._announce_long_run(problem, solver, 10**6, 0, threshold=0.0)
    err = capsys.readouterr().err
    assert estimate > 0 and "this run will take about" in err and "1000000 iterations" in err
    cli._announce_long_run(problem, solver, 1, 0, threshold=1e9)
    assert capsys.readouterr().err == ""


def test_print_report_prints_what_the_cli_prints(tmp_path, capsys, monkeypatch):
    from refbilevel import verify

    monkeypatch.chdir(tmp_path)
    assert cli.main(["export", "--set", "problem.n=40", "--iters", "3", "--out", "i.npz"]) == 0
    arrays, _ = verify.load_export("i.npz")
    cand = {"x": arrays["ref_x"], "y": arrays["ref_y"]}
    np.savez("c.npz", **cand)
    capsys.readouterr()
    assert cli.main(["compare", "--reference", "i.npz", "--candidate", "c.npz"]) == 0
    printed = capsys.readouterr().out
    report = verify.compare(verify.reference_for(verify.load_candidate("c.npz"),
                                                 reference="i.npz"),
                            verify.load_candidate("c.npz"))
    assert str(report) == report.format() == printed.rstrip("\n")
    assert "PASS" in str(report) and "CompareReport(" not in str(report)
