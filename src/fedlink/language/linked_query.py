"""Linked queries: statistics over people linked across departments through the link spine.

Syntax: a horizontal query whose FROM clause names several tables joined by ``LINK``::

    SELECT dfe.pupils.region, COUNT(*) AS n
    FROM dfe.pupils LINK dwp.claims, nhs.diagnoses
    WHERE dfe.pupils.fsm = 1 AND dwp.claims.parent_disability = 1 AND nhs.diagnoses.severe = 1
    GROUP BY dfe.pupils.region

Meaning: the unit is the linked **person** (one slot of the project's link spine). A person counts if,
for every table in FROM, they have at least one row there satisfying that table's conditions (the
WHERE clause is an AND of conditions, each on one table's columns; conditions on years such as
``dfe.pupils.ks4_year BETWEEN 2014 AND 2023`` are ordinary predicates). GROUP BY uses declared
categories of one table; a person with matching rows in several groups is counted in the first in
declared order. ``SUM``/``AVG``/``HISTOGRAM`` take, per person, the mean of their matching rows'
values clamped to the declared bounds; ``COUNT(t.col)`` counts people with a non-null value.
A table held by several nodes (e.g. a charity's two branches) may be the FROM table: a person
held by any of them counts once. Columns may be written ``node.table.column``, ``table.column``
or, when unambiguous, ``column``.
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokens import Tokenizer, TokenType

from fedlink.errors import BadInput, QueryError
from fedlink.language.sql import (
    AGGREGATE_HELP,
    MAX_CELLS,
    Binder,
    chain,
    check_column_names,
    check_query_text,
    parse_sql,
    shown,
)
from fedlink.plan.aggregate import Aggregate, BoolOp, GroupKey, Predicate
from fedlink.plan.catalogue import FederationCatalogue, TableInfo
from fedlink.plan.linked_query import LinkedPlan, LinkedSource
from fedlink.transparency.records import without_comments

#: A linked query's cells cost one encrypted multiplication per chunk of 8192 people each: keep them few.
MAX_LINKED_CELLS = 1_000


def link_positions(sql: str) -> list[tuple[int, int]]:
    """Where the keyword LINK stands in ``sql`` (outside strings and quoted names)."""
    check_query_text(sql)
    try:
        tokens = Tokenizer().tokenize(sql)
    except SqlglotError:
        return []
    return [(t.start, t.end) for t in tokens if t.token_type == TokenType.VAR and t.text.upper() == "LINK"]


def is_linked(sql: str) -> bool:
    return bool(link_positions(sql))


def _as_comma_join(sql: str) -> str:
    for start, end in reversed(link_positions(sql)):
        sql = f"{sql[:start]},{sql[end + 1 :]}"
    return sql


class _Source:
    def __init__(self, table: TableInfo, nodes: tuple[str, ...], qualifiers: set[str]) -> None:
        self.table = table
        self.nodes = nodes
        self.binder = Binder(table, qualifiers)
        self.conditions: list[Predicate] = []


def _sources(tree: exp.Select, catalogue: FederationCatalogue) -> list[_Source]:
    source = tree.args.get("from_")
    if source is None:
        raise QueryError("missing FROM; name tables joined by LINK, e.g. FROM dfe.pupils LINK nhs.diagnoses")
    refs = [source.this] + [join.this for join in tree.args.get("joins") or []]
    for join in tree.args.get("joins") or []:
        if join.args.get("on") or join.args.get("using") or join.args.get("kind") or join.args.get("side"):
            raise QueryError("JOIN ... ON is not supported: people are joined through the link spine; write A LINK B")
    found: list[_Source] = []
    seen: set[tuple[str, ...]] = set()
    for ref in refs:
        if not isinstance(ref, exp.Table) or ref.args.get("catalog"):
            raise QueryError("each table after FROM and LINK must be written table or node.table")
        name, db = ref.name, ref.args.get("db")
        node = db.name if db is not None else None
        declared = [(s.node, t) for s, t in catalogue.declaring(name) if node is None or s.node == node]
        if not declared:
            where = f" at node '{node}'" if node else ""
            raise QueryError(f"unknown table '{shown(name)}'{where}; run `fedlink catalog` to see the tables")
        nodes = tuple(n for n, _ in declared)
        key = (name, *nodes)
        if key in seen:
            raise QueryError(f"table '{shown(name)}' appears twice in FROM ... LINK; name each table once")
        seen.add(key)
        qualifiers = {name, ref.alias_or_name} | {f"{n}.{name}" for n in nodes}
        found.append(_Source(declared[0][1], nodes, qualifiers))
    if len(found) < 2:
        raise QueryError("LINK needs at least two tables, e.g. FROM dfe.pupils LINK nhs.diagnoses")
    for later in found[1:]:
        if len(later.nodes) > 1:
            raise QueryError(
                f"table '{later.table.name}' is held by nodes {', '.join(later.nodes)}; put it first (FROM) or "
                f"name one node as node.{later.table.name}"
            )
    shared = {n for s in found[1:] for n in s.nodes} & set(found[0].nodes) if len(found[0].nodes) > 1 else set()
    if shared:
        raise QueryError(
            f"node '{sorted(shared)[0]}' holds both '{found[0].table.name}' (held by several nodes) and another "
            "linked table; query them separately"
        )
    if len({n for s in found for n in s.nodes}) < 2:
        raise QueryError("LINK joins people across nodes; these tables are all at one node")
    return found


def _owner(column: exp.Column, sources: list[_Source]) -> _Source:
    prefix = ".".join(p.name for p in column.parts[:-1])
    if prefix:
        matches = [s for s in sources if prefix in s.binder.qualifiers]
        if not matches:
            raise QueryError(f"'{shown(column.sql())}' names no table in FROM ... LINK")
        return matches[0]
    holders = [s for s in sources if s.table.column(column.name) is not None]
    if not holders:
        tables = ", ".join(s.table.name for s in sources)
        raise QueryError(f"unknown column '{column.name}' in the linked tables ({tables})")
    if len(holders) > 1:
        options = " or ".join(f"{s.table.name}.{column.name}" for s in holders)
        raise QueryError(f"column '{column.name}' is ambiguous; write {options}")
    return holders[0]


def _conjuncts(node: exp.Expr) -> list[exp.Expr]:
    while isinstance(node, exp.Paren):
        node = node.this
    return chain(node) if isinstance(node, exp.And) else [node]


def _single_node(source: _Source, what: str) -> str:
    if len(source.nodes) > 1:
        raise QueryError(
            f"{what} uses '{source.table.name}', which several nodes hold; use a column of a single-node table"
        )
    return source.nodes[0]


def plan_linked(sql: str, catalogue: FederationCatalogue, max_multiplications: int | None = None) -> LinkedPlan:
    """Parse a LINK query and bind it to the catalogue. ``max_multiplications`` is the encrypted
    chain's limit (:data:`fedlink.pets.chain.MAX_MULTIPLICATIONS`, passed in so that the plan needs no
    PET): a longer chain is refused here, before anything is encrypted."""
    tree = parse_sql(_as_comma_join(sql), allow_joins=True)
    sources = _sources(tree, catalogue)

    if tree.args.get("where"):
        for condition in _conjuncts(tree.args["where"].this):
            owners = {id(_owner(c, sources)) for c in condition.find_all(exp.Column)}
            if len(owners) != 1:
                raise QueryError(
                    f"the condition {shown(condition.sql())} must use the columns of exactly one table; "
                    "combine conditions on different tables with AND"
                )
            owner = _owner(next(condition.find_all(exp.Column)), sources)
            owner.conditions.append(owner.binder.predicate(condition))

    group_by: list[GroupKey] = []
    group_owner: _Source | None = None
    for item in tree.args["group"].expressions if tree.args.get("group") else []:
        if not isinstance(item, exp.Column):
            raise QueryError(f"GROUP BY needs column names, not {shown(item.sql())}")
        owner = _owner(item, sources)
        if group_owner is not None and owner is not group_owner:
            raise QueryError("GROUP BY columns of a linked query must all come from one table")
        group_owner = owner
        _single_node(owner, "GROUP BY")
        info = owner.binder.column(item, "a GROUP BY item")
        if info.kind != "category" or not info.categories:
            raise QueryError(f"GROUP BY needs a categorical column with declared categories; '{info.name}' is not")
        if info.name not in {g.column for g in group_by}:
            group_by.append(GroupKey(column=info.name, categories=info.categories))

    aggregates: list[Aggregate] = []
    for item in tree.expressions:
        target = item.this if isinstance(item, exp.Alias) else item
        label = item.alias if isinstance(item, exp.Alias) else target.sql().lower()
        if isinstance(target, exp.Star):
            raise QueryError(f"SELECT * would release rows; {AGGREGATE_HELP}")
        if isinstance(target, exp.Column):
            owner = _owner(target, sources)
            info = owner.binder.column(target, "a selected column")
            if owner is not group_owner or info.name not in {g.column for g in group_by}:
                raise QueryError(
                    f"'{shown(target.sql())}' is selected but not grouped, which would release row values; add it to "
                    f"GROUP BY or {AGGREGATE_HELP}"
                )
            continue
        columns = list(target.find_all(exp.Column))
        if not columns:
            aggregates.append(sources[0].binder.aggregate(target, label))
            continue
        owner = _owner(columns[0], sources)
        _single_node(owner, f"the aggregate {shown(target.sql())}")
        agg = owner.binder.aggregate(target, label)
        aggregates.append(agg.model_copy(update={"column": f"{owner.nodes[0]}.{owner.table.name}.{agg.column}"}))
    if not aggregates:
        raise QueryError(f"a query must compute at least one aggregate; {AGGREGATE_HELP}")
    if sum(a.func == "histogram" for a in aggregates) > 1 or (
        any(a.func == "histogram" for a in aggregates) and len(aggregates) > 1
    ):
        raise QueryError("HISTOGRAM must be the only aggregate of its query; run the others separately")
    check_column_names(group_by, aggregates)

    plan_sources = tuple(
        LinkedSource(
            table=s.table.name,
            nodes=s.nodes,
            where=(s.conditions[0] if len(s.conditions) == 1 else BoolOp(op="and", args=tuple(s.conditions)))
            if s.conditions
            else None,
        )
        for s in sources
    )
    plan = LinkedPlan(
        sources=plan_sources,
        aggregates=tuple(aggregates),
        group_by=tuple(group_by),
        group_source=sources.index(group_owner) if group_owner is not None else None,
        sql=without_comments(sql),
    )
    if plan.cells > min(MAX_CELLS, MAX_LINKED_CELLS):
        raise QueryError(
            f"the linked query has {plan.cells} cells, more than {MAX_LINKED_CELLS}; group by fewer categories"
        )
    if max_multiplications is not None and plan.multiplications > max_multiplications:
        raise BadInput(
            f"the query needs {plan.multiplications} encrypted multiplications, more than {max_multiplications}; "
            "link fewer tables or nodes in one query"
        )
    return plan
