"""Model formulas: ``response ~ term + term ...`` over one table, bound to the catalogue into a
:class:`~fedlink.plan.model.ModelPlan`.

The response is a numeric column (``gaussian``) or an indicator ``column = 'value'`` / a 0-1 category
(``logistic``), and each term a numeric column (or a category whose categories are numbers, such as
years) or an indicator ``column = 'value'``. An intercept is always included.
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokens import Tokenizer, TokenType

from fedlink.errors import QueryError
from fedlink.language.sql import check_query_text, number_literal, shown
from fedlink.plan.catalogue import ColumnInfo, FederationCatalogue
from fedlink.plan.model import Family, ModelPlan, ModelTerm
from fedlink.transparency.records import without_comments

MAX_TERMS = 20


def _split_terms(text: str) -> list[str]:
    """``a + b = 'x + y'`` -> ["a", "b = 'x + y'"]: split at top-level plus signs only."""
    try:
        tokens = Tokenizer().tokenize(text)
    except SqlglotError as exc:
        raise QueryError(f"cannot read the formula's terms ({exc}); write response ~ term + term") from exc
    cuts = [t.start for t in tokens if t.token_type == TokenType.PLUS]
    parts, start = [], 0
    for cut in cuts:
        parts.append(text[start:cut])
        start = cut + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _term(text: str, columns: dict[str, ColumnInfo], role: str) -> ModelTerm:
    try:
        node: exp.Expr = exp.maybe_parse(text, dialect="duckdb")
    except (SqlglotError, RecursionError) as exc:
        raise QueryError(f"cannot read the {role} '{shown(text)}'; write a column or column = 'value'") from exc
    if isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.EQ) and isinstance(node.this, exp.Column) and isinstance(node.expression, exp.Literal):
        info = _column(node.this.name, columns, role)
        literal = node.expression
        value = str(literal.this) if literal.is_string else number_literal(str(literal.this))
        declared = [c for c in info.categories or () if c == value] if info.kind == "category" else []
        if not declared:
            raise QueryError(f"'{shown(value)}' is not a declared category of '{info.name}'; see `fedlink catalog`")
        return ModelTerm(column=info.name, value=declared[0])
    if isinstance(node, exp.Column):
        info = _column(node.name, columns, role)
        if info.kind == "numeric" and info.bounds is not None:
            return ModelTerm(column=info.name, lower=info.bounds[0], upper=info.bounds[1])
        numbers = [c for c in info.categories or () if isinstance(c, int | float) and not isinstance(c, bool)]
        if info.kind == "category" and numbers and len(numbers) == len(info.categories or ()) and len(numbers) > 1:
            return ModelTerm(column=info.name, lower=float(min(numbers)), upper=float(max(numbers)))
        raise QueryError(
            f"'{info.name}' is a category of text; use an indicator such as {info.name} = "
            f"{(info.categories or ('...',))[0]!r}"
        )
    raise QueryError(f"the {role} '{shown(text)}' must be a column or column = 'value'")


def _column(name: str, columns: dict[str, ColumnInfo], role: str) -> ColumnInfo:
    info = columns.get(name)
    if info is None:
        raise QueryError(
            f"unknown column '{shown(name)}' in the model's {role}; run `fedlink catalog` to see the columns"
        )
    if info.kind == "identifier":
        raise QueryError(f"column '{name}' is an identifier and can never be used in a model")
    return info


def plan_model(
    formula: str, table: str, catalogue: FederationCatalogue, family: Family = "logistic", iterations: int | None = None
) -> ModelPlan:
    """Bind a formula to ``table`` at every node that declares it (with the same columns)."""
    if family not in ("logistic", "gaussian"):
        raise QueryError(f"unknown family '{family}'; use logistic or gaussian")
    check_query_text(formula, "formula")
    if formula.count("~") != 1:
        raise QueryError("a model formula is response ~ term + term (one '~')")
    declared = catalogue.declaring(table)
    if not declared:
        raise QueryError(f"unknown table '{table}'; run `fedlink catalog` to see the tables")
    info = declared[0][1]
    columns = {c.name: c for c in info.columns}
    left, right = (part.strip() for part in formula.split("~"))
    response = _term(left, columns, "response")
    if family == "logistic" and response.value is None and (response.lower, response.upper) != (0.0, 1.0):
        raise QueryError(f"a logistic response must be 0/1: write {response.column} = <value>")
    terms = tuple(_term(t, columns, "term") for t in _split_terms(right))
    if not terms:
        raise QueryError("the formula needs at least one term after '~'")
    if len(terms) > MAX_TERMS:
        raise QueryError(f"at most {MAX_TERMS} terms in one model")
    if len({t.label for t in terms}) != len(terms):
        raise QueryError("a term appears twice in the formula")
    steps = iterations if iterations is not None else (1 if family == "gaussian" else 8)
    if not 1 <= steps <= 50:
        raise QueryError("iterations must be between 1 and 50")
    return ModelPlan(
        table=table,
        nodes=tuple(status.node for status, _ in declared),
        family=family,
        response=response,
        terms=terms,
        iterations=steps,
        sql=f"MODEL {family} {without_comments(formula)} ON {table}",
    )
