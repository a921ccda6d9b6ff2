"""Argument checks for public entry points.

Every message names the argument and says what was expected. These run once at a
boundary (constructors, ``init``, ``run``), never inside a solver step; the finiteness
check synchronises a GPU once.
"""

from __future__ import annotations

import math
import numbers
import os

from ._backend import array_namespace, device, to_host_scalar

__all__ = [
    "check_array",
    "check_bool",
    "check_bounds",
    "check_choice",
    "check_int",
    "check_labels",
    "check_memory",
    "check_real",
]


def check_real(value, name: str, *, positive: bool = False, nonnegative: bool = False,
               low: float | None = None, high: float | None = None,
               allow_none: bool = False) -> float | None:
    """Return ``value`` as a Python float after checking it is a finite real number."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0; got {value}")
    if nonnegative and not value >= 0:
        raise ValueError(f"{name} must be >= 0; got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}; got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}; got {value}")
    return value


def check_int(value, name: str, *, minimum: int | None = None, allow_none: bool = False):
    """Return ``value`` as a Python int after checking it is an integer ``>= minimum``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value


def check_bounds(value, name: str):
    """Return ``value`` unchanged after checking it is None or a ``(lower, upper)`` tuple
    of real numbers with ``lower <= upper``."""
    if value is None:
        return None
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(f"{name} must be a (lower, upper) tuple; got {value!r}")
    lo = check_real(value[0], f"{name}[0]")
    hi = check_real(value[1], f"{name}[1]")
    if not lo <= hi:
        raise ValueError(f"{name} must have lower <= upper; got {value}")
    return value


def check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__}")
    return value


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_array(a, name: str, *, ndim: int | tuple[int, ...] | None = None,
                shape: tuple | None = None, xp=None, finite: bool = True,
                floating: bool = True, like=None):
    """Check an array argument and return it unchanged.

    Parameters
    ----------
    a : array
        The argument.
    name : str
        Its name, for messages.
    ndim : int or tuple of int, optional
        Allowed numbers of dimensions.
    shape : tuple, optional
        Expected shape; ``None`` entries match any size.
    xp : namespace, optional
        Required namespace (a mismatch raises ``TypeError``).
    finite : bool
        Reject NaN and infinities.
    floating : bool
        Require a real floating dtype (integer and complex data are rejected).
    like : array, optional
        An array whose namespace, device and dtype ``a`` must share.
    """
    if a is None:
        raise TypeError(f"{name} must be an array; got None")
    if like is not None:
        array_namespace(a, like, names=(name, "the problem's data"))
        if floating and a.dtype != like.dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but the problem uses {like.dtype}")
    a_xp = array_namespace(a, names=(name,))
    if xp is not None and a_xp is not xp:
        raise TypeError(f"{name} must be an array of {getattr(xp, '__name__', xp)}; "
                        f"got {getattr(a_xp, '__name__', a_xp)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if a.ndim not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimension(s); "
                             f"got shape {tuple(a.shape)}")
    if shape is not None:
        if len(shape) != a.ndim or any(s is not None and s != t for s, t in zip(shape, a.shape)):
            want = tuple("*" if s is None else s for s in shape)
            raise ValueError(f"{name} must have shape {want}; got {tuple(a.shape)}")
    if floating:
        if not (a.dtype == a_xp.float32 or a.dtype == a_xp.float64):
            raise TypeError(f"{name} must have dtype float32 or float64; got {a.dtype}")
        if finite and a.ndim >= 0 and math.prod(a.shape) > 0:
            if not to_host_scalar(a_xp.all(a_xp.isfinite(a))):
                raise ValueError(f"{name} contains NaN or infinite values")
    return a


def check_has_features(a, name: str) -> None:
    """Refuse data whose last axis (the features) is empty: the models would divide by zero."""
    if a.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one feature; got shape {tuple(a.shape)}")


def check_labels(a, name: str, *, values: tuple, like=None):
    """Check a label array whose entries must all lie in ``values`` (any numeric dtype)."""
    xp = array_namespace(a, names=(name,))
    if like is not None:
        array_namespace(a, like, names=(name, "the problem's data"))
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {tuple(a.shape)}")
    ok = xp.zeros(a.shape, dtype=xp.bool, device=device(a))
    for v in values:
        ok = ok | (a == v)
    if not to_host_scalar(xp.all(ok)):
        raise ValueError(f"{name} must contain only the values {values}")
    return a


def available_memory() -> int | None:
    """Bytes of host memory available to a new allocation (``MemAvailable``), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(n_floats, what: str, *, itemsize: int = 8) -> None:
    """Refuse, before allocating, data of ``n_floats`` numbers that cannot fit in memory.

    Raises :class:`MemoryError` naming ``what``, the estimated and the available sizes when
    ``n_floats * itemsize`` exceeds the host memory available now (nothing is checked where
    that cannot be read).
    """
    need = int(n_floats) * itemsize
    avail = available_memory()
    if avail is not None and need > avail:
        raise MemoryError(f"{what} needs about {need / 2**30:.3g} GiB of memory; "
                          f"{avail / 2**30:.3g} GiB are available")
