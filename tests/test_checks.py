"""The derivative checks detect planted bugs and accept correct oracles."""

import pytest

from refbilevel import checks
from refbilevel.problems.quadratic import Quadratic


class WrongGradient(Quadratic):
    """∇_y g with a planted bug: the linear term has the wrong sign."""

    def grad_g(self, x, y, batch=None):
        gx, gy = super().grad_g(x, y, batch)
        return gx, gy + 2.0 * self.c


class WrongHVP(Quadratic):
    """HVP off by a rank-one term (still symmetric, so only FD catches it)."""

    def hvp_g(self, x, y, v, batch=None):
        return super().hvp_g(x, y, v) + 0.01 * self.c * (self.c @ v)


class WrongCross(Quadratic):
    """Cross-derivative transposed the wrong way (B instead of Bᵀ on a square B)."""

    def cross_g(self, x, y, v, batch=None):
        return -(self.B @ v)


def _make(cls, xp, device):
    q = Quadratic.random(3, 3, seed=4, xp=xp, device=device)
    return cls(q.H, q.B, q.c, q.A, q.a, q.R, q.r)


def test_correct_problem_passes(xp, device):
    table = checks.check_problem(_make(Quadratic, xp, device))
    assert max(table.values()) <= 1e-7


@pytest.mark.parametrize("cls, oracle", [(WrongGradient, "grad_g_y"), (WrongHVP, "hvp_g"),
                                         (WrongCross, "cross_g")])
def test_planted_bug_is_detected(xp, device, cls, oracle):
    table = checks.check_problem(_make(cls, xp, device), hypergradient=False)
    assert table[oracle] > 1e-3, table


def test_symmetry_check_detects_nonsymmetric_operator(xp, device):
    q = _make(Quadratic, xp, device)
    u, v = checks.random_direction(q.init_y(), 1), checks.random_direction(q.init_y(), 2)
    assert checks.check_symmetry(lambda t: q.hvp_g(q.init_x(), q.init_y(), t), u, v) <= 1e-14
    assert checks.check_symmetry(lambda t: q.B @ t, u, v) > 1e-3


def test_directional_derivative_exact_on_cubic(xp, device):
    x = xp.asarray([0.3, -1.2], dtype=xp.float64, device=device)
    u = xp.asarray([1.0, 2.0], dtype=xp.float64, device=device)
    d = checks.directional_derivative(lambda t: xp.sum(t**3), x, u)
    exact = 3 * 0.3**2 * 1.0 + 3 * 1.2**2 * 2.0
    assert abs(float(d) - exact) <= 1e-12 * exact


def test_format_table():
    text = checks.format_table({"grad_g_y": 1e-12}, title="t")
    assert "grad_g_y" in text and "1.00e-12" in text
