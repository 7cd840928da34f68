"""The public export of the transparency registers: a static HTML page and the same data as JSON.

:func:`export_register` reads the coordinator's and the nodes' registers, verifies each one, and
writes ``index.html`` (self-contained: inline CSS and an inline SVG chart, no script, no external
address, a Content-Security-Policy that forbids both) and ``register.json`` (every entry of every
register, with its verify report and head hash). Publishing the head hashes is what lets anyone
detect a register rewritten later (see :mod:`fedlink.transparency.register`).

The page is rendered from Jinja2 templates (``templates/`` beside this module) with autoescaping on,
so every value from a register (query text, purposes and names are user input) is escaped by the
template engine as it reaches the page; this module only gathers and computes the values.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedlink.errors import BadInput
from fedlink.governance.publications import published_outcomes
from fedlink.templating import environment
from fedlink.transparency.register import RegisterEntry, VerifyReport, read_register

FORMAT = "fedlink-register-export/1"
MARKER = ".fedlink-register-export"
_OUTPUTS = frozenset({"index.html", "register.json", MARKER})
# Okabe-Ito colours, distinguishable with colour-blindness; a dash pattern per series as well.
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
_DASHES = ("", "8 4", "2 3", "10 3 2 3", "4 4", "1 2", "12 6", "6 2 2 2")


@dataclass(frozen=True)
class _Party:
    party: str
    file: str
    entries: tuple[RegisterEntry, ...]
    report: VerifyReport

    @property
    def head(self) -> RegisterEntry | None:
        return self.entries[-1] if self.entries else None


@dataclass
class _Query:
    entry: RegisterEntry
    recorded_by: list[str] = field(default_factory=list)

    def get(self, key: str) -> Any:
        return self.entry.fields.get(key)


def export_register(
    registers: Sequence[tuple[str, Path]], out: Path, title: str = "fedlink transparency register"
) -> tuple[Path, Path]:
    """Write ``out/index.html`` and ``out/register.json`` from ``(party, path)`` registers; return both paths.

    ``out`` must be missing, empty, or a previous export: anything else is refused rather than
    overwritten. The files appear together or not at all.
    """
    out = Path(out)
    _check_destination(out)
    parties = _read(registers)
    generated = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    page = _page(parties, title, generated)
    document = _document(parties, title, generated)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".new", dir=out.parent))
    except OSError as exc:
        raise BadInput(
            f"cannot write the export into {out.parent} ({exc.strerror}); choose a folder you can write"
        ) from exc
    try:
        os.chmod(staging, 0o755)  # a public page: readable by the web server, unlike mkdtemp's default
        (staging / "index.html").write_text(page, encoding="utf-8")
        (staging / "register.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", "utf-8")
        (staging / MARKER).write_text(FORMAT + "\n", encoding="utf-8")
        _swap_in(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out / "index.html", out / "register.json"


def _check_destination(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise BadInput(f"{out} exists and is not a folder; choose an empty or new folder for the export")
    present = {p.name for p in out.iterdir()}
    if present and (MARKER not in present or not present <= _OUTPUTS):
        raise BadInput(f"{out} is not empty and is not a previous register export; choose an empty or new folder")


def _swap_in(staging: Path, out: Path) -> None:
    if not out.exists() or not any(out.iterdir()):
        os.replace(staging, out)  # renaming onto an empty folder replaces it
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, retired)
    os.replace(staging, out)
    shutil.rmtree(retired)


def _read(registers: Sequence[tuple[str, Path]]) -> list[_Party]:
    if not registers:
        raise BadInput("give at least one (party, register path) to export")
    parties: list[_Party] = []
    for party, path in registers:
        if any(p.party == party for p in parties):
            raise BadInput(f"party '{party}' is given twice; give each party's register once")
        entries, report = read_register(Path(path), party)
        parties.append(_Party(party, Path(path).name, entries, report))
    return parties


def _document(parties: list[_Party], title: str, generated: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "title": title,
        "generated": generated,
        "registers": [
            {
                "party": p.party,
                "file": p.file,
                "head": None if p.head is None else {"seq": p.head.seq, "hash": p.head.hash},
                "verify": {"ok": p.report.ok, "entries": p.report.entries, "problems": list(p.report.problems)},
                "entries": [e.to_json() for e in p.entries],
            }
            for p in parties
        ],
    }


_TEMPLATES = environment("fedlink.governance")
_TEMPLATES.filters["num"] = lambda value: f"{value:.6g}"
_TEMPLATES.filters["px"] = lambda value: f"{value:.1f}"
_TEMPLATES.filters["slug"] = lambda text: "".join(c if c.isalnum() else "-" for c in str(text))


def _page(parties: list[_Party], title: str, generated: str) -> str:
    queries = [_query_row(number, query) for number, query in enumerate(_queries(parties), start=1)]
    own, others = _spending(parties)
    shown = {q["id"]: (q["number"], q["output"] is not None) for q in queries}
    projects = _projects(parties)
    titles = {p["id"]: str(p["title"]) for p in projects}
    return _TEMPLATES.get_template("register.html.j2").render(
        title=title,
        generated=generated,
        parties=parties,
        projects=projects,
        workflow=_workflow(parties),
        datasets=_datasets(parties),
        spending=_privacy_loss(own, others),
        chart=_chart(_series(own, others)),
        queries=queries,
        publications=published_outcomes(((p.party, e) for p in parties for e in p.entries), shown, titles),
        events=_events(parties),
    )


def _projects(parties: list[_Party]) -> list[dict[str, Any]]:
    """Each project once, as its latest record states it, with the parties that recorded it."""
    latest: dict[str, tuple[RegisterEntry, list[str]]] = {}
    for p in parties:
        for entry in p.entries:
            if entry.kind != "project":
                continue
            key = str(entry.fields.get("id", ""))
            previous, recorders = latest.get(key, (entry, []))
            if p.party not in recorders:
                recorders.append(p.party)
            latest[key] = (entry if entry.time >= previous.time else previous, recorders)
    rows = []
    for key in sorted(latest):
        entry, recorders = latest[key]
        f = entry.fields
        rows.append(
            {
                "id": key,
                "title": f.get("title", ""),
                "purpose": f.get("purpose", ""),
                "analysts": _strings(f.get("analysts")),
                "datasets": _strings(f.get("datasets")),
                "recorded_by": recorders,
            }
        )
    return rows


#: The steps of a project's life (``fedlink project ...``), by register entry kind: what the page calls them.
_WORKFLOW = {
    "project_applied": "applied",
    "project_approved": "approved by the node",
    "project_decision": "decision reported",
    "project_activated": "activated",
    "project_rejected": "rejected",
    "project_retired": "retired",
    "spine_reuse": "link spine reuse approved",
}
#: The state a coordinator's step leaves a project in.
_STATES = {"project_applied": "pending", "project_activated": "active", "project_rejected": "rejected"}


def _workflow(parties: list[_Party]) -> list[dict[str, Any]]:
    """Each applied-for project with every recorded step of its life (application, each node's decision,
    activation, rejection, retirement, spine reuse) in time order, and the state they leave it in."""
    found: dict[str, dict[str, Any]] = {}
    for p in parties:
        for entry in p.entries:
            if entry.kind not in _WORKFLOW:
                continue
            key = str(entry.fields.get("project", ""))
            project = found.setdefault(key, {"id": key, "title": "", "state": "", "applied": None, "steps": []})
            if entry.kind == "project_applied":
                project["title"] = str(entry.fields.get("title", ""))
                project["applied"] = {
                    "purposes": _strings(entry.fields.get("purposes")),
                    "public_benefit": str(entry.fields.get("public_benefit", "")),
                    "datasets": sorted((str(k), str(v)) for k, v in dict(entry.fields.get("datasets") or {}).items()),
                    "identifiers": _strings(entry.fields.get("identifiers")),
                    "outputs": _strings(entry.fields.get("outputs")),
                    "end_date": str(entry.fields.get("end_date", "")),
                }
            details = [(k, _cell(v)) for k, v in sorted(entry.fields.items()) if k not in ("project", "title")]
            project["steps"].append(
                {
                    "time": _time(entry),
                    "party": p.party,
                    "step": _WORKFLOW[entry.kind],
                    "kind": entry.kind,
                    "details": details,
                }
            )
    for project in found.values():
        project["steps"].sort(key=lambda step: step["time"].recorded)
        for step in project["steps"]:
            if step["kind"] == "project_retired":
                project["state"] = "retired"
            elif step["kind"] in _STATES and project["state"] != "retired":
                project["state"] = _STATES[step["kind"]]
    return [found[key] for key in sorted(found)]


def _datasets(parties: list[_Party]) -> list[tuple[str, list[str]]]:
    used: dict[str, set[str]] = {}
    for p in parties:
        for entry in p.entries:
            if entry.kind == "project":
                for dataset in _strings(entry.fields.get("datasets")):
                    used.setdefault(dataset, set()).add(str(entry.fields.get("id", "")))
    return [(name, sorted(used[name])) for name in sorted(used)]


def _queries(parties: list[_Party]) -> list[_Query]:
    """One row per query id: the fullest record of it (the one covering most nodes), and who recorded it."""
    by_id: dict[str, _Query] = {}
    order: list[str] = []
    for p in parties:
        for entry in p.entries:
            if entry.kind != "query":
                continue
            key = str(entry.fields.get("query_id", f"{p.party}#{entry.seq}"))
            known = by_id.get(key)
            if known is None:
                by_id[key] = _Query(entry, [p.party])
                order.append(key)
                continue
            if p.party not in known.recorded_by:
                known.recorded_by.append(p.party)
            if len(_loss(entry)) > len(_loss(known.entry)) or (
                known.entry.fields.get("released") is None and entry.fields.get("released") is not None
            ):
                known.entry = entry
    return sorted((by_id[k] for k in order), key=lambda q: q.entry.time)


def _loss(entry: RegisterEntry) -> dict[str, tuple[float, float]]:
    """``{node: (epsilon, rho)}`` from an entry's privacy_loss, skipping anything that is not a number."""
    raw = entry.fields.get("privacy_loss")
    loss: dict[str, tuple[float, float]] = {}
    if not isinstance(raw, Mapping):
        return loss
    for node, spent in raw.items():
        if isinstance(spent, Mapping):
            loss[str(node)] = (_number(spent.get("epsilon")), _number(spent.get("rho")))
    return loss


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return float(value)


@dataclass(frozen=True)
class _Spend:
    time: datetime
    query_id: str
    epsilon: float
    rho: float

    @property
    def charge(self) -> float:
        """What the ledgers charge for it, in rho (zCDP): rho + epsilon^2 / 2."""
        return self.rho + self.epsilon * self.epsilon / 2


def _spending(parties: list[_Party]) -> tuple[dict[str, list[_Spend]], dict[str, list[_Spend]]]:
    """Per node, released queries' privacy loss as the node's own register records it, and as the others do.

    Only released queries spend: a node reserves budget for a query and returns it when the query is
    refused or fails. A query recorded by several other parties counts once.
    """
    own: dict[str, list[_Spend]] = {}
    others: dict[str, dict[str, _Spend]] = {}
    for p in parties:
        for entry in p.entries:
            if entry.kind != "query" or entry.fields.get("status") != "released":
                continue
            for node, (epsilon, rho) in _loss(entry).items():
                spend = _Spend(_when(entry), _qid(entry), epsilon, rho)
                if node == p.party:
                    own.setdefault(node, []).append(spend)
                else:
                    others.setdefault(node, {}).setdefault(spend.query_id, spend)
    return own, {node: list(spends.values()) for node, spends in others.items()}


def _when(entry: RegisterEntry) -> datetime:
    try:
        moment = datetime.fromisoformat(entry.time)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Moment:
    """An entry's time to the second for the eye, with the exact recorded value kept in the markup."""

    recorded: str
    shown: str


def _time(entry: RegisterEntry) -> _Moment:
    moment = _when(entry)
    return _Moment(entry.time, entry.time if moment.year == 1 else moment.strftime("%Y-%m-%d %H:%M:%S"))


def _qid(entry: RegisterEntry) -> str:
    return str(entry.fields.get("query_id", f"seq {entry.seq}"))


def _series(own: dict[str, list[_Spend]], others: dict[str, list[_Spend]]) -> dict[str, list[_Spend]]:
    """Per node, in time order, its spending from its own register where published, else from the others'."""
    return {
        node: sorted(own.get(node) or others[node], key=lambda s: s.time) for node in sorted(set(own) | set(others))
    }


def _privacy_loss(own: dict[str, list[_Spend]], others: dict[str, list[_Spend]]) -> list[dict[str, Any]]:
    rows = []
    for node, shown in _series(own, others).items():
        mine, theirs = own.get(node), others.get(node)
        charge = sum(s.charge for s in shown)
        others_charge = sum(s.charge for s in theirs) if mine and theirs else None
        rows.append(
            {
                "node": node,
                "queries": len(shown),
                "charge": charge,
                "epsilon": sum(s.epsilon for s in shown),
                "rho": sum(s.rho for s in shown),
                "source": "its own register" if mine else "other parties' records",
                "others_charge": others_charge,
                "agree": others_charge is not None and math.isclose(others_charge, charge, rel_tol=1e-9, abs_tol=1e-12),
            }
        )
    return rows


def _chart(series: Mapping[str, list[_Spend]]) -> dict[str, Any]:
    """The geometry of the step chart of cumulative privacy loss (rho charged) per node (``chart.svg.j2``)."""
    width, height = 960, 360
    left, right, top, bottom = 70, 200, 20, 56
    plot_w, plot_h = width - left - right, height - top - bottom
    times = [s.time for spends in series.values() for s in spends]
    start, end = (min(times), max(times)) if times else (datetime.now(UTC), datetime.now(UTC))
    span = max((end - start).total_seconds(), 1.0)
    totals = {node: sum(s.charge for s in spends) for node, spends in series.items()}
    top_value = _nice_ceiling(max(totals.values(), default=0.0))

    def x(moment: datetime) -> float:
        return left + plot_w * (moment - start).total_seconds() / span

    def y(value: float) -> float:
        return top + plot_h * (1 - value / top_value)

    lines = []
    for i, (node, spends) in enumerate(series.items()):
        total, points, marks = 0.0, [(x(start), y(0))], []
        for spend in spends:
            points.append((x(spend.time), y(total)))
            total += spend.charge
            points.append((x(spend.time), y(total)))
            marks.append(
                {"x": x(spend.time), "y": y(total), "query_id": spend.query_id, "charge": spend.charge, "total": total}
            )
        points.append((x(end) if span > 1.0 else left + plot_w, y(total)))
        lines.append(
            {
                "node": node,
                "total": total,
                "colour": _COLOURS[i % len(_COLOURS)],
                "dash": _DASHES[i % len(_DASHES)],
                "points": points,
                "marks": marks,
                "legend_y": top + 14 + 22 * i,
            }
        )
    ticks = [start] if span <= 1.0 else [start + (end - start) * (i / 3) for i in range(4)]
    return {
        "width": width,
        "height": height,
        "left": left,
        "top": top,
        "right_edge": left + plot_w,
        "bottom_edge": top + plot_h,
        "axis_label_x": left + plot_w / 2,
        "axis_label_y": top + plot_h / 2,
        "gridlines": [(y(top_value * i / 4), top_value * i / 4) for i in range(5)],
        "ticks": [(x(moment), moment.strftime("%Y-%m-%d %H:%M")) for moment in ticks],
        "lines": lines,
    }


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    scale = 10 ** math.floor(math.log10(value))
    return next(m * scale for m in (1, 2, 2.5, 5, 10) if m * scale >= value)


def _query_row(number: int, query: _Query) -> dict[str, Any]:
    released = query.get("released")
    output: dict[str, Any] | None = None
    if released is not None:
        columns, rows = (
            (released.get("columns"), released.get("rows")) if isinstance(released, Mapping) else (None, None)
        )
        if isinstance(columns, list) and isinstance(rows, list) and all(isinstance(r, list) for r in rows):
            output = {
                "columns": [str(c) for c in columns],
                "rows": [[(_cell(v), _numeric(v)) for v in row] for row in rows],
            }
        else:
            output = {"columns": None, "raw": json.dumps(released, ensure_ascii=False)}
    return {
        "number": number,
        "time": _time(query.entry),
        "id": _qid(query.entry),
        "analyst": query.get("analyst") or "",
        "project": query.get("project") or "",
        "purpose": query.get("purpose") or "",
        "query": query.get("query") or "",
        "pet": query.get("pet") or "",
        "loss": [(node, epsilon, rho) for node, (epsilon, rho) in sorted(_loss(query.entry).items())],
        "status": query.get("status") or "unknown",
        "reason": query.get("reason") or "",
        "output": output,
        "recorded_by": query.recorded_by,
    }


def _events(parties: list[_Party]) -> list[dict[str, Any]]:
    return [
        {
            "time": _time(entry),
            "party": p.party,
            "kind": entry.kind,
            "details": [(k, _cell(v)) for k, v in sorted(entry.fields.items())],
        }
        for p in parties
        for entry in p.entries
        if entry.kind not in ("project", "query", "publication") and entry.kind not in _WORKFLOW  # own sections
    ]


def _strings(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [] if value is None else [str(value)]


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.2f}"
    if isinstance(value, int | str):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
