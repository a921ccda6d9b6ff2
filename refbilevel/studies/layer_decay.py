r"""Study ``layer_decay``: MinimaxOPT §4.2, per-layer weight decay of a neural network.

The paper's experiment: one weight-decay coefficient per layer of a ResNet-18 (planes = 16)
on CIFAR-10, tuned on a validation split; test accuracy against gradient calls for
MinimaxOPT and four hypergradient baselines — truncated reverse (ITD), one-step (T1-T2,
Luketina et al. 2016), AID with conjugate gradient and AID with a Neumann series — each
with 1 inner epoch and with 50 inner epochs per outer step. The paper reports that
MinimaxOPT reaches a higher test accuracy than the 1-epoch baselines with the same
gradient calls, and than the 50-epoch baselines with an order of magnitude fewer.

What is run (docs/studies/layer_decay): :class:`~refbilevel.problems.LayerDecayMLP` (a
two-layer tanh MLP, one decay :math:`e^{x_l}` per weight matrix) on scikit-learn's digits
(seeded train/validation/test split); every method full batch, so one inner epoch is one
inner gradient step (T = 1; then ITD is one-step) and "many epochs" is T = ``many``
steps. MinimaxOPT and the T = 1 baselines share a budget of gradient calls (``grad f +
grad g``), the T = ``many`` baselines get a multiple of it (``--full``: five times). Two
references train the network with the decay held fixed for the same budget of inner
gradient steps: at the starting decay :math:`x_0` (untuned) and with no decay.

Checked: MinimaxOPT's tuned decay ends with a higher test accuracy than the starting decay
held fixed, and with a lower validation loss than every T = 1 baseline after the same
gradient calls, on every seed.
"""

from __future__ import annotations

import math
import time

from ._core import (Method, StudyResult, curves, run_methods, runs_by_key, spread, spread_at,
                    study_seeds)

NAME = "layer_decay"
TITLE = "Per-layer weight decay on digits (MinimaxOPT §4.2): test accuracy vs gradient calls"

#: Sizes and budgets per mode: digits subsets (None: the whole 60/20/20 split), the MLP's
#: hidden width, the gradient-call budget of MinimaxOPT and the T = 1 baselines, the inner
#: length ``many`` and the factor ``many_budget`` of the T = ``many`` baselines' budget, the
#: seeds.
SETTINGS = {"quick": dict(n_train=200, n_val=100, n_test=300, hidden=16, budget=300, many=5,
                          many_budget=3, seeds=1),
            "full": dict(n_train=None, n_val=None, n_test=None, hidden=32, budget=600,
                         many=20, many_budget=5, seeds=3)}
#: Inner step of every baseline and of the references (GD on the training loss), outer step
#: of every hypergradient baseline, linear-system / reverse steps K (the paper's CG "five
#: times"); ours, from runs on seed 0 (the paper tuned each from a grid it does not give).
LR_INNER, LR_OUTER, K = 0.1, 1.0, 5
#: MinimaxOPT (Algorithm 1, full batch): base step, stage factor and number of stages.
MM_LR, MM_TAU, MM_STAGES = 0.3, 1.2, 5


def _problem(cfg):
    from ..datasets import load_digits, subset_split
    from ..heldout import TestAccuracy
    from ..problems import LayerDecayMLP

    cache = {}

    def build(seed):
        if seed not in cache:
            split = load_digits(seed=seed)
            if cfg["n_train"] is not None:
                split = subset_split(split, cfg["n_train"], cfg["n_val"], cfg["n_test"],
                                     seed=seed)
            P = LayerDecayMLP(split.A_train, split.y_train, split.A_val, split.y_val,
                              n_classes=10, hidden=cfg["hidden"], seed=seed)
            cache[seed] = (P, TestAccuracy(split.A_test, split.y_test))
        return cache[seed]

    return build


def methods(cfg):
    """The study's curves: MinimaxOPT, then the baselines with T = 1 and T = ``many``."""
    from ..registry import build_solver

    budget, T = cfg["budget"], cfg["many"]
    mm_iter = budget // 3                                   # 1 grad_f + 2 grad_g per step
    mm = build_solver("minimaxopt", {"lr": MM_LR, "tau": MM_TAU, "n_stages": MM_STAGES,
                                     "steps_per_stage": -(-mm_iter // MM_STAGES)})
    out = [Method("MinimaxOPT", "minimaxopt", lambda seed: mm, mm_iter,
                  record_every=max(1, mm_iter // 30))]
    for n_inner, spent in ((1, budget), (T, cfg["many_budget"] * budget)):
        n_iter = max(1, spent // (n_inner + 1))             # T grad_g + 1 grad_f per step
        rec = max(1, n_iter // 30)
        common = dict(lr_inner=LR_INNER, lr_outer=LR_OUTER, n_inner=n_inner)
        solvers = [("one-step", "one_step",
                    build_solver("one_step", dict(common, truncate=1)))]
        if n_inner > 1:                       # with T = 1, reverse mode is one-step
            solvers.append(("ITD", "itd", build_solver("itd", dict(common, truncate=K))))
        solvers += [("AID-Neumann", "aid_neumann",
                     build_solver("aid", dict(common, n_linear=K, method="neumann"))),
                    ("AID-CG", "aid_cg",
                     build_solver("aid", dict(common, n_linear=K, method="cg")))]
        for label, key, solver in solvers:
            out.append(Method(f"{label} (T={n_inner})", f"{key}_T{n_inner}",
                              lambda seed, s=solver: s, n_iter, record_every=rec))
    return out


def _fixed_decay(problem, metric, x, n_steps):
    """Test accuracy and validation loss of the network trained at the fixed decay ``x``."""
    from types import SimpleNamespace

    from ..solvers._common import inner_gd

    y = inner_gd(problem, x, problem.init_y(), lr=LR_INNER, n_steps=n_steps)
    state = SimpleNamespace(x=x, y=y)
    return metric(problem, state), float(problem.f(x, y))


def study(mode: str = "quick", seeds=None) -> StudyResult:
    cfg = SETTINGS[mode]
    seeds = study_seeds(cfg, seeds)
    t0 = time.perf_counter()
    build = _problem(cfg)
    ms = methods(cfg)
    runs, refs = [], {}
    for seed in seeds:
        P, acc = build(seed)
        runs += run_methods(ms, lambda s, P=P: P, [seed], metrics=("value", acc),
                            config_extra={"dataset": "digits", "n_test": acc.labels.shape[0]})
        x0 = P.init_x()
        refs[seed] = {"initial": _fixed_decay(P, acc, x0, cfg["budget"]),
                      "none": _fixed_decay(P, acc, x0 - math.inf, cfg["budget"])}
    by_key = runs_by_key(runs)

    table = []
    for m in ms:
        rs = by_key[m.key]
        table.append({
            "method": m.label,
            "final test accuracy": spread_at(rs, "test_accuracy"),
            "best test accuracy": spread(max(r.history["test_accuracy"]) for r in rs),
            "final validation loss": spread_at(rs, "value"),
            "gradient calls": spread_at(rs, "gradient_calls"),
            "HVP + cross calls": spread(r.history["calls_hvp"][-1] + r.history["calls_cross"][-1]
                                        for r in rs),
            "wall time [s]": spread_at(rs, "time")})
    references = [{"reference (decay held fixed)": label,
                   "final test accuracy": spread(refs[s][tag][0] for s in seeds),
                   "final validation loss": spread(refs[s][tag][1] for s in seeds),
                   "inner gradient steps": float(cfg["budget"])}
                  for tag, label in (("initial", "initial decay x0 (untuned)"),
                                     ("none", "no decay"))]

    def run_of(key, seed):
        return next(r for r in by_key[key] if r.seed == seed)

    def final(key, seed, col):
        return run_of(key, seed).history[col][-1]

    one = [m.key for m in ms[1:] if m.key.endswith("_T1")]
    many = [m.key for m in ms[1:] if not m.key.endswith("_T1")]
    beats_fixed = all(final("minimaxopt", s, "test_accuracy") > refs[s]["initial"][0]
                      for s in seeds)
    lower_val = all(final("minimaxopt", s, "value") < final(k, s, "value")
                    for s in seeds for k in one)
    checks = {"MinimaxOPT's tuned decay ends with a higher test accuracy than the initial "
              "decay held fixed for the same gradient calls": bool(beats_fixed),
              "MinimaxOPT ends with a lower validation loss than every T=1 baseline after "
              "the same gradient calls": bool(lower_val)}
    # the paper's accuracy claims, per seed: reported, not asserted (test-accuracy gaps
    # of a few test rows)
    acc_one = sum(final("minimaxopt", s, "test_accuracy") >= final(k, s, "test_accuracy")
                  for s in seeds for k in one)
    acc_many = sum(final("minimaxopt", s, "test_accuracy") >= final(k, s, "test_accuracy")
                   for s in seeds for k in many)
    notes = [f"MinimaxOPT's final test accuracy is at or above the T=1 baseline's in {acc_one} "
             f"of {len(one) * len(seeds)} (baseline, seed) pairs, and at or above the "
             f"T={cfg['many']} baseline's (with {cfg['many_budget']}x the gradient calls) in "
             f"{acc_many} of {len(many) * len(seeds)}",
             *[f"{r.label}, seed {r.seed}: {r.config['status']} ({r.config['message']})"
               for r in runs if r.config["status"] != "max_iter"],
             f"digits: n_train={cfg['n_train'] or 'all'}, n_val={cfg['n_val'] or 'all'}, "
             f"n_test={cfg['n_test'] or 'all'}; hidden width {cfg['hidden']}; budget "
             f"{cfg['budget']} gradient calls (T={cfg['many']}: "
             f"{cfg['many_budget'] * cfg['budget']})"]
    acc_curves = curves(runs, "gradient_calls", "test_accuracy")
    hline = spread(refs[s]["initial"][0] for s in seeds)[0]
    panels = [
        {"groups": {k: v for k, v in acc_curves.items() if k == "MinimaxOPT" or "(T=1)" in k},
         "xlabel": "gradient calls (grad f + grad g)", "ylabel": "test accuracy",
         "logy": False, "budget": cfg["budget"], "title": "1 inner epoch (T=1)",
         "hline": hline, "hline_label": "fixed initial decay"},
        {"groups": {k: v for k, v in acc_curves.items() if "(T=1)" not in k},
         "xlabel": "gradient calls (grad f + grad g)", "ylabel": "test accuracy",
         "logy": False, "logx": True, "budget": cfg["many_budget"] * cfg["budget"],
         "title": f"many inner epochs (T={cfg['many']})", "hline": hline,
         "hline_label": "fixed initial decay"},
    ]
    return StudyResult(NAME, TITLE, mode, seeds, runs, table, panels, checks, notes,
                       runtime=time.perf_counter() - t0,
                       extra_tables={"references": references})
