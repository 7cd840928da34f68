"""The analyst's SQL subset, parsed with sqlglot and bound to the federation catalogue.

Accepted shape (horizontal queries)::

    SELECT <group columns>, <aggregates>
    FROM [node.]table
    [WHERE <predicate>]
    [GROUP BY <categorical columns>]

Aggregates: ``COUNT(*)``, ``COUNT(col)``, ``SUM(col)``, ``AVG(col)`` and ``HISTOGRAM(col)`` (over the
column's declared bins). Predicates: ``= != <> < <= > >=``, ``IN``/``NOT IN``, ``BETWEEN``,
``IS [NOT] NULL``, ``AND``/``OR``/``NOT``. Anything that would release rows (``SELECT *``, a bare
column without GROUP BY), touch an identifier, or fall outside this subset is refused with a
:class:`~fedlink.errors.QueryError` that says what to write instead.
"""

from __future__ import annotations

import math
from typing import Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from fedlink.errors import BadInput, QueryError
from fedlink.plan.aggregate import (
    Aggregate,
    AggregateFunc,
    AggregatePlan,
    Between,
    BoolOp,
    Comparison,
    GroupKey,
    InList,
    IsNull,
    Not,
    Predicate,
    Scalar,
)
from fedlink.plan.catalogue import ColumnInfo, FederationCatalogue, TableInfo
from fedlink.transparency.records import without_comments

MAX_CELLS = 100_000
#: The longest query (or model formula) accepted, in characters: ample for any query of this subset
#: (an IN list of a thousand codes is about 8,000), and parsed in well under a second. Checked by the
#: analyst's client and again by the coordinator before it parses anything.
MAX_QUERY_CHARS = 16_384
#: Project and table names are short names people type.
MAX_NAME_CHARS = 200
#: Integer literals must fit the 64-bit integers every backend compares with.
_INT64 = 2**63 - 1
AGGREGATE_HELP = "use COUNT(*), COUNT(col), SUM(col), AVG(col) or HISTOGRAM(col)"
_COMPARISONS: dict[type[exp.Expr], str] = {
    exp.EQ: "=",
    exp.NEQ: "!=",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.GT: ">",
    exp.GTE: ">=",
}
_UNSUPPORTED_CLAUSES = {
    "joins": "JOIN is not supported; link tables across nodes with FROM a LINK b (see the README)",
    "having": "HAVING is not supported; filter rows with WHERE",
    "order": "ORDER BY is not supported; results come in the declared category order",
    "limit": "LIMIT is not supported; every declared group is always returned",
    "offset": "OFFSET is not supported",
    "with_": "WITH is not supported; write a single SELECT",
    "qualify": "QUALIFY is not supported",
    "windows": "window functions are not supported",
}


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def shown(text: object, limit: int = 60) -> str:
    """A piece of the user's query quoted in an error, cut to ``limit`` characters so that a refusal
    stays one readable line however long the query."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_query_text(text: object, what: str = "query") -> str:
    """``text`` if it can be a query at all: a string of at most :data:`MAX_QUERY_CHARS` characters
    that is valid Unicode text; a :class:`QueryError` otherwise, before anything parses it."""
    if not isinstance(text, str):
        raise QueryError(f"the {what} must be text, not {type(text).__name__}")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(
            f"the {what} is {len(text):,} characters long, more than the limit of {MAX_QUERY_CHARS:,}; "
            "shorten it (list values with IN (...), split it into several queries)"
        )
    _check_encodable(text, what)
    return text


def check_name(name: object, what: str) -> str:
    """``name`` (of a project, a table) if it can be one: text of at most :data:`MAX_NAME_CHARS`
    characters; a :class:`BadInput` otherwise, so that no refusal echoes a name of any length."""
    if not isinstance(name, str):
        raise BadInput(f"the {what} must be text, not {type(name).__name__}")
    if len(name) > MAX_NAME_CHARS:
        raise BadInput(f"the {what} is {len(name):,} characters long; names are at most {MAX_NAME_CHARS}")
    _check_encodable(name, what)
    return name


def _check_encodable(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = f"U+{ord(text[exc.start]):04X}"
        raise QueryError(
            f"the {what} holds a character that is not valid text ({bad} at position {exc.start}, from bytes "
            "that are not UTF-8); retype it"
        ) from None


def number_literal(text: str) -> int | float:
    """A numeric literal as written in a query: a 64-bit integer or a finite float."""
    try:
        value: int | float = int(text) if text.lstrip("-").isdigit() else float(text)
    except ValueError:
        raise QueryError(f"'{shown(text)}' is not a number") from None
    if (isinstance(value, int) and abs(value) > _INT64) or (isinstance(value, float) and not math.isfinite(value)):
        raise QueryError(f"the number {shown(text)} is out of range; compare with a value the column can hold")
    return value


def parse_sql(sql: str, allow_joins: bool = False) -> exp.Select:
    """Parse one SELECT statement; anything else is a :class:`QueryError` (``allow_joins``: the comma
    joins a LINK query is rewritten to)."""
    check_query_text(sql)
    if not sql.strip():
        raise QueryError("empty query; write e.g. SELECT region, COUNT(*) FROM pupils GROUP BY region")
    try:
        statements = sqlglot.parse(sql)
    except SqlglotError as exc:
        raise QueryError(f"malformed SQL ({_first_line(exc)}); check the syntax of your SELECT") from exc
    except RecursionError:
        raise QueryError(
            "the query nests parentheses or NOTs too deeply to read; write the condition with fewer levels"
        ) from None
    present = [s for s in statements if s is not None]
    if len(present) != 1:
        raise QueryError("exactly one SQL statement is allowed; remove the extra statements")
    tree = present[0]
    if not isinstance(tree, exp.Select):
        raise QueryError(f"only SELECT queries are allowed, not {tree.key.upper()}; {AGGREGATE_HELP}")
    for clause, message in _UNSUPPORTED_CLAUSES.items():
        if tree.args.get(clause) and not (allow_joins and clause == "joins"):
            raise QueryError(message)
    if tree.args.get("distinct"):
        raise QueryError(f"DISTINCT would release row values; {AGGREGATE_HELP}")
    for node in tree.find_all(exp.Subquery, exp.Union, exp.Intersect, exp.Except):
        raise QueryError(f"{node.key.upper()} is not supported; write a single SELECT over one table")
    for part in tree.walk():
        part.pop_comments()  # errors quote fragments of the tree, and errors reach the registers
    return tree


def chain(node: exp.Expr) -> list[exp.Expr]:
    """The operands of a chain of one connective (``a AND b AND (c AND d)`` -> a, b, c, d), read
    without recursion: sqlglot nests a chain of n conditions n deep."""
    kind, operands, stack = type(node), [], [node]
    while stack:
        item = stack.pop()
        while isinstance(item, exp.Paren) and isinstance(item.this, kind):
            item = item.this
        if isinstance(item, kind):
            stack.extend((item.expression, item.this))  # left first
        else:
            operands.append(item)
    return operands


def _literal(node: exp.Expr, column: str) -> Scalar:
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
        value = _literal(node.this, column)
        assert not isinstance(value, str)
        return -value
    if isinstance(node, exp.Boolean):
        return 1 if node.this else 0
    if not isinstance(node, exp.Literal):
        raise QueryError(f"compare column '{column}' with a literal value, not {shown(node.sql())}")
    if node.is_string:
        return str(node.this)
    return number_literal(str(node.this))


def _ordered(info: ColumnInfo) -> bool:
    """Numeric columns, and categorical ones whose categories are all numbers (e.g. years), have an order."""
    if info.kind == "numeric":
        return True
    return bool(info.categories) and all(not isinstance(c, str) for c in info.categories or ())


class Binder:
    """Resolves names against one table's declarations, refusing identifiers and unknown columns."""

    def __init__(self, table: TableInfo, qualifiers: set[str]) -> None:
        self.table = table
        self.qualifiers = qualifiers

    def column(self, node: exp.Expr, purpose: str) -> ColumnInfo:
        if isinstance(node, exp.Star):
            raise QueryError(f"SELECT * would release rows; {AGGREGATE_HELP}")
        if not isinstance(node, exp.Column):
            raise QueryError(f"{purpose} must be a column name, not {shown(node.sql())}")
        prefix = ".".join(p.name for p in node.parts[:-1])
        if prefix and prefix not in self.qualifiers:
            raise QueryError(f"'{shown(node.sql())}' does not refer to table '{self.table.name}' in FROM")
        info = self.table.column(node.name)
        if info is None:
            known = ", ".join(c.name for c in self.table.columns if c.kind != "identifier")
            raise QueryError(f"unknown column '{node.name}' in table '{self.table.name}'; columns: {known}")
        if info.kind == "identifier":
            raise QueryError(
                f"column '{info.name}' is an identifier and can never be queried; use a categorical or numeric column"
            )
        return info

    def value(self, info: ColumnInfo, node: exp.Expr, ordered: bool = False) -> Scalar:
        value = _literal(node, info.name)
        if ordered and isinstance(value, str):
            raise QueryError(f"'{info.name}' is compared by order; compare it with a number, not {shown(repr(value))}")
        if info.kind == "category" and not ordered:
            assert info.categories is not None
            if value not in info.categories:
                declared = ", ".join(repr(c) for c in info.categories)
                raise QueryError(
                    f"{shown(repr(value))} is not a declared category of '{info.name}'; declared: {declared}"
                )
        elif isinstance(value, str):
            raise QueryError(f"column '{info.name}' is numeric; compare it with a number, not {shown(repr(value))}")
        return value

    def predicate(self, node: exp.Expr) -> Predicate:
        if isinstance(node, exp.Paren):
            return self.predicate(node.this)
        if isinstance(node, exp.And | exp.Or):
            joiner: Literal["and", "or"] = "and" if isinstance(node, exp.And) else "or"
            return BoolOp(op=joiner, args=tuple(self.predicate(arg) for arg in chain(node)))
        if isinstance(node, exp.Not):
            inner = node.this
            if isinstance(inner, exp.Is):
                return IsNull(column=self._is_null_column(inner), negated=True)
            if isinstance(inner, exp.In):
                comparison = self.predicate(inner)
                assert isinstance(comparison, InList)
                return comparison.model_copy(update={"negated": True})
            return Not(arg=self.predicate(inner))
        if isinstance(node, exp.Is):
            return IsNull(column=self._is_null_column(node))
        if isinstance(node, exp.In):
            info = self.column(node.this, "the left side of IN")
            if node.args.get("query"):
                raise QueryError("IN (SELECT ...) is not supported; list the values")
            return InList(column=info.name, values=tuple(self.value(info, v) for v in node.expressions))
        if isinstance(node, exp.Between):
            info = self.column(node.this, "the left side of BETWEEN")
            if not _ordered(info):
                raise QueryError(f"BETWEEN needs a numeric column; '{info.name}' is categorical, use IN (...)")
            low = self.value(info, node.args["low"], ordered=True)
            high = self.value(info, node.args["high"], ordered=True)
            return Between(column=info.name, low=float(low), high=float(high))
        for cls, symbol in _COMPARISONS.items():
            if isinstance(node, cls):
                left, right, op = node.this, node.expression, symbol
                if isinstance(left, exp.Literal | exp.Neg) and isinstance(right, exp.Column):
                    left, right = right, left
                    op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
                info = self.column(left, f"the left side of {op}")
                ordered = op not in ("=", "!=")
                if ordered and not _ordered(info):
                    raise QueryError(f"'{info.name}' is categorical; compare it with = , != or IN, not {op}")
                value = self.value(info, right, ordered=ordered)
                return Comparison(column=info.name, op=op, value=value)  # type: ignore[arg-type]
        raise QueryError(
            f"unsupported condition {shown(node.sql())}; use comparisons, IN, BETWEEN, IS NULL, AND/OR/NOT"
        )

    def _is_null_column(self, node: exp.Is) -> str:
        if not isinstance(node.expression, exp.Null):
            raise QueryError(f"unsupported condition {shown(node.sql())}; only IS [NOT] NULL is allowed")
        return self.column(node.this, "the left side of IS NULL").name

    def aggregate(self, node: exp.Expr, label: str) -> Aggregate:
        if isinstance(node, exp.Count):
            arg = node.this
            if arg is None or isinstance(arg, exp.Star):
                return Aggregate(func="count", label=label)
            if isinstance(arg, exp.Distinct):
                raise QueryError("COUNT(DISTINCT ...) is not supported; use COUNT(*) with GROUP BY")
            return Aggregate(func="count", column=self.column(arg, "COUNT's argument").name, label=label)
        if isinstance(node, exp.Sum | exp.Avg):
            func: AggregateFunc = "sum" if isinstance(node, exp.Sum) else "avg"
            info = self.column(node.this, f"{func.upper()}'s argument")
            if info.kind != "numeric" or info.bounds is None:
                raise QueryError(f"{func.upper()} needs a numeric column with declared bounds; '{info.name}' is not")
            lower, upper = info.bounds
            return Aggregate(func=func, column=info.name, label=label, lower=lower, upper=upper)
        if isinstance(node, exp.Anonymous) and node.name.upper() == "HISTOGRAM":
            if len(node.expressions) != 1:
                raise QueryError("HISTOGRAM takes one column; its bins come from the catalogue")
            info = self.column(node.expressions[0], "HISTOGRAM's argument")
            if info.kind != "numeric" or not info.bins:
                raise QueryError(f"HISTOGRAM needs a numeric column with declared bins; '{info.name}' has none")
            return Aggregate(func="histogram", column=info.name, label=label, bins=info.bins)
        if isinstance(node, exp.AggFunc | exp.Anonymous):
            raise QueryError(f"unsupported aggregate {shown(node.sql())}; {AGGREGATE_HELP}")
        raise QueryError(f"'{shown(node.sql())}' is not an aggregate or a GROUP BY column; {AGGREGATE_HELP}")


def check_column_names(group_by: list[GroupKey], aggregates: list[Aggregate]) -> None:
    """Refuse a result whose columns would share a name (its rows are keyed by name: one would hide
    the other): group-by columns, each aggregate's label with its ``_lower``/``_upper`` and ``suppressed``."""
    names = [*(g.column for g in group_by), "suppressed"]
    for aggregate in aggregates:
        names += [aggregate.label, f"{aggregate.label}_lower", f"{aggregate.label}_upper"]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise QueryError(
                f"the result would have two columns named '{shown(name)}'; give each aggregate its own name with AS"
            )
        seen.add(name)


def _resolve_table(tree: exp.Select, catalogue: FederationCatalogue) -> tuple[TableInfo, tuple[str, ...], set[str]]:
    source = tree.args.get("from_")
    if source is None:
        raise QueryError("missing FROM; name a table from `fedlink catalog`")
    table = source.this
    if not isinstance(table, exp.Table) or table.args.get("catalog"):
        raise QueryError("FROM must name one table as table or node.table")
    name, node = table.name, table.args.get("db")
    node_name = node.name if node is not None else None
    declared = catalogue.declaring(name)
    if node_name is not None:
        declared = [(s, t) for s, t in declared if s.node == node_name]
    if not declared:
        where = f" at node '{node_name}'" if node_name else ""
        raise QueryError(f"unknown table '{shown(name)}'{where}; run `fedlink catalog` to see the tables")
    info = declared[0][1]
    qualifiers = {name, table.alias_or_name}
    if node_name:
        qualifiers.add(f"{node_name}.{name}")
    return info, tuple(s.node for s, _ in declared), qualifiers


def _check_same_domains(catalogue: FederationCatalogue, plan: AggregatePlan) -> None:
    declared = [(s.node, t) for s, t in catalogue.declaring(plan.table) if s.node in plan.nodes]
    first_node, first = declared[0]
    for node, info in declared[1:]:
        for column in sorted(plan.columns_used()):
            a, b = first.column(column), info.column(column)
            if a is None or b is None or not a.same_domain(b):
                raise QueryError(
                    f"column '{column}' of table '{plan.table}' is declared differently at nodes "
                    f"'{first_node}' and '{node}'; query one node as node.{plan.table}"
                )


def plan_query(sql: str, catalogue: FederationCatalogue) -> AggregatePlan:
    """Parse ``sql`` and bind it to the catalogue, giving the plan every node will run."""
    tree = parse_sql(sql)
    table, nodes, qualifiers = _resolve_table(tree, catalogue)
    binder = Binder(table, qualifiers)

    group_nodes = tree.args["group"].expressions if tree.args.get("group") else []
    group_by: list[GroupKey] = []
    for node in group_nodes:
        info = binder.column(node, "a GROUP BY item")
        if info.kind != "category" or not info.categories:
            raise QueryError(f"GROUP BY needs a categorical column with declared categories; '{info.name}' is not")
        if info.name not in {g.column for g in group_by}:
            group_by.append(GroupKey(column=info.name, categories=info.categories))
    grouped = {g.column for g in group_by}

    aggregates: list[Aggregate] = []
    for item in tree.expressions:
        target = item.this if isinstance(item, exp.Alias) else item
        label = item.alias if isinstance(item, exp.Alias) else target.sql().lower()
        if isinstance(target, exp.Column | exp.Star):
            info = binder.column(target, "a selected column")
            if info.name not in grouped:
                raise QueryError(
                    f"'{info.name}' is selected but not grouped, which would release row values; add it to "
                    f"GROUP BY or {AGGREGATE_HELP}"
                )
            continue
        aggregates.append(binder.aggregate(target, label))
    if not aggregates:
        raise QueryError(f"a query must compute at least one aggregate; {AGGREGATE_HELP}")
    if sum(a.func == "histogram" for a in aggregates) > 1:
        raise QueryError("at most one HISTOGRAM per query; run the others as separate queries")
    if any(a.func == "histogram" for a in aggregates) and len(aggregates) > 1:
        raise QueryError("HISTOGRAM must be the only aggregate of its query; run the others separately")
    check_column_names(group_by, aggregates)

    where = binder.predicate(tree.args["where"].this) if tree.args.get("where") else None
    plan = AggregatePlan(
        table=table.name,
        nodes=nodes,
        aggregates=tuple(aggregates),
        group_by=tuple(group_by),
        where=where,
        sql=without_comments(sql),
    )
    if plan.cells > MAX_CELLS:
        raise QueryError(f"the query has {plan.cells} cells, more than {MAX_CELLS}; group by fewer columns")
    _check_same_domains(catalogue, plan)
    return plan
