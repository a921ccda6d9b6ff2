"""Host-side random building blocks for problem generators (drawn once, then moved)."""

from __future__ import annotations

__all__ = ["random_spd"]


def random_spd(hxp, rng, dim: int, low: float, high: float):
    """Host SPD matrix ``Q diag(λ) Qᵀ`` with eigenvalues spread geometrically on ``[low, high]``.

    ``hxp`` is the host namespace (:func:`refbilevel._backend.host_namespace`), ``rng`` the
    host generator; ``Q`` is the orthogonal factor of a Gaussian matrix.
    """
    G = hxp.asarray(rng.standard_normal((dim, dim)))
    Q, _ = hxp.linalg.qr(G)
    if dim == 1:
        eig = hxp.asarray([low])
    else:
        t = hxp.arange(dim, dtype=hxp.float64) / (dim - 1)
        eig = low * (high / low) ** t
    return (Q * eig[None, :]) @ Q.T
