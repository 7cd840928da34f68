"""LINK queries: what the planner accepts becomes the right chain; what it refuses names the problem.
The encrypted chain itself is tested in ``test_chain.py``."""

from __future__ import annotations

import pytest

from fedlink.errors import BadInput, QueryError
from fedlink.language.linked_query import is_linked, plan_linked
from fedlink.pets.chain import MAX_MULTIPLICATIONS, ChainParams
from fedlink.plan.aggregate import Between, BoolOp, Comparison
from fedlink.plan.catalogue import ColumnInfo, FederationCatalogue, NodeCatalogue, NodeStatus, TableInfo
from fedlink.plan.linked_query import LinkedPlan

IDS = (ColumnInfo(name="record_id", kind="identifier"), ColumnInfo(name="first_name", kind="identifier"))
PUPILS = TableInfo(
    name="pupils",
    rows_rounded=100,
    columns=(
        *IDS,
        ColumnInfo(name="region", kind="category", categories=("North", "South", "East")),
        ColumnInfo(name="fsm", kind="category", categories=(0, 1)),
        ColumnInfo(name="year", kind="category", categories=(2014, 2015, 2016)),
        ColumnInfo(name="score", kind="numeric", bounds=(0.0, 90.0), bins=(0.0, 30.0, 60.0, 90.0)),
    ),
)
CLAIMS = TableInfo(
    name="claims",
    rows_rounded=100,
    columns=(
        *IDS,
        ColumnInfo(name="region", kind="category", categories=("North", "South", "East")),
        ColumnInfo(name="flag", kind="category", categories=(0, 1)),
    ),
)
EPISODES = TableInfo(
    name="episodes",
    rows_rounded=100,
    columns=(*IDS, ColumnInfo(name="outcome", kind="category", categories=("housed", "not_housed"))),
)


def _params(plan: LinkedPlan) -> ChainParams:
    return ChainParams.for_chain(plan.multiplications, sums=plan.sums)


def _catalogue(*nodes: tuple[str, tuple[TableInfo, ...]]) -> FederationCatalogue:
    return FederationCatalogue(
        nodes=tuple(NodeStatus(node=n, live=True, catalogue=NodeCatalogue(node=n, tables=t)) for n, t in nodes)
    )


CAT = _catalogue(("dfe", (PUPILS,)), ("dwp", (CLAIMS,)), ("north", (EPISODES,)), ("south", (EPISODES,)))


def test_link_binds_conditions_to_their_tables_and_orders_the_chain() -> None:
    plan = plan_linked(
        "SELECT dfe.pupils.region, COUNT(*) AS n FROM dfe.pupils LINK dwp.claims "
        "WHERE dfe.pupils.fsm = 1 AND claims.flag = 1 AND pupils.year BETWEEN 2014 AND 2015 "
        "GROUP BY dfe.pupils.region",
        CAT,
    )
    assert [s.table for s in plan.sources] == ["pupils", "claims"]
    pupils, claims = plan.sources
    assert isinstance(pupils.where, BoolOp) and pupils.where.args == (
        Comparison(column="fsm", op="=", value=1),
        Between(column="year", low=2014, high=2015),
    )
    assert claims.where == Comparison(column="flag", op="=", value=1)
    assert plan.group_node == "dfe" and plan.nodes == ("dwp", "dfe"), "the group-by node runs last"
    assert plan.cells == 3 and plan.multiplications == 1 and _params(plan) == ChainParams(8192, (60, 60, 58), 26)
    assert plan.noise_sources == 1 and plan.datasets() == ["dfe.pupils", "dwp.claims"]


def test_a_table_several_nodes_hold_goes_first_as_a_union() -> None:
    plan = plan_linked("SELECT claims.region, COUNT(*) FROM episodes LINK dwp.claims GROUP BY claims.region", CAT)
    assert plan.union == ("north", "south") and plan.nodes == ("north", "south", "dwp")
    assert plan.table == "episodes LINK dwp.claims"


def test_value_aggregates_name_their_node_and_table() -> None:
    plan = plan_linked("SELECT AVG(score) AS s, COUNT(score) FROM pupils LINK claims", CAT)
    assert [a.column for a in plan.aggregates] == ["dfe.pupils.score", "dfe.pupils.score"]
    assert [c.key for c in plan.components] == ["rows:*", "sum:dfe.pupils.score", "count:dfe.pupils.score"]
    hist = plan_linked("SELECT HISTOGRAM(pupils.score) FROM pupils LINK claims", CAT)
    assert hist.cells == 3 and [c.kind for c in hist.components] == ["histogram"]


def test_link_is_found_as_a_keyword_only() -> None:
    assert is_linked("SELECT COUNT(*) FROM a LINK b")
    assert is_linked("select count(*) from a link b")
    assert not is_linked("SELECT COUNT(*) FROM episodes WHERE outcome = 'LINK'")
    assert not is_linked("SELECT COUNT(*) FROM episodes")


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT COUNT(*) FROM pupils LINK nowhere", "unknown table 'nowhere'"),
        ("SELECT COUNT(*) FROM pupils JOIN claims ON pupils.region = claims.region", "JOIN ... ON is not supported"),
        ("SELECT COUNT(*) FROM pupils LINK claims WHERE pupils.fsm = 1 OR claims.flag = 1", "exactly one table"),
        ("SELECT COUNT(*) FROM pupils LINK claims GROUP BY region", "ambiguous; write pupils.region or claims.region"),
        ("SELECT pupils.region, COUNT(*) FROM pupils LINK claims", "selected but not grouped"),
        ("SELECT first_name, COUNT(*) FROM pupils LINK claims GROUP BY first_name", "ambiguous"),
        ("SELECT pupils.first_name, COUNT(*) FROM pupils LINK claims GROUP BY pupils.first_name", "identifier"),
        ("SELECT * FROM pupils LINK claims", "SELECT * would release rows"),
        ("SELECT COUNT(*) FROM pupils LINK pupils", "appears twice"),
        ("SELECT COUNT(*) FROM pupils", None),
        ("SELECT outcome, COUNT(*) FROM episodes LINK claims GROUP BY outcome", "several nodes hold"),
        ("SELECT COUNT(*) FROM claims LINK episodes", "put it first"),
        (
            "SELECT pupils.region, COUNT(*) FROM pupils LINK claims GROUP BY pupils.region, claims.flag",
            "must all come from one table",
        ),
        ("SELECT SUM(claims.flag) FROM pupils LINK claims", "SUM needs a numeric column"),
    ],
)
def test_bad_linked_queries_are_refused_with_a_reason(sql: str, message: str | None) -> None:
    if message is None:
        with pytest.raises(QueryError, match="at least two tables"):
            plan_linked(sql, CAT)
        return
    with pytest.raises(QueryError, match=message.replace("(", r"\(").replace("*", r"\*")):
        plan_linked(sql, CAT)


def test_a_chain_too_long_for_the_parameters_is_refused() -> None:
    many = _catalogue(*((f"n{i}", (TableInfo(name=f"t{i}", rows_rounded=100, columns=IDS),)) for i in range(8)))
    sql = "SELECT COUNT(*) FROM " + " LINK ".join(f"t{i}" for i in range(8))
    with pytest.raises(BadInput, match="7 encrypted multiplications, more than 6"):
        plan_linked(sql, many, MAX_MULTIPLICATIONS)  # refused by the planner, given the PET's limit
    with pytest.raises(BadInput, match="7 encrypted multiplications, more than 6"):
        _params(plan_linked(sql, many))  # and by the PET itself
    shorter = plan_linked(" LINK ".join(sql.split(" LINK ")[:7]), many, MAX_MULTIPLICATIONS)
    assert _params(shorter) == ChainParams(16384, (60,) * 6, 26)


def test_sums_get_room_for_fixed_point_values_and_counts_the_cheapest_ring() -> None:
    counts = _params(plan_linked("SELECT COUNT(*) FROM dfe.pupils LINK dwp.claims", CAT))
    sums = _params(plan_linked("SELECT AVG(dfe.pupils.score) AS s FROM dfe.pupils LINK dwp.claims", CAT))
    assert (counts.plain_bits, sums.plain_bits) == (26, 30)
    assert counts.coeff_bits == sums.coeff_bits == (60, 60, 58), "one product: two 60-bit primes of data"
