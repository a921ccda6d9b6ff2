"""Reproductions of the source papers' experiments, one module per study.

``refbilevel study NAME [--quick | --full] [--out DIR] [--seeds N]`` runs a study and
writes its runs, a table (median and spread over the seeds) and a figure (median and
band); :func:`run_study` is the same from Python. Each study's page in docs/studies
states the paper's claim, the exact command, the measured figure and table, and what
differs from the paper.
"""

from __future__ import annotations

import importlib

from ._core import MODES, Method, StudyResult, write

__all__ = ["MODES", "STUDIES", "Method", "StudyResult", "get_study", "run_study", "write"]

#: name -> (module, one-line description).
STUDIES = {
    "hpo_logreg": ("refbilevel.studies.hpo_logreg",
                   "MinimaxOPT §4.1: synthetic logistic HPO, MinimaxOPT vs ITD/AID-Neumann/"
                   "AID-CG"),
    "hpo_logreg_sweep": ("refbilevel.studies.hpo_logreg_sweep",
                         "MinimaxOPT's stage factor, stage length and step swept on the "
                         "problem of hpo_logreg"),
    "multitask_auc": ("refbilevel.studies.multitask_auc",
                      "FOSL: multi-task AUC, robustness of test AUC to λ; MemCS memory vs S"),
    "cleaning_f2sa": ("refbilevel.studies.cleaning_f2sa",
                      "F2SA vs F2SA-Adam (slides): data hyper-cleaning, test accuracy vs "
                      "iterations"),
    "cleaning_mlp": ("refbilevel.studies.cleaning_mlp",
                     "MinimaxOPT §4.3: data hyper-cleaning with a two-layer network, test "
                     "accuracy vs time and gradient calls"),
    "regsel_f2sa": ("refbilevel.studies.regsel_f2sa",
                    "F2SA vs F2SA-Adam (slides): regularisation selection on a LIBSVM "
                    "stand-in for ijcnn1"),
    "layer_decay": ("refbilevel.studies.layer_decay",
                    "MinimaxOPT §4.2: per-layer weight decay of an MLP on digits, MinimaxOPT "
                    "vs one-step/ITD/AID with 1 and many inner steps"),
    "meta_rank": ("refbilevel.studies.meta_rank",
                  "FOSL vs MemCS (sampled blocks S): rank-based robust meta-learning, "
                  "meta-test loss"),
}


def get_study(name: str):
    """The module of study ``name`` (``ValueError`` listing the studies)."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; valid studies: {', '.join(STUDIES)}")
    return importlib.import_module(STUDIES[name][0])


def run_study(name: str, mode: str = "quick", *, seeds=None, out=None) -> StudyResult:
    """Run study ``name`` in ``mode`` (``"quick"`` or ``"full"``) over ``seeds``.

    ``seeds`` is an int (that many seeds, 0..n-1), a sequence of ints, or None (the
    study's default count). With ``out`` the runs, table and figure are written there.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    module = get_study(name)
    if isinstance(seeds, bool):
        raise TypeError("seeds must be an int, a sequence of ints or None")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1; got {seeds}")
        seeds = list(range(seeds))
    result = module.study(mode, seeds)
    if out is not None:
        write(result, out)
    return result
