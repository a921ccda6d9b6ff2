"""Symmetry check of the matrices that quadratic problems document as symmetric."""

from __future__ import annotations

from .._backend import array_namespace, eps, to_host_scalar

__all__ = ["check_symmetric", "symmetry_rtol"]


def symmetry_rtol(n: int, dtype) -> float:
    r"""Default tolerance :math:`64\,n\,\epsilon` for an ``n × n`` matrix.

    A product such as :math:`Q\,\mathrm{diag}(\lambda)\,Q^\top` rounds its two triangles
    differently, by about :math:`n\epsilon\|M\|`; a matrix that was meant to be symmetric
    passes, a genuinely non-symmetric one (whose oracles would be wrong by the size of its
    antisymmetric part) does not.
    """
    return 64.0 * max(n, 1) * eps(dtype)


def check_symmetric(M, name: str, *, rtol: float | None = None):
    r"""Raise ``ValueError`` unless :math:`\|M - M^\top\|_F \le \text{rtol}\,\|M\|_F`.

    ``M`` is a matrix or a stack of matrices (each checked; the message names the first
    offending index). ``rtol`` defaults to :func:`symmetry_rtol`. Returns ``M``.
    """
    xp = array_namespace(M)
    n = M.shape[-1]
    rtol = symmetry_rtol(n, M.dtype) if rtol is None else rtol
    anti = xp.linalg.matrix_norm(M - xp.linalg.matrix_transpose(M))
    size = xp.linalg.matrix_norm(M)
    bad = anti > rtol * size
    if to_host_scalar(xp.any(bad)):
        if M.ndim == 2:
            where, ratio = "", to_host_scalar(anti / size)
        else:
            k = to_host_scalar(xp.argmax(xp.astype(bad, xp.int8)))
            where, ratio = f"[{int(k)}]", to_host_scalar(anti[int(k)] / size[int(k)])
        raise ValueError(f"{name}{where} must be symmetric: ||{name} - {name}.T|| / ||{name}|| = "
                         f"{ratio:.2e} exceeds {rtol:.1e} (the oracles assume symmetry; pass "
                         f"({name} + {name}.T) / 2 if the antisymmetric part is rounding)")
    return M
