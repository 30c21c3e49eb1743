"""Property tests: malformed configs and factor bounds never escape as anything but AugsenseError."""

from __future__ import annotations

import dataclasses
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from augsense.analyses.sensitivity import build_factor_space
from augsense.config import SensitivityConfig
from augsense.errors import AugsenseError
from augsense.factors import get_factor
from augsense.factors.registry import factor_names

KEYS = [f.name for f in dataclasses.fields(SensitivityConfig)]
FACTORS = factor_names()

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["sobol", "mean", "cpu", "auto", "paper-set1", "brightness", "readout"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
pairs = st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10), st.text(max_size=3),
                           st.none()), min_size=0, max_size=3)
bounds = st.dictionaries(st.sampled_from(FACTORS + ["nope"]),
                         st.dictionaries(st.text(string.ascii_lowercase + "_", max_size=10), pairs, max_size=2),
                         max_size=3)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def accepted_or_refused(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except AugsenseError as error:
        assert str(error), "an error must say what is wrong"
        return None


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), values, max_size=6))
def test_from_dict_accepts_or_refuses_any_mapping(data):
    config = accepted_or_refused(SensitivityConfig.from_dict, data)
    if config is not None:  # what it accepts round-trips through TOML
        again = accepted_or_refused(SensitivityConfig.from_dict, config.to_dict())
        assert again == config


@FUZZ
@given(st.one_of(st.none(), st.lists(scalars, max_size=3), scalars))
def test_from_dict_refuses_what_is_not_a_mapping(data):
    with pytest.raises(AugsenseError, match="table"):
        SensitivityConfig.from_dict(data)  # type: ignore[arg-type]


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.builds(
    lambda key, value: f"{key} = {value}\n", st.sampled_from(KEYS),
    st.sampled_from(["1", "-3", "1e400", "nan", "inf", "true", '"x"', "[1, 2]", '["a"]', "{a = 1}", "1979-05-27",
                     "0x10", "2147483648", "18446744073709551616", '"paper-set1"', "[[1]]"]))))
def test_toml_text_is_loaded_or_refused(tmp_path_factory, text):
    path: Path = tmp_path_factory.mktemp("fuzz") / "config.toml"
    path.write_text(text, encoding="utf-8")
    accepted_or_refused(SensitivityConfig.from_toml, path)


@FUZZ
@given(name=st.sampled_from(FACTORS), parameters=st.dictionaries(st.text(string.ascii_lowercase + "_", max_size=10),
                                                                   pairs, max_size=3))
def test_factor_bounds_are_narrowed_or_refused(name, parameters):
    factor = accepted_or_refused(get_factor(name).with_bounds, **parameters)
    if factor is not None:
        for parameter in factor.parameters:
            assert parameter.low <= parameter.high


@FUZZ
@given(factors=st.lists(st.sampled_from(FACTORS + ["paper-set1", "nope"]), min_size=1, max_size=4), bounds=bounds,
       switches=st.lists(st.sampled_from(FACTORS), max_size=2), random_order=st.booleans())
def test_factor_spaces_are_built_or_refused(factors, bounds, switches, random_order):
    config = accepted_or_refused(SensitivityConfig, factors=factors, bounds=bounds, switches=switches,
                                 random_order=random_order, layers=["readout"])
    if config is not None:
        accepted_or_refused(build_factor_space, config)


@pytest.mark.parametrize("n", [2 ** 31, 2 ** 62])
def test_a_huge_n_is_refused_with_advice(n):
    with pytest.raises(AugsenseError, match="n = "):
        SensitivityConfig(n=n)
