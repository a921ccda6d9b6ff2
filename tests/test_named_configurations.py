"""Named configurations of the registry (one-step, AmIGO, SOBA with decreasing steps) and
the literal reading of the slides' AdamGrad.

Oracles: closed-form fixed points of the quadratic (rebuilt with NumPy), the solver a
configuration names built by hand, and Adam's recursions written out in NumPy.
"""

from __future__ import annotations

import numpy as np
import pytest

from refbilevel import registry
from refbilevel._backend import backend_namespace, to_host
from refbilevel.optim import adam
from refbilevel.solvers import AID, ITD, SOBA, F2SAAdam
from test_solvers_baselines import (neumann_matrix, quad_fixed_point, quad_host, quadratic,
                                    rel_err, run_steps)


def test_configurations_are_the_solvers_they_name():
    assert registry.build_solver("amigo", {"lr_inner": 0.3}) == AID(
        method="neumann", warm_start_v=True, lr_inner=0.3)
    assert registry.build_solver("one_step") == ITD(n_inner=1, warm_start=True)
    assert registry.build_solver("soba_sqrt") == SOBA(lr_schedule="sqrt")
    # the problem's suggestions for the solver apply under the configuration's settings
    got = registry.build_solver("amigo", problem="logreg")
    want = dict(registry.suggested_settings("logreg", "aid"), method="neumann",
                warm_start_v=True)
    assert got == AID(**want)
    # user values win over the configuration
    assert registry.build_solver("one_step", {"n_inner": 3}).n_inner == 3
    assert "amigo" in registry.describe_all()["configurations"]
    with pytest.raises(ValueError, match="amigo"):
        registry.get_solver("amigo_typo")


def test_one_step_fixed_point_is_the_identity_inverse_hessian(xp, device):
    """T1-T2: one warm-started inner step, so H⁻¹ is replaced by η I at the fixed point."""
    m = quad_host()
    P = quadratic(xp, device)
    s = registry.build_solver("one_step", {"lr_inner": 1 / m["L_g"], "lr_outer": m["lr_F"]})
    state = run_steps(s, P, 300)
    want = quad_fixed_point(neumann_matrix(1 / m["L_g"], 0))
    assert rel_err(to_host(state.x), want) <= 1e-9


def test_amigo_reaches_the_exact_solution(xp, device):
    """Warm-started y and v: the fixed point is x* itself (no Neumann truncation bias)."""
    m = quad_host()
    P = quadratic(xp, device)
    s = registry.build_solver("amigo", {"lr_inner": 1 / m["L_g"], "lr_outer": m["lr_F"],
                                        "n_inner": 10, "n_linear": 3})
    state = run_steps(s, P, 200)
    assert rel_err(to_host(state.x), to_host(P.solution())) <= 1e-8


def test_adam_keep_corrected_against_formula():
    xp = backend_namespace("numpy")
    rng = np.random.default_rng(0)
    b1, b2, eps, lr = 0.9, 0.99, 1e-8, 0.1
    opt = adam(b1, b2, eps, keep_corrected=True)
    g = [rng.standard_normal(4) for _ in range(4)]
    state = opt.init(xp.asarray(np.zeros(4)))
    m = v = np.zeros(4)
    for t, gt in enumerate(g, start=1):
        delta, state = opt.update(xp.asarray(gt), state, lr)
        m = (b1 * m + (1 - b1) * gt) / (1 - b1**t)      # the corrected moment is kept
        v = (b2 * v + (1 - b2) * gt**2) / (1 - b2**t)
        np.testing.assert_allclose(to_host(delta), -lr * m / (np.sqrt(v) + eps), rtol=1e-13)
        np.testing.assert_allclose(to_host(state.m), m, rtol=1e-13)
    # and it is a different method from Adam after the first update
    std = adam(b1, b2, eps)
    s2 = std.init(xp.asarray(np.zeros(4)))
    deltas = [std.update(xp.asarray(gt), s2, lr) for gt in g[:1]]
    np.testing.assert_allclose(to_host(deltas[0][0]), -lr * g[0] / (np.abs(g[0]) + eps),
                               rtol=1e-12)


def test_f2sa_adam_state_option():
    assert F2SAAdam(adam_state="corrected").optimizer is not None
    with pytest.raises(ValueError, match="adam_state"):
        F2SAAdam(adam_state="literal")
    with pytest.raises(ValueError, match="bias_correction"):
        F2SAAdam(adam_state="corrected", bias_correction=False)
    with pytest.raises(ValueError, match="keep_corrected"):
        adam(keep_corrected=True, bias_correction=False)
