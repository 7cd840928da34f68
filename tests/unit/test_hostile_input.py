"""Hostile input to the parsers and the privacy-loss checks (property tests with hypothesis): every
query, formula and loss is either accepted as something that crosses the wire intact (its plan
round-trips through JSON with finite numbers) or refused with one line (a QueryError or BadInput).
Never a RecursionError, an overflow, a serialisation error or a node-side validation failure."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlink.coordinator.floor import check_informative
from fedlink.errors import BadInput, QueryError
from fedlink.language.linked_query import plan_linked
from fedlink.language.model_formula import plan_model
from fedlink.language.sql import MAX_QUERY_CHARS, plan_query
from fedlink.plan.aggregate import AggregatePlan
from fedlink.plan.catalogue import ColumnInfo, FederationCatalogue, NodeCatalogue, NodeStatus, TableInfo
from fedlink.plan.linked_query import LinkedPlan
from fedlink.plan.model import ModelPlan
from fedlink.protocol.tasks import PrivacyLoss, QueryRequest, declared_loss

COLUMNS = (
    ColumnInfo(name="first_name", kind="identifier"),
    ColumnInfo(name="region", kind="category", categories=("North", "South")),
    ColumnInfo(name="year", kind="category", categories=(2020, 2021, 2022)),
    ColumnInfo(name="days", kind="numeric", bounds=(1.0, 100.0), bins=(1.0, 10.0, 100.0)),
    ColumnInfo(name="flag", kind="category", categories=(0, 1)),
)
EPISODES = TableInfo(name="episodes", rows_rounded=1000, columns=COLUMNS)
CLAIMS = TableInfo(name="claims", rows_rounded=400, columns=COLUMNS)
CAT = FederationCatalogue(
    nodes=(
        NodeStatus(node="a", live=True, catalogue=NodeCatalogue(node="a", tables=(EPISODES,))),
        NodeStatus(node="b", live=True, catalogue=NodeCatalogue(node="b", tables=(EPISODES,))),
        NodeStatus(node="c", live=True, catalogue=NodeCatalogue(node="c", tables=(CLAIMS,))),
    )
)

# Literals that broke the parsers or the wire: overflowing floats and integers, text with brackets,
# quotes, surrogates (bytes that were not UTF-8 on the command line) and control characters.
NUMBERS = st.sampled_from(
    ["2021", "-1", "0", "2021.5", "1e400", "-1e309", "1e308", "99999999999999999999999999", "9223372036854775807"]
)
STRINGS = st.sampled_from(["'North'", "'[/x]'", "'[[nodes]]'", "'a''b'", "'\udcff'", "'\x00'", "'é'", "''"])
LITERALS = st.one_of(NUMBERS, STRINGS)
COLUMN = st.sampled_from(["region", "year", "days", "flag", "first_name", "nope", '"[/x]"', "episodes.year"])
COMPARISON = st.builds(
    lambda c, op, v: f"{c} {op} {v}", COLUMN, st.sampled_from(["=", "!=", "<", ">=", "IS NOT", "IN"]), LITERALS
).map(lambda s: s.replace(" IN ", " IN (") + ")" if " IN " in s else s)
CONDITION = st.recursive(
    COMPARISON,
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"{a} AND {b}", inner, inner),
        st.builds(lambda a, b: f"({a} OR {b})", inner, inner),
        inner.map(lambda a: f"NOT {a}"),
    ),
    max_leaves=6,
)


@st.composite
def deep(draw: st.DrawFn, inner: st.SearchStrategy[str]) -> str:
    """A condition nested or chained hundreds to thousands deep (what recursion cannot read)."""
    condition = draw(inner)
    depth = draw(st.integers(0, 3000))
    shape = draw(st.sampled_from(["parens", "nots", "ors", "ands"]))
    if shape == "parens":
        return "(" * depth + condition + ")" * depth
    if shape == "nots":
        return "NOT " * depth + condition
    return f" {shape[:-1].upper()} ".join([condition] * max(depth // 4, 1))


SELECT = st.lists(
    st.sampled_from(["COUNT(*)", "COUNT(*) AS n", "SUM(days) AS n", "AVG(days)", "region", "COUNT(*) AS region"]),
    min_size=1,
    max_size=3,
).map(", ".join)
WHERE = st.one_of(st.just(""), CONDITION.map(lambda c: f" WHERE {c}"), deep(CONDITION).map(lambda c: f" WHERE {c}"))
GROUP = st.sampled_from(["", " GROUP BY region", " GROUP BY region, year"])


def _round_trips(plan: AggregatePlan | LinkedPlan | ModelPlan) -> None:
    """The plan crosses the wire intact: JSON without NaN or infinities, parsed back equal."""
    text = plan.model_dump_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-finite number {c} in {text[:200]}"))
    assert type(plan).model_validate_json(text) == plan


def _refused_in_one_line(exc: QueryError) -> None:
    assert exc.message and "\n" not in exc.message and len(exc.message) < 500


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(select=SELECT, table=st.sampled_from(["episodes", "a.episodes", '"[/x]"']), where=WHERE, group=GROUP)
def test_hostile_sql_is_a_plan_or_a_one_line_query_error(select: str, table: str, where: str, group: str) -> None:
    sql = f"SELECT {select} FROM {table}{where}{group}"
    try:
        plan = plan_query(sql, CAT)
    except QueryError as exc:
        _refused_in_one_line(exc)
    else:
        _round_trips(plan)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.one_of(CONDITION, deep(CONDITION)), link=st.sampled_from(["c.claims", "claims", "c.claims, a.episodes"])
)
def test_hostile_linked_sql_is_a_plan_or_a_one_line_query_error(where: str, link: str) -> None:
    qualified = where.replace("region", "claims.region").replace("year", "claims.year")
    sql = f"SELECT COUNT(*) AS n FROM a.episodes LINK {link} WHERE episodes.flag = 1 AND {qualified}"
    try:
        plan = plan_linked(sql, CAT)
    except QueryError as exc:
        _refused_in_one_line(exc)
    else:
        _round_trips(plan)


TERM = st.one_of(
    COLUMN,
    st.builds(lambda c, v: f"{c} = {v}", COLUMN, LITERALS),
    st.builds(lambda t, n: "(" * n + t + ")" * n, COLUMN, st.integers(0, 400)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(response=TERM, terms=st.lists(TERM, min_size=0, max_size=25), family=st.sampled_from(["logistic", "gaussian"]))
def test_hostile_formulas_are_a_plan_or_a_one_line_query_error(response: str, terms: list[str], family: str) -> None:
    formula = f"{response} ~ {' + '.join(terms)}"
    try:
        plan = plan_model(formula, "episodes", CAT, family)  # type: ignore[arg-type]
    except QueryError as exc:
        _refused_in_one_line(exc)
    else:
        _round_trips(plan)


def test_text_over_the_limit_is_refused_before_it_is_parsed() -> None:
    long = "SELECT COUNT(*) FROM episodes WHERE " + " OR ".join(["year = 2021"] * (MAX_QUERY_CHARS // 10))
    for call in (
        lambda: plan_query(long, CAT),
        lambda: plan_linked(long.replace("FROM episodes", "FROM a.episodes LINK c.claims"), CAT),
        lambda: plan_model("flag = 1 ~ " + " + ".join(["days"] * MAX_QUERY_CHARS), "episodes", CAT),
        lambda: QueryRequest(sql=long, project="p"),
    ):
        with pytest.raises(QueryError, match="more than the limit of 16,384"):
            call()


FLOATS = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1e300, float("nan"), float("inf")]),
)


@given(epsilon=FLOATS, rho=FLOATS)
def test_a_declared_loss_is_positive_and_finite_or_refused(epsilon: float | None, rho: float | None) -> None:
    try:
        loss = declared_loss(epsilon, rho)
    except BadInput as exc:
        assert exc.message.startswith(("`epsilon`", "`rho`", "give `epsilon`"))
    else:
        assert loss.is_finite and (loss.is_zero or (loss.epsilon > 0) != (loss.rho > 0))


PLANS = [
    plan_query("SELECT region, COUNT(*) AS n, AVG(days) AS d FROM episodes GROUP BY region", CAT),
    plan_linked("SELECT COUNT(*) AS n FROM a.episodes LINK c.claims", CAT),
    plan_model("flag = 1 ~ days + year", "episodes", CAT),
]


@pytest.mark.parametrize("plan", PLANS, ids=["horizontal", "linked", "model"])
@given(exponent=st.floats(min_value=-320, max_value=3), measure=st.sampled_from(["epsilon", "rho"]))
def test_the_floor_refuses_exactly_the_losses_that_drown_every_count(
    plan: AggregatePlan | LinkedPlan | ModelPlan, exponent: float, measure: str
) -> None:
    """Under the floor, the refusal names a loss that passes; at or above it, the query passes. The
    floor is where one node's 95% half-width at sensitivity 1 reaches the catalogue's row bound."""
    if isinstance(plan, ModelPlan) and measure == "epsilon":
        return  # models are zCDP only (refused elsewhere)
    value = 10.0**exponent
    if value == 0:
        return
    loss = PrivacyLoss(**{measure: value})
    bound = (1000 + 50) * 2 if not isinstance(plan, LinkedPlan) else 400 + 50  # rows, rounded up, per table
    parts = plan.iterations if isinstance(plan, ModelPlan) else len(plan.components)
    sensitivity = plan.sensitivity(1) if isinstance(plan, ModelPlan) else 1.0
    if measure == "epsilon":
        half = sensitivity * parts / value * math.log(20)
    else:
        half = sensitivity * math.sqrt(parts / (2 * value)) * 1.959964
    try:
        check_informative(loss, plan, CAT)
    except BadInput as exc:
        assert half >= bound * (1 - 1e-9), (half, bound)
        least = float(exc.message.rsplit(f"declare {measure} ", 1)[1].split()[0])
        check_informative(PrivacyLoss(**{measure: least}), plan, CAT)
    else:
        assert half < bound * (1 + 1e-9), (half, bound)
