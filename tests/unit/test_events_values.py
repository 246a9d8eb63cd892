"""Value rules: flattening, allowed values, numpy-like conversion, key limits, NaN tagging."""

import math

import pytest

from events import (
    MAX_KEYS,
    TooManyKeys,
    check_value,
    flatten,
    normalize_config,
    normalize_values,
    tag_nonfinite,
    untag_nonfinite,
)


class FakeNumpyScalar:
    """Stands in for numpy.float32 & co: not a float, but ``.item()`` gives one."""

    def __init__(self, value):
        self.value = value

    def item(self):
        return self.value


def test_flatten_nested_dicts_into_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
    assert flatten({"a": {"b": 1}}, sep="/") == {"a/b": 1}


def test_flatten_rejects_collisions():
    with pytest.raises(ValueError, match="'a.b' appears twice"):
        flatten({"a.b": 1, "a": {"b": 2}})


def test_normalize_values_converts_numpy_like_and_tuples():
    out = normalize_values({"loss": FakeNumpyScalar(0.5), "ok": FakeNumpyScalar(True), "xs": (1, FakeNumpyScalar(2))})
    assert out == {"loss": 0.5, "ok": True, "xs": [1, 2]}
    assert type(out["ok"]) is bool and type(out["xs"]) is list


def test_normalize_values_keeps_types_apart():
    out = normalize_values({"b": True, "i": 1, "f": 1.0, "s": "1", "n": None, "nan": math.nan})
    assert [type(v) for v in out.values()] == [bool, int, float, str, type(None), float]


def test_rejects_open_file_naming_key_and_type(tmp_path):
    with open(tmp_path / "f.txt", "w") as f, pytest.raises(ValueError) as info:
        normalize_values({"train": {"log": f}})
    assert "'train.log'" in str(info.value) and "TextIOWrapper" in str(info.value)


@pytest.mark.parametrize("value", [object(), {1, 2}, [[1]], [{"a": 1}], 2**63, b"bytes"])
def test_check_value_rejects(value):
    with pytest.raises(ValueError, match="'k'"):
        check_value("k", value)


def test_reserved_and_bad_keys():
    with pytest.raises(ValueError, match=r"'\$f' starts with '\$'"):
        normalize_values({"$f": 1})
    with pytest.raises(ValueError, match="keys need 1 to 256"):
        normalize_values({"k" * 257: 1})
    with pytest.raises(ValueError, match="keys must be strings"):
        normalize_values({1: 1})


def test_too_many_keys():
    with pytest.raises(TooManyKeys) as info:
        normalize_values({f"k{i}": i for i in range(MAX_KEYS + 1)})
    assert info.value.reason == "too_many_keys"


def test_config_stays_nested_and_checks_deep_keys():
    cfg = {"opt": {"lr": FakeNumpyScalar(0.1), "betas": (0.9, 0.99)}, "layers": [{"n": 1}]}
    assert normalize_config(cfg) == {"opt": {"lr": 0.1, "betas": [0.9, 0.99]}, "layers": [{"n": 1}]}
    with pytest.raises(ValueError, match=r"'\$x'"):
        normalize_config({"a": {"$x": 1}})


def test_tagging_round_trip_and_fast_path():
    data = {"a": [1.0, math.nan, {"b": math.inf}], "c": -math.inf, "d": "x"}
    tagged = tag_nonfinite(data)
    assert tagged == {"a": [1.0, {"$f": "NaN"}, {"b": {"$f": "Infinity"}}], "c": {"$f": "-Infinity"}, "d": "x"}
    back = untag_nonfinite(tagged)
    assert math.isnan(back["a"][1]) and back["a"][2]["b"] == math.inf and back["c"] == -math.inf
    clean = {"a": [1, 2.5, {"b": None}]}
    assert tag_nonfinite(clean) is clean and untag_nonfinite(clean) is clean
    assert untag_nonfinite({"$f": "bogus"}) == {"$f": "bogus"}  # not a tag: left for validation to reject
