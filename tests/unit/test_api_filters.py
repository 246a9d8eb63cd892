"""api.filters: W&B-style filter trees -> SQL with bound parameters, without a database."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.filters import (
    FilterError,
    Params,
    compile_filter,
    decode_cursor,
    encode_cursor,
    parse_field,
    parse_filters,
    parse_order,
)

MALICIOUS = "x'; drop table runs; --"


def compile_(filters, *initial):
    params = Params(*initial)
    return compile_filter(filters, params), params.values


def placeholders(sql: str) -> set[int]:
    return {int(n) for n in re.findall(r"\$(\d+)", sql)}


def test_implicit_equality_on_a_column_is_a_bound_parameter() -> None:
    sql, params = compile_({"state": "finished"})
    assert sql == "(state = $1::text)"
    assert params == ["finished"]


def test_placeholders_continue_after_the_statement_s_own_values() -> None:
    sql, params = compile_({"display_name": "a"}, "entity", "project")
    assert sql == "(name = $3::text)"
    assert params == ["entity", "project", "a"]


def test_every_operator_on_columns() -> None:
    for op, sql_op in [("$lt", "<"), ("$lte", "<="), ("$gt", ">"), ("$gte", ">=")]:
        sql, params = compile_({"group": {op: "g"}})
        assert sql == f"(run_group {sql_op} $1::text)" and params == ["g"]
    assert compile_({"state": {"$ne": "running"}}) == ("(state IS DISTINCT FROM $1::text)", ["running"])
    assert compile_({"state": {"$in": ["a", "b"]}}) == ("(state = ANY($1::text[]))", [["a", "b"]])
    sql, params = compile_({"job_type": {"$nin": ["eval"]}})
    assert "NOT" in sql and params == [["eval"]]
    assert compile_({"display_name": {"$regex": "^swift"}}) == ("(name ~ $1::text)", ["^swift"])
    assert compile_({"group": None}) == ("(run_group IS NULL)", [])


def test_created_at_is_parsed_to_a_time() -> None:
    sql, params = compile_({"created_at": {"$gt": "2026-01-02T03:04:05Z"}})
    assert sql == "(created_at > $1::timestamptz)"
    assert params == [datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)]
    with pytest.raises(FilterError, match="ISO 8601"):
        compile_({"created_at": {"$gt": "yesterday"}})


def test_config_paths_are_split_into_a_bound_text_array() -> None:
    sql, params = compile_({"config.opt.name": "adam"})
    assert sql == "((config #> $1::text[]) = $2::jsonb)"
    assert params == [["opt", "name"], "adam"]


def test_summary_keys_are_one_key_even_with_dots() -> None:
    sql, params = compile_({"summary_metrics.val.loss": {"$lt": 0.5}})
    assert sql == "(jsonb_typeof((summary -> $1::text)) = 'number' AND (summary -> $1::text) < $2::jsonb)"
    assert params == ["val.loss", 0.5]


def test_order_comparisons_on_json_require_the_same_json_type() -> None:
    sql, _ = compile_({"config.lr": {"$gte": 1}})
    assert "jsonb_typeof" in sql and "'number'" in sql
    sql, _ = compile_({"config.name": {"$lt": "m"}})
    assert "'string'" in sql


def test_json_in_nin_regex_exists() -> None:
    sql, params = compile_({"config.lr": {"$in": [0.1, 0.01]}})
    assert "jsonb_array_elements" in sql and params[-1] == [0.1, 0.01]
    sql, _ = compile_({"config.lr": {"$nin": [0.1]}})
    assert sql.startswith("(NOT EXISTS")
    sql, params = compile_({"config.name": {"$regex": "^ad"}})
    assert "'string'" in sql and params[-1] == "^ad"
    sql, _ = compile_({"config.lr": {"$exists": False}})
    assert "IS NULL" in sql


def test_tags() -> None:
    assert compile_({"tags": "x"}) == ("($1::text = ANY(tags))", ["x"])
    assert compile_({"tags": {"$in": ["a", "b"]}}) == ("(tags && $1::text[])", [["a", "b"]])
    assert compile_({"tags": {"$nin": ["a"]}}) == ("(NOT (tags && $1::text[]))", [["a"]])
    assert compile_({"tags": {"$ne": "x"}}) == ("(NOT ($1::text = ANY(tags)))", ["x"])
    with pytest.raises(FilterError):
        compile_({"tags": {"$lt": "x"}})


def test_and_or_combination() -> None:
    sql, params = compile_({"$or": [{"$and": [{"state": "finished"}, {"config.lr": {"$lt": 0.1}}]},
                                    {"tags": "keep"}]})
    assert sql.startswith("((") and " OR " in sql and " AND " in sql
    assert placeholders(sql) == set(range(1, len(params) + 1))
    assert compile_({"$and": []}) == ("TRUE", [])
    assert compile_({"$or": []}) == ("FALSE", [])


@pytest.mark.parametrize("bad", [
    {MALICIOUS: 1}, {"state; drop table runs": "x"}, {"$where": "1"}, {"state": {"$foo": 1}},
    {"state": {"$in": "notalist"}}, {"state": 3}, {"config.": 1}, {"config..x": 1}, {"$and": {}},
    {"config.x": {"$regex": 3}}, {"config.x": {"$lt": None}}, {"tags": 3}, {"config.x": {"$y": 1, "z": 2}},
    {"config.x": {"a": {"$f": "NaN", "b": 1}}}, {"state": {"$exists": "yes"}}, [],
])
def test_bad_filters_are_rejected(bad) -> None:
    with pytest.raises(FilterError):
        compile_(bad)


def test_a_malicious_config_key_stays_a_parameter() -> None:
    sql, params = compile_({f"config.{MALICIOUS}": 1})
    assert "drop" not in sql and params[0] == MALICIOUS


def test_parse_filters() -> None:
    assert parse_filters(None) is None and parse_filters("  ") is None
    assert parse_filters('{"summary_metrics.loss": {"$f": "NaN"}}')["summary_metrics.loss"] != 0
    for bad in ["{", "[1]", '"x"']:
        with pytest.raises(FilterError):
            parse_filters(bad)


def test_order_and_cursor_round_trip() -> None:
    sort = parse_order("-created_at")
    assert sort.descending and sort.field.column == "created_at"
    assert not parse_order("+config.lr").descending and not parse_order("config.lr").descending
    t = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert decode_cursor(sort, encode_cursor(sort, t, 42)) == (t, 42)
    jsort = parse_order("summary_metrics.loss")
    assert decode_cursor(jsort, encode_cursor(jsort, math.nan, 7)) == ('{"$f":"NaN"}', 7)
    assert decode_cursor(jsort, encode_cursor(jsort, None, 7)) == ("null", 7)
    with pytest.raises(FilterError, match="different order"):
        decode_cursor(parse_order("created_at"), encode_cursor(sort, t, 1))
    for bad in ["!!!", "e30", "bm90IGpzb24"]:
        with pytest.raises(FilterError):
            decode_cursor(sort, bad)
    for bad_order in [MALICIOUS, f"-{MALICIOUS}", "tags", "-pk", ""]:
        if bad_order == "":
            assert parse_order(bad_order).field.name == "created_at"
            continue
        with pytest.raises(FilterError):
            parse_order(bad_order)


def test_sort_by_a_not_null_column_is_the_bare_column() -> None:
    # A coalesce() around created_at kept the (entity, project, created_at, pk) index from serving the order.
    assert parse_order("-created_at").expr(Params()) == "created_at"
    assert parse_order("+name").expr(Params()) == "coalesce(name, '')"


def test_sort_expression_of_a_malicious_config_key_is_a_parameter() -> None:
    params = Params()
    expr = parse_order(f"-config.{MALICIOUS}").expr(params)
    assert expr == "coalesce((config -> $1::text), 'null'::jsonb)" and params.values == [MALICIOUS]


def test_parse_field_allow_list() -> None:
    assert parse_field("display_name").column == "name"
    assert parse_field("config.a.b").path == ("a", "b")
    with pytest.raises(FilterError):
        parse_field("pk")


# -- property: any filter tree gives SQL whose placeholders are exactly its parameters ----------

names = st.sampled_from(["state", "display_name", "group", "job_type", "tags", "created_at", "config.lr",
                         "config.opt.name", "summary_metrics.loss", f"config.{MALICIOUS}",
                         f"summary_metrics.{MALICIOUS}", MALICIOUS, "$bad", "config.", "pk"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(),
                    st.text(max_size=12), st.just(MALICIOUS), st.just("2026-01-01T00:00:00Z"))
operands = st.one_of(scalars, st.lists(scalars, max_size=3))
ops = st.sampled_from(["$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$in", "$nin", "$regex", "$exists", "$bogus"])
conditions = st.one_of(operands, st.dictionaries(ops, operands, min_size=1, max_size=2))
leaves = st.dictionaries(names, conditions, min_size=1, max_size=3)
def _compound(sub: st.SearchStrategy) -> st.SearchStrategy:
    # A named function, not a lambda: hypothesis reads a lambda's source to check it recurses.
    return st.one_of(st.fixed_dictionaries({"$and": st.lists(sub, max_size=3)}),
                     st.fixed_dictionaries({"$or": st.lists(sub, max_size=3)}),
                     st.dictionaries(names, conditions, max_size=2).flatmap(
                         lambda d: st.fixed_dictionaries({"$or": st.lists(sub, max_size=2)}).map(
                             lambda o: {**d, **o})))


trees = st.recursive(leaves, _compound, max_leaves=8)


@settings(max_examples=400, deadline=None)
@given(trees)
def test_random_filter_trees_compile_to_sql_whose_placeholders_match_the_parameters(tree) -> None:
    params = Params("entity", "project")
    try:
        sql = compile_filter(tree, params)
    except FilterError:
        return  # rejected: a 400
    n = len(params.values)
    assert placeholders(sql) <= set(range(1, n + 1))
    assert placeholders(sql) | {1, 2} == set(range(1, n + 1))  # every value is used
    assert MALICIOUS not in sql and "drop table" not in sql.lower()
    assert sql.count("(") == sql.count(")")


def test_anded_column_conditions_come_before_jsonb_lookups() -> None:
    sql, params = compile_({"$and": [{"config.lr": {"$gt": 0.001}}, {"state": "finished"}]})
    assert sql == ("((state = $3::text) AND "
                   "(jsonb_typeof((config -> $1::text)) = 'number' AND (config -> $1::text) > $2::jsonb))")
    assert params == ["lr", 0.001, "finished"]
    sql, _ = compile_({"summary_metrics.loss": 1, "tags": "x", "$or": [{"state": "a"}, {"config.b": 2}]})
    assert sql.startswith("(($3::text = ANY(tags)) AND ((summary") and sql.index("summary") < sql.index("OR")
