"""What registers record of an analyst's text: query text without comments or hints, bounded in length,
and refused requests with their literals masked (in the text and in the reason)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlink.errors import AccessDenied, BudgetExhausted, Fault, QueryError
from fedlink.governance import Register
from fedlink.language.linked_query import plan_linked
from fedlink.language.model_formula import plan_model
from fedlink.language.sql import plan_query
from fedlink.plan.catalogue import ColumnInfo, FederationCatalogue, NodeCatalogue, NodeStatus, TableInfo
from fedlink.transparency.records import (
    MAX_RECORDED_QUERY,
    bounded,
    refusal_fields,
    refusals_recorded,
    without_comments,
)

NAME = "Aisha Khan"


def test_comments_and_hints_go_literals_and_quoted_names_stay() -> None:
    sql = (
        f"SELECT region, /*+ {NAME} */ COUNT(*) FROM pupils -- {NAME}\n"
        f"WHERE note = 'it''s -- kept' /* {NAME}\n on two lines */ AND \"odd\"\"name\" = 1 GROUP BY region"
    )
    assert without_comments(sql) == (
        "SELECT region, COUNT(*) FROM pupils WHERE note = 'it''s -- kept' AND \"odd\"\"name\" = 1 GROUP BY region"
    )
    assert without_comments("SELECT/* x */COUNT(*)FROM t") == "SELECT COUNT(*)FROM t"
    assert without_comments("SELECT a FROM t GROUP\n\t BY a") == "SELECT a FROM t GROUP BY a"
    assert without_comments("SELECT a FROM t WHERE b = 'two\n  lines'") == "SELECT a FROM t WHERE b = 'two\n  lines'"


@given(
    # any text but the block delimiters' characters (a name, a newline, quotes, "--")
    comment=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="*/"), max_size=40),
    line=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=40),
    position=st.integers(min_value=0, max_value=5),
)
@settings(max_examples=300)
def test_no_comment_survives_wherever_it_stands(comment: str, line: str, position: int) -> None:
    words = ["SELECT", "COUNT(*)", "FROM", "t", "GROUP BY", "region"]
    commented = [*words[:position], f"/*{comment}*/", *words[position:]]
    sql = " ".join(commented[:-1]) + f" --{line}\n" + commented[-1]
    assert without_comments(sql) == " ".join(words)


def test_recorded_text_is_bounded_by_length_and_hash() -> None:
    long = "SELECT COUNT(*) FROM t WHERE x IN (" + ", ".join(["1"] * 2000) + ")"
    recorded = bounded(without_comments(long + " -- " + NAME))
    digest = hashlib.sha256(long.encode()).hexdigest()
    assert (
        recorded == f"[not recorded: {len(long)} characters, over the limit of {MAX_RECORDED_QUERY}; sha256 {digest}]"
    )
    assert bounded("SELECT 1") == "SELECT 1"
    with pytest.raises(QueryError, match="cannot be read as SQL"):
        without_comments("SELECT 'open")


def test_refused_text_that_cannot_be_read_or_is_huge_is_recorded_by_length() -> None:
    def refused(text: str, error: QueryError) -> dict[str, object]:
        return refusal_fields(
            query_id="q", analyst="a", request="query", project="p", text=text, pet="dp", status="refused", error=error
        )

    unreadable = f"SELECT COUNT(*) FROM people /* {NAME}"
    recorded = refused(unreadable, QueryError(f"malformed SQL (Error tokenizing '{unreadable[-20:]}')"))
    assert recorded["query"] == f"[not recorded: {len(unreadable)} characters that cannot be read as SQL]"
    assert recorded["reason"] == "malformed SQL (Error tokenizing '?')"
    huge = "SELECT COUNT(*) FROM people WHERE region IN (" + ", ".join([f"'{NAME}'"] * 10_000) + ")"
    recorded = refused(huge, QueryError(f"'{NAME}' is not a declared category of 'region'"))
    assert recorded["query"] == f"[not recorded: {len(huge)} characters too long to read]"
    assert recorded["reason"] == "'?' is not a declared category of '?'"


def catalogue() -> FederationCatalogue:
    columns = (
        ColumnInfo(name="region", kind="category", categories=("North", "South")),
        ColumnInfo(name="y", kind="category", categories=(0, 1)),
        ColumnInfo(name="x", kind="numeric", bounds=(0.0, 1.0)),
        ColumnInfo(name="last_name", kind="identifier"),
    )
    statuses = tuple(
        NodeStatus(
            node=node,
            live=True,
            catalogue=NodeCatalogue(node=node, tables=(TableInfo(name=table, rows_rounded=1000, columns=columns),)),
        )
        for node, table in (("a", "people"), ("b", "people"), ("c", "visits"))
    )
    return FederationCatalogue(nodes=statuses)


def test_plans_carry_their_text_without_comments() -> None:
    plan = plan_query(f"SELECT region, COUNT(*) -- {NAME}\nFROM people /* {NAME} */ GROUP BY region", catalogue())
    assert plan.sql == "SELECT region, COUNT(*) FROM people GROUP BY region"
    model = plan_model(f"y = 1 ~ x -- {NAME}\n+ region = 'North'", "people", catalogue(), "logistic")
    assert model.sql == "MODEL logistic y = 1 ~ x + region = 'North' ON people"


def test_a_refused_query_is_recorded_with_its_literals_masked() -> None:
    sql = f"SELECT COUNT(*) FROM people WHERE last_name = '{NAME}' AND x > 0.5 -- looking for {NAME}"
    with pytest.raises(QueryError) as refused:
        plan_query(sql, catalogue())
    assert "identifier" in refused.value.message
    recorded = refusal_fields(
        query_id="q1",
        analyst="alice",
        request="query",
        project="p",
        text=sql,
        pet="dp",
        status="refused",
        error=refused.value,
    )
    assert recorded["query"] == "SELECT COUNT(*) FROM people WHERE last_name = ? AND x > ?"
    assert recorded["reason"] == refused.value.message
    assert (recorded["analyst"], recorded["project"], recorded["status"], recorded["privacy_loss"]) == (
        "alice",
        "p",
        "refused",
        {},
    )
    assert NAME not in str(recorded)


def test_a_reason_quoting_the_analyst_s_text_is_masked() -> None:
    sql = f"SELECT COUNT(*) FROM people WHERE region = '{NAME}' /* {NAME} */"
    with pytest.raises(QueryError) as refused:
        plan_query(sql, catalogue())
    assert NAME in refused.value.message  # the analyst sees their own text quoted back...
    recorded = refusal_fields(
        query_id="q1",
        analyst="a",
        request="query",
        project="p",
        text=sql,
        pet="dp",
        status="refused",
        error=refused.value,
    )
    assert NAME not in str(recorded)  # ...the public register does not
    assert recorded["reason"] == "'?' is not a declared category of 'region'; declared: 'North', 'South'"


def test_linked_plans_keep_link_and_lose_comments() -> None:
    columns = (ColumnInfo(name="region", kind="category", categories=("North", "South")),)
    cat = FederationCatalogue(
        nodes=tuple(
            NodeStatus(
                node=n,
                live=True,
                catalogue=NodeCatalogue(node=n, tables=(TableInfo(name=t, rows_rounded=1000, columns=columns),)),
            )
            for n, t in (("a", "left"), ("b", "right"))
        )
    )
    plan = plan_linked(f"SELECT left.region, COUNT(*) FROM left LINK right -- {NAME}\nGROUP BY left.region", cat)
    assert plan.sql == "SELECT left.region, COUNT(*) FROM left LINK right GROUP BY left.region"


def test_refusals_recorded_once_and_only_for_requests(tmp_path: Path) -> None:
    register = Register(tmp_path / "register.jsonl", "coordinator")
    body = f'{{"sql": "SELECT COUNT(*) FROM people -- {NAME}", "project": "p-x", "pet": "dp"}}'.encode()
    with pytest.raises(AccessDenied), refusals_recorded(register, "alice", "query", body):
        raise AccessDenied("analyst 'alice' is not on project 'p-x'")
    (entry,) = register.entries()
    assert entry.kind == "query" and entry.fields["status"] == "refused"
    assert entry.fields["reason"] == "analyst 'alice' is not on project 'p-x'"
    assert entry.fields["query"] == "SELECT COUNT(*) FROM people" and entry.fields["project"] == "p-x"

    # a call that recorded itself (it reached the nodes) is not recorded twice
    with pytest.raises(BudgetExhausted), refusals_recorded(register, "alice", "query", body):
        register.append("query", {"query_id": "q2", "status": "refused"})
        raise BudgetExhausted("node 'a' refuses: budget exhausted")
    assert [e.fields["query_id"] for e in register.entries()[1:]] == ["q2"]

    # faults are recorded as failed; malformed bodies still get an entry; other calls get none
    with pytest.raises(Fault), refusals_recorded(register, "bob", "model", b"not json"):
        raise Fault("node 'a' is not connected")
    last = register.entries()[-1]
    assert (last.fields["status"], last.fields["analyst"], last.fields["request"]) == ("failed", "bob", "model")
    assert last.fields["query"] is None and last.fields["project"] is None
    with pytest.raises(Fault), refusals_recorded(register, "bob", "budget", b""):
        raise Fault("no")
    assert len(register.entries()) == 3
