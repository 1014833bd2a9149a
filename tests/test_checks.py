"""nncomp.checks: the parameter checks every public function uses."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from nncomp.checks import check_choice, check_flag, check_number, check_seed, is_integer, is_number
from nncomp.errors import CompressionParameterError, InputError, NncompError


@given(v=st.one_of(st.integers(-10, 10), st.floats(-10, 10), st.just(float("nan"))),
       low=st.integers(-5, 0), high=st.integers(1, 5), lo_open=st.booleans(), hi_open=st.booleans())
def test_check_number_accepts_exactly_the_interval(v, low, high, lo_open, hi_open):
    inside = (not (isinstance(v, float) and math.isnan(v)) and (v > low if lo_open else v >= low)
              and (v < high if hi_open else v <= high))
    if inside:
        assert check_number(v, "x", low=low, high=high, low_open=lo_open, high_open=hi_open) == float(v)
    else:
        with pytest.raises(CompressionParameterError, match=r"x must be a number in [\[(]"):
            check_number(v, "x", low=low, high=high, low_open=lo_open, high_open=hi_open)


def test_bools_strings_and_non_integers_are_refused_with_where_and_fix():
    for bad in (True, np.bool_(False), "3", None, [3], 2.5, float("inf")):
        with pytest.raises(CompressionParameterError) as e:
            check_number(bad, "bits", integer=True, low=1, high=8, method="share", fix="pass e.g. bits=5")
        msg = str(e.value)
        assert msg.startswith(f"share() got bits={bad!r}") and "an int in [1, 8]" in msg and "bits=5" in msg
    assert check_number(np.int16(4), "bits", integer=True, low=1, high=8) == 4
    assert type(check_number(np.int16(4), "bits", integer=True)) is int
    assert check_number(np.float32(0.5), "s", low=0, high=1) == 0.5
    with pytest.raises(InputError):
        check_number(0, "batch_size", integer=True, low=1, error=InputError)


def test_seed_choice_flag_and_predicates():
    assert check_seed(np.int64(3)) == 3
    for bad in (-1, True, 1.0):
        with pytest.raises(NncompError, match="seed must be an int >= 0"):
            check_seed(bad, method="prune")
    assert check_choice("l1", "criterion", ("l1", "l2")) == "l1"
    with pytest.raises(CompressionParameterError, match=r"choose one of \['l1', 'l2'\]"):
        check_choice("l3", "criterion", ("l1", "l2"), method="prune_filters")
    with pytest.raises(CompressionParameterError):
        check_choice(["l1"], "criterion", ("l1", "l2"))
    assert check_flag(np.bool_(True), "f") is True
    with pytest.raises(CompressionParameterError, match="expected True or False"):
        check_flag(1, "per_channel", method="quantize")
    assert is_integer(np.uint8(1)) and not is_integer(True) and not is_integer(1.0)
    assert is_number(1) and is_number(np.float16(1)) and not is_number(np.bool_(True)) and not is_number("1")
