"""Parameter checks for every public function (in the spirit of scikit-learn's ``check_scalar``).

Each check returns the value in its canonical Python type or raises one error whose message says
where (``method()``), what came, what was expected, and, when given, the fix::

    quantize() got percentile=120; percentile must be a number in (50, 100]

``True``/``False`` are never numbers here (``bits=True`` is refused), NaN is never in a range, and
NumPy scalars are accepted as Python ones.
"""
import math
import numbers

import numpy as np

from .errors import CompressionParameterError


def _where(method, name, value):
    return f"{method}() got {name}={value!r}" if method else f"{name}={value!r} was given"


def _interval(low, high, low_open, high_open):
    if low is not None and high is not None:
        return f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def is_integer(value):
    """Whether ``value`` is an integer (Python or NumPy), and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_number(value):
    """Whether ``value`` is a real number (Python or NumPy), and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_number(value, name, *, integer=False, low=None, high=None, low_open=False, high_open=False,
                 method=None, fix=None, error=CompressionParameterError):
    """``value`` as an int (``integer=True``) or a finite float within the given bounds.

    Parameters
    ----------
    value : object
    name : str
        The parameter's name, as the user wrote it.
    integer : bool
        Require an integral value (``numbers.Integral``); else any real number.
    low, high : number, optional
        Bounds, included unless ``low_open`` / ``high_open``.
    method : str, optional
        The public function's name, for the message.
    fix : str, optional
        A hint appended to the message (``"pass e.g. bits=5"``).
    error : type
        The NncompError subclass to raise.
    """
    ok = is_integer(value) if integer else is_number(value)
    if ok:
        v = int(value) if integer else float(value)
        ok = (math.isfinite(v)
              and (low is None or (v > low if low_open else v >= low))
              and (high is None or (v < high if high_open else v <= high)))
    if not ok:
        what = "an int" if integer else ("a number" if low is not None or high is not None else "a finite number")
        span = _interval(low, high, low_open, high_open)
        span = f" in {span}" if span and span[0] in "[(" else (f" {span}" if span else "")
        hint = f"; {fix}" if fix else ""
        raise error(f"{_where(method, name, value)}; {name} must be {what}{span}{hint}")
    return v


def check_seed(seed, *, method=None, error=CompressionParameterError):
    """A seed for NumPy's generators: an int >= 0."""
    return check_number(seed, "seed", integer=True, low=0, method=method, error=error)


def check_choice(value, name, choices, *, method=None, error=CompressionParameterError):
    """``value`` if it is one of ``choices`` (strings compared exactly)."""
    if isinstance(value, (list, dict, set, np.ndarray)) or value not in tuple(choices):
        raise error(f"{_where(method, name, value)}; choose one of {list(choices)}")
    return value


def check_flag(value, name, *, method=None, error=CompressionParameterError):
    """``True`` or ``False`` (NumPy booleans too), as a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"{_where(method, name, value)}; expected True or False")
    return bool(value)
