"""Result objects an analyst holds: convertible to dicts, pandas and Polars, with a notebook repr."""

from __future__ import annotations

import math
from typing import Any

from fedlink.errors import BadInput
from fedlink.extras import require
from fedlink.plan.catalogue import FederationCatalogue, NodeCatalogue
from fedlink.protocol.linkage import LinkageQuality
from fedlink.protocol.results import QueryResult
from fedlink.protocol.tasks import BudgetReport
from fedlink.templating import environment


def format_value(value: Any) -> str:
    """A released number or key as people read it: thousands separated, two decimals unless whole,
    "—" for no value."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:,.2f}"
    return str(value)


def noise_hidden_rates(quality: LinkageQuality, fmt: str = ".1%") -> int:
    """How many of a spine's match rates read "—" or 0 when shown with ``fmt``."""
    rates = [rate for pair in quality.pairs for rate in (pair.rate_a, pair.rate_b)]
    return sum(rate is None or format(rate, fmt) == format(0.0, fmt) for rate in rates)


def noise_note(quality: LinkageQuality) -> str:
    """Why a match rate can read "—" or 0: the DP noise on small counts, with its scale."""
    # Laplace noise of scale b exceeds t in size with probability exp(-t / b): 95% within b ln 20.
    reach = quality.scale * math.log(20)
    return (
        f"a rate reads — where a node's noisy count of people fell below 1, and 0 where the pair's noisy overlap "
        f"fell to 0 or near it: with Laplace noise of scale {quality.scale:g} on each count (95% of draws within "
        f"±{reach:.0f}), a count under about {reach:.0f} can read 0 whatever its true size"
    )


class Result:
    """An aggregate table released by the federation: estimates with 95% intervals, suppression
    flags and provenance (project, privacy loss per node, disclosure policy, notes).

    ``rows()`` gives one flat dict per group (``col``, ``col_lower``, ``col_upper``);
    ``to_dict()`` the whole structure; ``to_pandas()`` / ``to_polars()`` data frames of ``rows()``.

    >>> res = fed.query("SELECT fsm, COUNT(*) AS pupils FROM pupils GROUP BY fsm",
    ...                 project="deprivation-mental-health", epsilon=1.0)
    >>> res.columns
    ['fsm', 'pupils']
    >>> list(res.to_pandas().columns)
    ['fsm', 'pupils', 'pupils_lower', 'pupils_upper', 'suppressed']
    >>> cell = res.to_dict()["rows"][0]["pupils"]
    >>> sorted(cell)
    ['lower', 'suppressed', 'upper', 'value']
    >>> res.provenance()
    'project deprivation-mental-health; he+dp; privacy loss per node: dfe: ε=1'
    >>> "<table>" in res._repr_html_() and "[" in res.cell_text(0, "pupils")
    True
    """

    def __init__(self, raw: QueryResult) -> None:
        self.raw = raw

    @property
    def columns(self) -> list[str]:
        return [*self.raw.key_columns, *self.raw.value_columns]

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.raw.nodes

    @property
    def sql(self) -> str:
        return self.raw.sql

    @property
    def privacy_loss(self) -> dict[str, dict[str, float]]:
        return {node: loss.model_dump() for node, loss in self.raw.privacy_loss.items()}

    @property
    def notes(self) -> tuple[str, ...]:
        return self.raw.notes

    @property
    def query_id(self) -> str:
        return self.raw.query_id

    @property
    def linkage(self) -> LinkageQuality | None:
        """For a linked query, the DP match rates of the spine it ran over (None otherwise)."""
        return self.raw.linkage

    def linkage_summary(self) -> str:
        """Match rates per node pair and the spine's estimated quality, as people read them; empty for a
        query that is not linked."""
        quality = self.raw.linkage
        if quality is None:
            return ""
        rates = []
        for pair in quality.pairs:
            a = "—" if pair.rate_a is None else f"{pair.rate_a:.0%}"
            b = "—" if pair.rate_b is None else f"{pair.rate_b:.0%}"
            rates.append(f"{pair.a}->{pair.b} {a}, {pair.b}->{pair.a} {b}")
        summary = f"linkage match rates (DP, ε={quality.epsilon:g} per node): " + "; ".join(rates)
        if noise_hidden_rates(quality, ".0%"):
            summary += f" ({noise_note(quality)})"
        estimated = quality.estimated
        if estimated is not None and estimated.overall.f1 is not None:
            precision, recall = estimated.overall.precision, estimated.overall.recall
            summary += (
                f"; estimated linkage quality (from the fitted model, DP): F1 {estimated.overall.f1:.3f}"
                f" (precision {'—' if precision is None else format(precision, '.3f')},"
                f" recall {'—' if recall is None else format(recall, '.3f')})"
            )
        return summary

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for row in self.raw.rows:
            flat: dict[str, Any] = dict(zip(self.raw.key_columns, row.keys, strict=True))
            for name, cell in zip(self.raw.value_columns, row.cells, strict=True):
                flat[name] = cell.value
                flat[f"{name}_lower"] = cell.lower
                flat[f"{name}_upper"] = cell.upper
            suppressed = sorted({c.suppressed for c in row.cells if c.suppressed})
            flat["suppressed"] = "; ".join(suppressed) or None
            out.append(flat)
        return out

    def to_dict(self) -> dict[str, Any]:
        raw = self.raw
        return {
            "query_id": raw.query_id,
            "sql": raw.sql,
            "table": raw.table,
            "project": raw.project,
            "nodes": list(raw.nodes),
            "pet": raw.pet,
            "noiseless": raw.noiseless,
            "confidence": raw.confidence,
            "privacy_loss": self.privacy_loss,
            "disclosure": raw.disclosure.model_dump(),
            "notes": list(raw.notes),
            "linkage": raw.linkage.model_dump() if raw.linkage else None,
            "columns": self.columns,
            "rows": [
                {
                    **dict(zip(raw.key_columns, row.keys, strict=True)),
                    **{name: cell.model_dump() for name, cell in zip(raw.value_columns, row.cells, strict=True)},
                }
                for row in raw.rows
            ],
        }

    def to_pandas(self) -> Any:
        return require("pandas", "Result.to_pandas()").DataFrame(self.rows())

    def to_polars(self) -> Any:
        return require("polars", "Result.to_polars()").DataFrame(self.rows())

    def cell_text(self, row: int, column: str) -> str:
        """A released number as people read it: ``value [lower, upper]``, or why it is suppressed."""
        cell = self.raw.rows[row].cells[self.raw.value_columns.index(column)]
        if cell.suppressed:
            return f"suppressed ({cell.suppressed})"
        if cell.value is None:
            return "—"
        if self.raw.noiseless or (cell.lower == cell.upper == cell.value):
            return format_value(cell.value)
        return f"{format_value(cell.value)} [{format_value(cell.lower)}, {format_value(cell.upper)}]"

    def provenance(self) -> str:
        loss = ", ".join(
            f"{n}: " + (f"ε={v['epsilon']:g}" if v["epsilon"] else f"ρ={v['rho']:g}")
            for n, v in self.privacy_loss.items()
        )
        text = f"project {self.raw.project}; {self.raw.pet}; privacy loss per node: {loss}"
        return f"{text}; {self.linkage_summary()}" if self.raw.linkage else text

    def suppressed_cells(self) -> int:
        """How many cells disclosure control withheld (their values are shown nowhere)."""
        return sum(bool(cell.suppressed) for row in self.raw.rows for cell in row.cells)

    def __repr__(self) -> str:
        shape = f"{len(self.raw.rows)} rows x {self.columns}"
        withheld = self.suppressed_cells()
        cells = len(self.raw.rows) * len(self.raw.value_columns)
        suppressed = f"; {withheld} of {cells} cells suppressed (see .notes)" if withheld else ""
        return f"<fedlink Result {self.raw.table} from {len(self.nodes)} nodes: {shape}{suppressed}>"

    def _repr_html_(self) -> str:
        return _RESULT_HTML.render(
            caption=f"{self.sql} — {self.provenance()}",
            columns=self.columns,
            rows=[
                [format_value(k) for k in row.keys] + [self.cell_text(i, c) for c in self.raw.value_columns]
                for i, row in enumerate(self.raw.rows)
            ],
            notes=self.notes,
        )


# Jupyter's rich display of a Result: autoescaped, as the SQL, group keys and notes are user text.
_RESULT_HTML = environment().from_string(
    "<table><caption>{{ caption }}</caption><thead><tr>{% for c in columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>"
    "<tbody>{% for row in rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>{% endfor %}</tbody>"
    "</table><ul>{% for note in notes %}<li>{{ note }}</li>{% endfor %}</ul>"
)


class Catalogue:
    """What data exists where in the federation."""

    def __init__(self, raw: FederationCatalogue) -> None:
        self.raw = raw

    def tables(self) -> dict[str, list[str]]:
        """Table name -> the nodes declaring it."""
        found: dict[str, list[str]] = {}
        for status in self.raw.nodes:
            for table in status.catalogue.tables if status.catalogue else ():
                found.setdefault(table.name, []).append(status.node)
        return found

    def node(self, name: str) -> NodeCatalogue:
        """What one node declares (raises :class:`~fedlink.errors.BadInput` for an unknown node)."""
        status = next((s for s in self.raw.nodes if s.node == name), None)
        if status is None or status.catalogue is None:
            raise BadInput(f"no catalogue for node '{name}'; nodes: {', '.join(s.node for s in self.raw.nodes)}")
        return status.catalogue

    def to_dict(self) -> dict[str, Any]:
        return self.raw.model_dump(mode="json")

    def __repr__(self) -> str:
        live = sum(s.live for s in self.raw.nodes)
        return f"<fedlink Catalogue: {live}/{len(self.raw.nodes)} nodes live, tables {sorted(self.tables())}>"


class Budget:
    """Privacy budget per node, project and dataset: cap, spent, reserved and remaining."""

    def __init__(self, raw: BudgetReport) -> None:
        self.raw = raw

    def rows(self) -> list[dict[str, Any]]:
        """One row per node, project and dataset, in rho (zCDP), reservations included: ``rho_remaining``
        is what the project can still spend there (the tighter of its cap and the dataset's cap across
        all projects), ``max_epsilon`` the largest epsilon one more pure-DP query could declare
        (``sqrt(2 rho_remaining)``)."""
        return [
            {
                "node": line.node,
                "project": line.project,
                "dataset": line.dataset,
                "rho_cap": line.cap,
                "rho_spent": line.spent,
                "rho_reserved": line.reserved,
                "rho_remaining": line.remaining,
                "max_epsilon": math.sqrt(2 * line.remaining),
                "dataset_rho_cap": line.dataset_cap,
                "dataset_rho_spent": line.dataset_spent,
                "queries": line.queries,
            }
            for line in self.raw.lines
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"lines": self.rows()}

    def to_pandas(self) -> Any:
        return require("pandas", "Budget.to_pandas()").DataFrame(self.rows())

    def __repr__(self) -> str:
        return f"<fedlink Budget: {len(self.raw.lines)} lines>"


class RegisterView:
    """The coordinator's public transparency register as an analyst sees it."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    @property
    def verified(self) -> bool:
        return bool(self.raw["verified"])

    def entries(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Entries in order, optionally only those of one ``kind`` (``project``, ``query``...)."""
        return [e for e in self.raw["entries"] if kind is None or e["kind"] == kind]

    def queries(self) -> list[dict[str, Any]]:
        """One flat row per recorded query: time, analyst, project, query, status, total privacy loss."""
        rows = []
        for entry in self.entries("query"):
            fields = entry["fields"]
            loss = fields.get("privacy_loss", {})
            rows.append(
                {
                    "time": entry["time"],
                    "analyst": fields.get("analyst"),
                    "project": fields.get("project"),
                    "query": fields.get("query"),
                    "status": fields.get("status"),
                    "nodes": ", ".join(sorted(loss)),
                    "epsilon": sum(v.get("epsilon", 0.0) for v in loss.values()),
                    "rho": sum(v.get("rho", 0.0) for v in loss.values()),
                }
            )
        return rows

    def to_pandas(self) -> Any:
        return require("pandas", "RegisterView.to_pandas()").DataFrame(self.queries())

    def __repr__(self) -> str:
        state = "verified" if self.verified else "FAILED VERIFICATION"
        return f"<fedlink Register of {self.raw['party']}: {len(self.raw['entries'])} entries, {state}>"
