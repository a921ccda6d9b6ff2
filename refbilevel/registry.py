"""Problems, solvers and datasets by name, for the command line and ``config.json``.

* :data:`PROBLEMS` — name -> :class:`ProblemSpec`: a builder with synthetic defaults (the
  keyword arguments of the builder, overridable with ``problem.KEY=VALUE``), the real
  datasets it accepts, and the size parameter ``refbilevel bench --sizes`` scales.
* :data:`SOLVERS` — name -> solver class (frozen dataclasses; their fields are the
  hyperparameters, overridable with ``KEY=VALUE``).
* :func:`suggested_settings` — per-problem solver hyperparameters (``ProblemSpec.suggested``)
  that :func:`build_solver` applies when it is given the problem: the solvers' generic
  defaults are poorly scaled for some problems (e.g. an inner step above ``2/L_g``).
* :func:`parse_settings` — ``--set key=value`` strings to typed values, coerced from the
  solver's dataclass field types or the builder's default values; unknown keys raise a
  :class:`ValueError` that lists the valid ones.

Every lookup failure is a :class:`ValueError` naming what was asked and what exists.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from . import datasets as _datasets
from ._backend import BACKEND_NAMES, backend_namespace, persist_data, resolve_dtype

__all__ = ["CONFIGURATIONS", "DEFAULT_RUN", "NamedConfiguration", "PROBLEMS", "SOLVERS",
           "ProblemSpec", "build_problem", "build_solver",
           "coerce", "dataset_names", "default_iters", "describe_all", "get_problem",
           "get_solver", "parse_settings", "problem_defaults", "solver_defaults",
           "suggested_settings", "usable_backends"]

#: Builder arguments that are not problem parameters (they come from the CLI options or,
#: ``return_split``, from :func:`build_problem`).
_RESERVED = ("seed", "xp", "dtype", "device", "data", "return_split")


@dataclass(frozen=True)
class ProblemSpec:
    """How to build a problem by name.

    Attributes
    ----------
    builder : str
        ``"module:attribute"`` of a callable ``builder(**params, seed=, xp=, dtype=,
        device=[, data=])`` returning the problem (or ``(problem, extra)``).
    description : str
        One line for ``refbilevel list``.
    datasets : tuple of str
        Real datasets (names of :data:`refbilevel.datasets.DATASETS`) the builder accepts
        through ``data=``.
    size_param : str
        The parameter ``refbilevel bench --sizes`` sets.
    minimax : bool
        Whether the problem is minimax-bilevel (FOSL, MemCS) rather than bilevel.
    defaults : dict
        Overrides of the builder's own defaults (ours; documented in ``refbilevel list``).
    suggested : dict of str to dict
        Solver name -> hyperparameter overrides for this problem, applied by
        :func:`build_solver` under the user's values (ours: tuned so that the default-length
        run at the default size lowers the exact hypergradient norm; the tables and the
        constants they come from are next to :data:`PROBLEMS`). Other sizes or real data
        change the constants; the settings are a starting point there.
    """

    builder: str
    description: str
    datasets: tuple = ()
    size_param: str | None = None
    minimax: bool = False
    defaults: dict = field(default_factory=dict)
    suggested: dict[str, dict] = field(default_factory=dict)

    def resolve(self) -> Callable:
        module, _, attr = self.builder.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def available(self) -> bool:
        try:
            self.resolve()
        except (ImportError, AttributeError):
            return False
        return True


# ---------------------------------------------------------------- suggested settings
# Per-problem solver hyperparameters (ours), tuned so that the default-length run
# (:func:`default_iters`) at the registry's default size lowers the exact hypergradient
# norm (measurements in tests/test_registry_defaults.py). Steps come from the problem's
# constants where they are known: an inner step ~1/L_g (GD on g is stable below 2/L_g),
# a penalty step (multiplier λ or γ times step) ~1/L_g, an outer step ~1/L_F. Solvers
# missing from a problem's table do well with their generic defaults there.

#: Quadratic.random(dim_x=10, dim_y=20, cond=10): H has eigenvalues in [1, cond], so
#: L_g = 10, μ_g = 1; the outer Hessian BᵀH⁻¹AH⁻¹B + R has eigenvalues in [0.11, 1.4]
#: (seed 0), so L_F ≈ 1.4.
_QUADRATIC = {
    "minimaxopt": {"lr": 0.05},              # step on g: lr·α0·τ = 0.1 = 1/L_g
    "minimaxopt_stochastic": {"lr": 0.01},   # heavy ball β = 0.9 is stable for
                                             # lr·α0·τ·L_g = 0.2 < 2(1 + β)
    "f2sa": {"schedule": "constant", "lam0": 1.0, "delta": 0.01,  # λ_k = 1 + 0.01 k
             "lr_y": 0.01, "lr_z": 0.1,      # y step on g: λ·lr_y <= 0.11 ≈ 1/L_g up to
             "xi": 20.0},                    # k = 1000; z step 1/L_g; x step 0.2 ≈ 0.3/L_F
    "f2sa_adam": {"lam0": 10.0, "delta": 0.0, "lr_y": 0.01, "lr_z": 0.01},  # fixed λ
    "aid": {"lr_inner": 0.1},                # 1/L_g (the default 1.0 > 2/L_g diverges)
    "itd": {"lr_inner": 0.1},                # 1/L_g
    "stocbio": {"n_neumann": 50},            # Neumann bias (1 - μ_g/L_g)^50 ≈ 0.005
    "bome": {"lr_inner": 0.05, "n_inner": 100},  # 1/(2 L_g); a closer ŷ lowers BOME's bias
    "vpbgd": {"lr_outer": 0.1,               # lr_inner = 0.01 = 1/(γ L_g) stays
              "yhat_start": "previous"},     # warm ŷ: fixed point x_γ exactly
    "f2ba": {"z_start": "previous"},         # warm z: fixed point x_λ exactly
}

#: toy_1d: g = ½(y - a x)², L_g = μ_g = 1, the penalty's curvature in x is a² = 4.
_TOY_1D = {
    "f2sa": {"schedule": "constant", "lam0": 10.0, "delta": 0.0,  # fixed λ = 10
             "lr_y": 0.1, "lr_z": 1.0,       # λ·lr_y = 1/L_g; lr_z = 1/L_g
             "xi": 2.0},                     # x step 0.2 < 1/a²
    "f2sa_adam": {"lam0": 10.0, "delta": 0.0, "lr_y": 0.01, "lr_z": 0.01},  # fixed λ
}

#: logreg (binary, n = 1000, p = 100, λ_j = e^{x_j}, x0 = 0): μ_g = e^{min x} ≈ 1 and
#: L_g ≤ ‖A‖²/(4 n_train) + e^{max x} ≈ 1.5 near x0; ‖∇F(x0)‖ ≈ 0.04 and F is flat, so the
#: outer steps are large (3, from a sweep of exact hypergradient descent).
_LOGREG = {
    # = DEFAULT_RUN["hyperparameters"]: the optimum of study hpo_logreg_sweep (τ x K x step,
    # 6000 gradient calls, seeds 0-2, docs/studies/hpo_logreg): one stage at α = α0·τ = 1.05
    # and the largest step whose next grid step (1.4) still converges on every seed
    "minimaxopt": {"lr": 1.2, "lam0": 1.0, "tau": 1.05, "steps_per_stage": 2000,
                   "n_stages": 1},
    "minimaxopt_stochastic": {"lr": 0.1, "tau": 1.2},   # lr·α0·τ·L_g ≈ 0.2 (heavy ball
                                                        # β = 0.9: < 2(1 + β)); slow growth
                                                        # (the sweep covers Algorithm 1 only)
    "f2sa": {"schedule": "constant", "lam0": 10.0, "delta": 0.0,
             "lr_y": 0.02, "lr_z": 0.2,      # λ·lr_y = lr_z = 0.2 ≈ 0.3/L_g and x step
             "xi": 25.0},                    # ξ·lr_y = 0.5: small enough for minibatches
    "f2sa_adam": {"lam0": 10.0, "delta": 0.0, "lr_y": 0.01, "lr_z": 0.01},
    "aid": {"lr_inner": 0.5, "n_inner": 20, "lr_outer": 3.0},   # inner 1/L_g
    "itd": {"lr_inner": 0.5, "n_inner": 20, "lr_outer": 3.0},
    "stocbio": {"lr_inner": 0.5, "lr_outer": 3.0},
    "soba": {"lr_inner": 0.5, "lr_outer": 3.0},
    "saba": {"lr_inner": 0.5, "lr_outer": 3.0},           # SOBA's steps
    "bome": {"lr_inner": 0.5, "lr_outer": 3.0},
    "vpbgd": {"lr_inner": 0.05, "lr_hat": 0.5,   # lr_inner ≈ 1/(γ L_g), lr_hat ≈ 1/L_g
              "lr_outer": 3.0, "yhat_start": "previous"},
    "f2ba": {"lr_inner": 0.5, "lr_outer": 3.0},
    "implicit": {"lr": 3.0},
}


def _flat_outer(lr_inner: float, lr_outer: float) -> dict:
    """Settings for the classification problems with L_g ≈ 1/lr_inner and a flat F."""
    return {
        "minimaxopt": {"lr": lr_inner, "lr_x": lr_outer, "tau": 1.2},  # g step lr·τ ≈ 1/L_g
        "minimaxopt_stochastic": {"lr": lr_inner / 10, "lr_x": lr_outer / 10,  # heavy ball
                                  "tau": 1.2},                              # 0.9: steps ×10
        "f2sa": {"schedule": "constant", "lam0": 10.0, "delta": 0.0,
                 "lr_y": lr_inner / 10, "lr_z": lr_inner,   # λ·lr_y = lr_z ≈ 1/L_g
                 "xi": lr_outer / (lr_inner / 10)},         # x step = lr_outer
        "f2sa_adam": {"lam0": 10.0, "delta": 0.0, "lr_y": 0.01, "lr_z": 0.01},
        "aid": {"lr_inner": lr_inner, "n_inner": 20, "lr_outer": lr_outer},
        "itd": {"lr_inner": lr_inner, "n_inner": 20, "lr_outer": lr_outer},
        "stocbio": {"lr_inner": lr_inner, "lr_outer": lr_outer},
        "soba": {"lr_inner": lr_inner, "lr_outer": lr_outer},
        "saba": {"lr_inner": lr_inner, "lr_outer": lr_outer},
        "bome": {"lr_inner": lr_inner, "lr_outer": lr_outer},
        "vpbgd": {"lr_inner": lr_inner / 10, "lr_hat": lr_inner,  # 1/(γ L_g), γ = 10
                  "lr_outer": lr_outer, "yhat_start": "previous"},
        "f2ba": {"lr_inner": lr_inner, "lr_outer": lr_outer},
        "implicit": {"lr": lr_outer},
    }


#: multinomial (n = 600, p = 20, C = 3): L_g ≤ ‖A‖²/(2 n_train) + e^{max x} ≈ 18 near
#: x0 = 0; ‖∇F(x0)‖ ≈ 0.02, outer step 10 from a sweep with SOBA.
_MULTINOMIAL = _flat_outer(0.05, 10.0)
#: cleaning (n_train = 400, p = 20, C = 5, linear): L_g ≤ ‖A‖²/(2 n_train) ≈ 13;
#: ‖∇F(x0)‖ ≈ 0.03 over 400 sample weights, outer step 30 from a sweep with SOBA.
_CLEANING = _flat_outer(0.05, 30.0)
#: layer_decay (MLP, nonconvex inner; no closed-form constants): measured, not derived.
#: With the generic steps ‖∇F‖ falls within 200 steps and then rises again for the
#: solvers below; smaller x steps keep the decrease monotone.
_LAYER_DECAY = {
    "minimaxopt_stochastic": {"lr": 0.01},   # heavy ball 0.9: effective step 0.1
    "f2sa": {"schedule": "constant", "lam0": 10.0, "delta": 0.0,
             "lr_y": 0.01, "lr_z": 0.1, "xi": 1.0},   # λ·lr_y = lr_z = 0.1; x step 0.01
    "bome": {"lr_outer": 0.03},
    "f2ba": {"lr_outer": 0.03},
}

PROBLEMS: dict[str, ProblemSpec] = {
    "logreg": ProblemSpec(
        "refbilevel.datasets:make_logreg_hpo",
        "binary logistic regression, one weight decay per feature (MinimaxOPT paper, 4.1)",
        datasets=("breast_cancer", "libsvm"), size_param="n", suggested=_LOGREG),
    "multinomial": ProblemSpec(
        "refbilevel.datasets:make_multinomial_hpo",
        "multinomial logistic regression, one weight decay per feature",
        datasets=("digits", "fashion_mnist"), size_param="n", suggested=_MULTINOMIAL),
    "cleaning": ProblemSpec(
        "refbilevel.datasets:make_cleaning",
        "data hyper-cleaning: one weight per training sample, corrupted labels",
        datasets=("digits", "fashion_mnist"), size_param="n_train", suggested=_CLEANING),
    "layer_decay": ProblemSpec(
        "refbilevel.problems.layer_decay:LayerDecayMLP.synthetic",
        "per-layer weight decay of an MLP", size_param="n_train",
        suggested=_LAYER_DECAY),
    "quadratic": ProblemSpec(
        "refbilevel.problems.quadratic:Quadratic.random",
        "random quadratic bilevel problem with closed forms", size_param="dim_y",
        defaults={"dim_x": 10, "dim_y": 20}, suggested=_QUADRATIC),
    "toy_1d": ProblemSpec(
        "refbilevel.problems.quadratic:toy_1d",
        "MinimaxOPT Example 1: one-dimensional quadratic with a box on x", suggested=_TOY_1D),
    "multitask_auc": ProblemSpec(
        "refbilevel.datasets:make_multitask_auc",
        "multi-task AUC maximisation (minimax-bilevel)", size_param="n_train", minimax=True),
    "meta_learning": ProblemSpec(
        "refbilevel.datasets:make_meta_learning",
        "rank-based robust meta-learning (minimax-bilevel)", size_param="n_support",
        minimax=True),
    "minimax_quadratic": ProblemSpec(
        "refbilevel.problems.minimax_quadratic:MinimaxQuadratic.random",
        "random multi-block minimax-bilevel quadratic with closed-form saddle",
        size_param="dim_z", minimax=True,
        defaults={"n_blocks": 4, "dim_x": 3, "dim_y": 2, "dim_z": 5}),
}

#: name -> "module:Class" of the solver.
_SOLVER_PATHS = {
    "minimaxopt": "refbilevel.solvers.minimaxopt:MinimaxOPT",
    "minimaxopt_stochastic": "refbilevel.solvers.minimaxopt:MinimaxOPTStochastic",
    "f2sa": "refbilevel.solvers.f2sa:F2SA",
    "f2sa_adam": "refbilevel.solvers.f2sa:F2SAAdam",
    "fosl": "refbilevel.solvers.fosl:FOSL",
    "memcs": "refbilevel.solvers.memcs:MemCS",
    "implicit": "refbilevel.solvers.implicit:ImplicitGD",
    "aid": "refbilevel.solvers.aid:AID",
    "itd": "refbilevel.solvers.itd:ITD",
    "stocbio": "refbilevel.solvers.stocbio:StocBiO",
    "soba": "refbilevel.solvers.soba:SOBA",
    "saba": "refbilevel.solvers.saba:SABA",
    "bome": "refbilevel.solvers.bome:BOME",
    "vpbgd": "refbilevel.solvers.penalty:VPBGD",
    "f2ba": "refbilevel.solvers.penalty:F2BA",
}


@dataclass(frozen=True)
class NamedConfiguration:
    """A published algorithm that is a registered solver with some settings fixed.

    Attributes
    ----------
    solver : str
        The registered solver (a key of :data:`SOLVERS`).
    settings : dict
        The hyperparameters that make it the published algorithm (they override the
        problem's suggested settings; the user's own values override them).
    description : str
        One line: what it is and where it comes from.
    """

    solver: str
    settings: dict
    description: str


#: name -> :class:`NamedConfiguration`; usable wherever a solver name is (``--solver``,
#: :func:`build_solver`, ``config.json``).
CONFIGURATIONS: dict[str, NamedConfiguration] = {
    "one_step": NamedConfiguration(
        "itd", {"n_inner": 1, "warm_start": True},
        "one-step / T1-T2 (Luketina et al. 2016): one warm-started inner GD step, the "
        "hypergradient differentiated through that step"),
    "amigo": NamedConfiguration(
        "aid", {"method": "neumann", "warm_start_v": True},
        "AmIGO (Arbel & Mairal 2022): AID whose inner variable and linear-system solution "
        "are both warm-started, the system solved by gradient (Neumann) steps"),
    "soba_sqrt": NamedConfiguration(
        "soba", {"lr_schedule": "sqrt"},
        "SOBA with benchopt's decreasing steps lr/sqrt(k+1) on both levels"),
}


def _load_solvers() -> dict:
    out = {}
    for name, path in _SOLVER_PATHS.items():
        module, _, attr = path.partition(":")
        try:
            out[name] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    return out


#: name -> solver class, for the solvers importable in this installation.
SOLVERS: dict[str, type] = _load_solvers()


def _unknown(kind: str, name, valid) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}")


def get_problem(name: str) -> ProblemSpec:
    """The :class:`ProblemSpec` of ``name`` (``ValueError`` listing the valid names)."""
    valid = [n for n, s in PROBLEMS.items() if s.available()]
    if name not in valid:
        raise _unknown("problem", name, valid)
    return PROBLEMS[name]


def get_solver(name: str) -> type:
    """The solver class of ``name``, a solver or a named configuration of
    :data:`CONFIGURATIONS` (``ValueError`` listing the valid names)."""
    if name in CONFIGURATIONS:
        return SOLVERS[CONFIGURATIONS[name].solver]
    if name not in SOLVERS:
        raise _unknown("solver", name, list(SOLVERS) + list(CONFIGURATIONS))
    return SOLVERS[name]


def dataset_names() -> list[str]:
    return list(_datasets.DATASETS)


# ----------------------------------------------------------------------- parameters
def problem_defaults(name: str) -> dict:
    """The problem parameters of ``name`` and their defaults (builder signature + overrides)."""
    spec = get_problem(name)
    sig = inspect.signature(spec.resolve())
    out = {}
    for p in sig.parameters.values():
        if p.name in _RESERVED or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.default is inspect.Parameter.empty:
            continue
        out[p.name] = p.default
    out.update(spec.defaults)
    return out


def solver_defaults(name: str) -> dict:
    """The hyperparameters of solver ``name`` and their defaults."""
    cls = get_solver(name)
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}


def _type_of_field(cls, key) -> str:
    for f in dataclasses.fields(cls):
        if f.name == key:
            return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    raise KeyError(key)


def _type_of_default(value) -> str:
    if value is None:
        return "str | None"
    if isinstance(value, bool):
        return "bool"
    return type(value).__name__


def coerce(text: str, type_text: str, key: str):
    """Convert the string ``text`` to the type described by ``type_text`` (e.g. ``"float | None"``)."""
    kinds = [t.strip() for t in type_text.replace("Optional[", "").rstrip("]").split("|")]
    low = text.strip().lower()
    if "None" in kinds and low in ("none", "null", ""):
        return None
    errors = []
    for kind in kinds:
        try:
            if kind == "bool":
                if low in ("true", "1", "yes", "on"):
                    return True
                if low in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            if kind == "int":
                value = float(text) if any(c in low for c in ".e") else int(text)
                if isinstance(value, float):
                    if not value.is_integer():
                        raise ValueError
                    value = int(value)
                return value
            if kind == "float":
                return float(text)
            if kind.startswith("tuple"):
                parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
                return tuple(float(p) for p in parts)
            if kind == "str":
                return text
        except ValueError:
            errors.append(kind)
            continue
    raise ValueError(f"{key} must be of type {type_text}; got {text!r}")


def parse_settings(items, solver_cls=None, problem_name: str | None = None):
    """Split ``["key=value", "problem.key=value", ...]`` into (solver kwargs, problem kwargs).

    Values are coerced from the solver's dataclass field types and the problem builder's
    default values. Unknown keys raise ``ValueError`` listing the valid keys.
    """
    solver_kw, problem_kw = {}, {}
    items = list(items or [])
    p_defaults = problem_defaults(problem_name) if problem_name is not None else {}
    s_fields = [f.name for f in dataclasses.fields(solver_cls)] if solver_cls else []
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"--set expects key=value; got {item!r}")
        key, _, text = item.partition("=")
        key = key.strip()
        if key.startswith("problem."):
            k = key[len("problem."):]
            if k not in p_defaults:
                valid = ", ".join(f"problem.{n}" for n in p_defaults) or "(none)"
                raise ValueError(f"unknown problem parameter {k!r} for problem "
                                 f"{problem_name!r}; valid keys: {valid}")
            problem_kw[k] = coerce(text, _type_of_default(p_defaults[k]), key)
        else:
            if key not in s_fields:
                name = getattr(solver_cls, "name", "?")
                raise ValueError(f"unknown hyperparameter {key!r} for solver {name!r}; "
                                 f"valid keys: {', '.join(s_fields)} "
                                 "(problem parameters take the prefix 'problem.')")
            problem_type = _type_of_field(solver_cls, key)
            solver_kw[key] = coerce(text, problem_type, key)
    return solver_kw, problem_kw


# ------------------------------------------------------------------------- builders
def _load_dataset(dataset: str, seed: int):
    name, _, arg = dataset.partition(":")
    if name not in _datasets.DATASETS:
        raise _unknown("dataset", name, list(_datasets.DATASETS))
    loader = _datasets.DATASETS[name]["loader"]
    if name == "libsvm":
        if not arg:
            raise ValueError("dataset 'libsvm' needs a path: --data libsvm:/path/to/file")
        return loader(arg, seed=seed)
    if name == "fashion_mnist":
        return loader(arg or None, seed=seed)
    return loader(seed=seed)


def build_problem(name: str, *, seed: int = 0, backend: str = "numpy", dtype: str = "float64",
                  params: dict | None = None, dataset: str | None = None, device=None,
                  return_split: bool = False):
    """Build problem ``name`` on ``backend`` with ``params`` overriding its defaults.

    ``dataset`` (a name from :data:`refbilevel.datasets.DATASETS`, ``libsvm:PATH`` or
    ``fashion_mnist[:DIR]``) replaces the synthetic data where the problem accepts it.
    ``return_split=True`` returns ``(problem, split)``: the host
    :class:`~refbilevel.datasets.Split` the problem was built on (its test part feeds
    :mod:`refbilevel.heldout`), or None when the builder does not hand one back.
    """
    spec = get_problem(name)
    xp = backend_namespace(backend)
    resolve_dtype(xp, dtype)
    kwargs = dict(spec.defaults)
    kwargs.update(params or {})
    builder = spec.resolve()
    sig = inspect.signature(builder).parameters
    call = dict(kwargs)
    for key, value in (("seed", seed), ("xp", xp), ("dtype", dtype), ("device", device)):
        if key in sig or (key != "seed" and any(p.kind == p.VAR_KEYWORD for p in sig.values())):
            call[key] = value
    if dataset is not None:
        base = dataset.partition(":")[0]
        if base not in spec.datasets:
            raise ValueError(f"problem {name!r} accepts the datasets "
                             f"{', '.join(spec.datasets) or '(none: synthetic only)'}; "
                             f"got {dataset!r}")
        call["data"] = _load_dataset(dataset, seed)
    if return_split and "return_split" in sig:
        call["return_split"] = True
    out = builder(**call)
    problem, split = out if isinstance(out, tuple) else (out, None)
    problem = persist_data(problem)
    return (problem, split) if return_split else problem


def suggested_settings(problem: str, solver: str) -> dict:
    """The hyperparameters suggested for ``solver`` on ``problem`` (``{}`` when none).

    For a named configuration: the suggestions for its solver, then its own settings.
    """
    get_solver(solver)
    named = CONFIGURATIONS.get(solver)
    base = named.solver if named is not None else solver
    out = dict(get_problem(problem).suggested.get(base, {}))
    if named is not None:
        out.update(named.settings)
    return out


def build_solver(name: str, hyperparameters: dict | None = None, *, problem: str | None = None):
    """Instantiate solver ``name`` with ``hyperparameters`` (validated by the solver).

    With ``problem`` (a registry name) the problem's :func:`suggested_settings` fill in
    under ``hyperparameters``: values given explicitly always win.
    """
    cls = get_solver(name)
    if problem is not None:
        kwargs = suggested_settings(problem, name)
    else:
        kwargs = dict(CONFIGURATIONS[name].settings) if name in CONFIGURATIONS else {}
    kwargs.update(hyperparameters or {})
    return cls(**kwargs)


def usable_backends() -> list[str]:
    """Backends usable here; torch, jax and dask are reported when installed, without
    importing them (slow; and looking JAX up would switch on its 64-bit mode)."""
    from ._backend import available_backends

    found = available_backends()
    out = []
    for name in BACKEND_NAMES:
        if name in ("torch", "jax", "dask"):
            if name in found:
                out.append(name)
            continue
        try:
            backend_namespace(name)
        except ValueError:
            continue
        out.append(name)
    return out


def describe_all() -> dict[str, Any]:
    """Everything ``refbilevel list`` prints, as plain data."""

    problems = {n: {"description": s.description, "minimax": s.minimax,
                    "datasets": list(s.datasets), "defaults": problem_defaults(n),
                    "suggested": {k: dict(v) for k, v in s.suggested.items()}}
                for n, s in PROBLEMS.items() if s.available()}
    solvers = {n: {"minimax": bool(getattr(c, "minimax", False)),
                   "class": c.__name__, "defaults": solver_defaults(n)}
               for n, c in SOLVERS.items()}
    data = {n: d["description"] for n, d in _datasets.DATASETS.items()}
    named = {n: {"solver": c.solver, "settings": dict(c.settings),
                 "description": c.description} for n, c in CONFIGURATIONS.items()}
    return {"problems": problems, "solvers": solvers, "backends": usable_backends(),
            "datasets": data, "configurations": named}


#: The embedded default of ``refbilevel run``: MinimaxOPT (Algorithm 1, full batch) on the
#: synthetic logistic-regression HPO problem of the MinimaxOPT paper (§4.1; n = 1000 samples,
#: p = 100 features as in :func:`refbilevel.datasets.logreg_hpo_data`). The step size, stage
#: factor and stage length are settled by study ``hpo_logreg_sweep`` (the paper's grid values
#: are not reproduced here, UNVERIFIED): within 2000 iterations a single stage at
#: α = α0·τ = 1.05 with step 1.2 lowers the validation loss furthest, while the solver's
#: generic defaults (lr=0.1, tau=2, K=100) freeze x after a few stages on this problem.
DEFAULT_RUN = {
    "problem": "logreg",
    "solver": "minimaxopt",
    "hyperparameters": {"lr": 1.2, "lam0": 1.0, "tau": 1.05, "steps_per_stage": 2000,
                        "n_stages": 1},
    "iters": 2000,
    "record_every": 50,
}


def default_iters(solver) -> int:
    """Iterations when ``--iters`` is not given: N·K for MinimaxOPT, else 1000."""
    k, n = getattr(solver, "steps_per_stage", None), getattr(solver, "n_stages", None)
    if isinstance(k, int) and isinstance(n, int):
        return k * n
    return 1000
