"""The SQL subset: what it accepts becomes the right plan; what it refuses names the problem."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedlink.errors import QueryError
from fedlink.language.sql import plan_query
from fedlink.plan.aggregate import Between, BoolOp, Comparison, InList, IsNull, Not
from fedlink.plan.catalogue import ColumnInfo, FederationCatalogue, NodeCatalogue, NodeStatus, TableInfo

REGIONS = ("North", "South")
EPISODES = TableInfo(
    name="episodes",
    rows_rounded=100,
    columns=(
        ColumnInfo(name="first_name", kind="identifier"),
        ColumnInfo(name="region", kind="category", categories=REGIONS),
        ColumnInfo(name="outcome", kind="category", categories=("housed", "not_housed")),
        ColumnInfo(name="year", kind="category", categories=(2020, 2021, 2022)),
        ColumnInfo(name="days", kind="numeric", bounds=(1.0, 100.0), bins=(1.0, 10.0, 100.0)),
        ColumnInfo(name="cost", kind="numeric", bounds=(0.0, 5.0)),
    ),
)


def _catalogue(*nodes: tuple[str, TableInfo]) -> FederationCatalogue:
    return FederationCatalogue(
        nodes=tuple(NodeStatus(node=n, live=True, catalogue=NodeCatalogue(node=n, tables=(t,))) for n, t in nodes)
    )


CAT = _catalogue(("a", EPISODES), ("b", EPISODES))


def test_grouped_aggregates_bind_to_declared_domains() -> None:
    plan = plan_query("SELECT region, COUNT(*), SUM(days) AS total, AVG(cost) FROM episodes GROUP BY region", CAT)
    assert plan.nodes == ("a", "b")
    assert [g.categories for g in plan.group_by] == [REGIONS]
    assert [(a.func, a.column, a.label) for a in plan.aggregates] == [
        ("count", None, "count(*)"),
        ("sum", "days", "total"),
        ("avg", "cost", "avg(cost)"),
    ]
    assert plan.aggregates[1].lower == 1.0 and plan.aggregates[1].upper == 100.0
    assert {c.key for c in plan.components} == {"rows:*", "sum:days", "sum:cost", "count:cost"}
    assert plan.cells == 2


def test_histogram_adds_a_bin_dimension() -> None:
    plan = plan_query("SELECT outcome, HISTOGRAM(days) FROM episodes GROUP BY outcome", CAT)
    assert plan.cells == 2 * 2
    assert plan.histogram is not None and plan.histogram.bins == (1.0, 10.0, 100.0)


def test_node_qualified_table_restricts_nodes() -> None:
    plan = plan_query("SELECT COUNT(*) FROM b.episodes WHERE b.episodes.region = 'North'", CAT)
    assert plan.nodes == ("b",)
    assert plan.where == Comparison(column="region", op="=", value="North")


def test_where_clause_becomes_a_typed_predicate() -> None:
    plan = plan_query(
        "SELECT COUNT(*) FROM episodes WHERE (region IN ('North') OR NOT outcome = 'housed') "
        "AND days BETWEEN 2 AND 20 AND cost IS NOT NULL AND year >= 2021 AND 3 < days AND region NOT IN ('South')",
        CAT,
    )
    where = plan.where
    assert isinstance(where, BoolOp)
    found = []

    def walk(p: object) -> None:
        if isinstance(p, BoolOp):
            for a in p.args:
                walk(a)
        else:
            found.append(p)

    walk(where)
    assert Between(column="days", low=2, high=20) in found
    assert IsNull(column="cost", negated=True) in found
    assert Comparison(column="year", op=">=", value=2021) in found
    assert Comparison(column="days", op=">", value=3) in found
    assert InList(column="region", values=("South",), negated=True) in found
    assert any(isinstance(p, Not) for p in found)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC COUNT(*) FROM episodes", "malformed SQL"),
        ("", "empty query"),
        ("SELECT * FROM episodes", "SELECT * would release rows"),
        ("SELECT region FROM episodes", "selected but not grouped"),
        ("SELECT region FROM episodes GROUP BY region", "at least one aggregate"),
        ("SELECT days, COUNT(*) FROM episodes GROUP BY days", "GROUP BY needs a categorical column"),
        ("SELECT COUNT(*) FROM nowhere", "unknown table 'nowhere'"),
        ("SELECT COUNT(*) FROM c.episodes", "unknown table 'episodes' at node 'c'"),
        ("SELECT SUM(colour) FROM episodes", "unknown column 'colour'"),
        ("SELECT COUNT(first_name) FROM episodes", "identifier and can never be queried"),
        ("SELECT COUNT(*) FROM episodes WHERE first_name = 'Ann'", "identifier and can never be queried"),
        ("SELECT COUNT(*) FROM episodes WHERE region = 'Mars'", "not a declared category"),
        ("SELECT COUNT(*) FROM episodes WHERE region > 'North'", "is categorical"),
        ("SELECT COUNT(*) FROM episodes WHERE days = 'many'", "is numeric"),
        ("SELECT SUM(region) FROM episodes", "needs a numeric column"),
        ("SELECT HISTOGRAM(cost) FROM episodes", "declared bins"),
        ("SELECT HISTOGRAM(days), COUNT(*) FROM episodes", "only aggregate"),
        ("SELECT MAX(days) FROM episodes", "unsupported aggregate"),
        ("SELECT COUNT(*) FROM episodes LIMIT 1", "LIMIT is not supported"),
        ("SELECT COUNT(*) FROM episodes ORDER BY 1", "ORDER BY is not supported"),
        ("SELECT DISTINCT region FROM episodes", "DISTINCT"),
        ("SELECT COUNT(*) FROM episodes e JOIN episodes f ON e.region = f.region", "JOIN is not supported"),
        ("DELETE FROM episodes", "only SELECT"),
        ("SELECT COUNT(*) FROM episodes; SELECT COUNT(*) FROM episodes", "exactly one SQL statement"),
        ("SELECT COUNT(*) FROM (SELECT * FROM episodes)", "SUBQUERY is not supported"),
    ],
)
def test_refusals_name_the_problem(sql: str, message: str) -> None:
    with pytest.raises(QueryError) as info:
        plan_query(sql, CAT)
    assert message in info.value.message
    assert "\n" not in info.value.message


def test_nodes_declaring_different_domains_cannot_be_added() -> None:
    other = EPISODES.model_copy(
        update={
            "columns": (
                *EPISODES.columns[:1],
                ColumnInfo(name="region", kind="category", categories=("X",)),
                *EPISODES.columns[2:],
            )
        }
    )
    cat = _catalogue(("a", EPISODES), ("b", other))
    with pytest.raises(QueryError, match="declared differently at nodes 'a' and 'b'"):
        plan_query("SELECT region, COUNT(*) FROM episodes GROUP BY region", cat)
    assert plan_query("SELECT COUNT(*) FROM episodes", cat).nodes == ("a", "b")


@given(st.text(max_size=80))
def test_arbitrary_text_is_a_plan_or_a_query_error(text: str) -> None:
    try:
        plan = plan_query(text, CAT)
    except QueryError as exc:
        assert exc.message and "\n" not in exc.message
    else:
        assert plan.aggregates
