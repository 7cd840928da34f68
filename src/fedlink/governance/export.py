"""The public export of the transparency registers: a static HTML page and the same data as JSON.

:func:`export_register` reads the coordinator's and the nodes' registers, verifies each one, and
writes ``index.html`` (self-contained: inline CSS and an inline SVG chart, no script, no external
address, a Content-Security-Policy that forbids both) and ``register.json`` (every entry of every
register, with its verify report and head hash). Publishing the head hashes is what lets anyone
detect a register rewritten later (see :mod:`fedlink.governance.register`).

Every value from a register is escaped before it reaches the page: query text, purposes and names
are user input.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedlink.errors import BadInput
from fedlink.governance.register import RegisterEntry, VerifyReport, read_register

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


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page(parties: list[_Party], title: str, generated: str) -> str:
    queries = _queries(parties)
    sections = [
        ("verification", "Verification", _verification(parties)),
        ("projects", "Projects", _projects(parties)),
        ("datasets", "Datasets used", _datasets(parties)),
        ("privacy-loss", "Privacy loss spent", _privacy_loss(parties)),
        ("queries", "Queries", _query_table(queries)),
        ("outputs", "Released outputs", _outputs(queries)),
        ("events", "Other recorded events", _events(parties)),
    ]
    nav = "".join(f'<li><a href="#{key}">{_e(name)}</a></li>' for key, name, _ in sections)
    body = "\n".join(
        f'<section id="{key}" aria-labelledby="{key}-h"><h2 id="{key}-h">{_e(name)}</h2>\n{content}</section>'
        for key, name, content in sections
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{_e(title)}</h1>
<p>Generated {_e(generated)} from {len(parties)} register{"s" if len(parties) != 1 else ""}. Each party keeps
its own append-only register; every entry carries the SHA-256 hash of the entry before it, so an entry
cannot be changed, removed or inserted without breaking the chain. Keep the head hashes below: a later
copy of a register whose chain does not pass through them has been rewritten. Registers hold who asked,
why, what was asked and what was released, never identifiers or row-level data.</p>
<nav aria-label="Contents"><ul>{nav}</ul></nav>
</header>
<main>
{body}
</main>
</body>
</html>
"""


def _verification(parties: list[_Party]) -> str:
    rows = []
    details = []
    for p in parties:
        head = "none yet" if p.head is None else f"seq {p.head.seq}<br><code class=hash>{_e(p.head.hash)}</code>"
        if p.report.ok:
            result = '<span class="ok">verified</span>'
        else:
            count = len(p.report.problems)
            result = f'<a class="bad" href="#problems-{_slug(p.party)}">{count} problem{"s" if count != 1 else ""}</a>'
            items = "".join(f"<li>{_e(problem)}</li>" for problem in p.report.problems)
            details.append(
                f'<h3 id="problems-{_slug(p.party)}">Problems in the register kept by {_e(p.party)}</h3>'
                f"<ul>{items}</ul>"
            )
        rows.append(
            f"<tr><th scope=row>{_e(p.party)}</th><td>{_e(p.file)}</td><td class=num>{p.report.entries}</td>"
            f"<td>{head}</td><td>{result}</td></tr>"
        )
    table = _table(
        "Each register checked: hashes, chain and head file",
        ["Kept by", "File", "Entries", "Head (last entry)", "Result"],
        rows,
    )
    return table + "".join(details)


def _projects(parties: list[_Party]) -> str:
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
    if not latest:
        return "<p>No projects recorded.</p>"
    rows = []
    for key in sorted(latest):
        entry, recorders = latest[key]
        f = entry.fields
        rows.append(
            f"<tr><th scope=row>{_e(key)}</th><td>{_e(f.get('title', ''))}</td><td>{_e(f.get('purpose', ''))}</td>"
            f"<td>{_list(f.get('analysts'))}</td><td>{_list(f.get('datasets'))}</td><td>{_list(recorders)}</td></tr>"
        )
    return _table(
        "Approved projects and what they are for",
        ["Project", "Title", "Purpose", "Analysts", "Datasets", "Recorded by"],
        rows,
    )


def _datasets(parties: list[_Party]) -> str:
    used: dict[str, set[str]] = {}
    for p in parties:
        for entry in p.entries:
            if entry.kind == "project":
                for dataset in _strings(entry.fields.get("datasets")):
                    used.setdefault(dataset, set()).add(str(entry.fields.get("id", "")))
    if not used:
        return "<p>No datasets named by any project.</p>"
    rows = [f"<tr><th scope=row>{_e(name)}</th><td>{_list(sorted(used[name]))}</td></tr>" for name in sorted(used)]
    return _table("Datasets and the projects approved to use them", ["Dataset", "Projects"], rows)


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


def _time(entry: RegisterEntry) -> str:
    """The entry's time to the second, with the exact recorded value kept in the markup."""
    moment = _when(entry)
    shown = entry.time if moment.year == 1 else moment.strftime("%Y-%m-%d %H:%M:%S")
    return f'<time datetime="{_e(entry.time)}">{_e(shown)}</time>'


def _qid(entry: RegisterEntry) -> str:
    return str(entry.fields.get("query_id", f"seq {entry.seq}"))


def _privacy_loss(parties: list[_Party]) -> str:
    own, others = _spending(parties)
    nodes = sorted(set(own) | set(others))
    if not nodes:
        return "<p>No privacy loss has been spent: no query has been released.</p>" + _chart({})
    series = {node: sorted(own.get(node) or others[node], key=lambda s: s.time) for node in nodes}
    rows = []
    for node in nodes:
        mine, theirs = own.get(node), others.get(node)
        shown = series[node]
        epsilon = sum(s.epsilon for s in shown)
        rho = sum(s.rho for s in shown)
        charge = sum(s.charge for s in shown)
        source = "its own register" if mine else "other parties' records"
        if mine and theirs:
            other = sum(s.charge for s in theirs)
            agree = math.isclose(other, charge, rel_tol=1e-9, abs_tol=1e-12)
            check = f"{_num(other)} " + (
                '<span class="ok">agrees</span>' if agree else '<span class="bad">differs</span>'
            )
        else:
            check = "—"
        rows.append(
            f"<tr><th scope=row>{_e(node)}</th><td class=num>{len(shown)}</td><td class=num>{_num(charge)}</td>"
            f"<td class=num>{_num(epsilon)}</td><td class=num>{_num(rho)}</td><td>{source}</td><td>{check}</td></tr>"
        )
    table = _table(
        "Total privacy loss per node, from released queries",
        [
            "Node",
            "Queries",
            "Charged (ρ, zCDP)",
            "Declared as ε",
            "Declared as ρ",
            "Source",
            "Other parties' record of the charge",
        ],
        rows,
    )
    note = (
        "<p>Cumulative privacy loss per node over time in zCDP's ρ, the ledgers' one currency (a query declared "
        "as ε-DP is charged ρ = ε²/2), counting released queries only (budget reserved for a query that is "
        "refused or fails is returned). Each node's own register is used where it is published here.</p>"
    )
    return note + _chart(series) + table


def _chart(series: Mapping[str, list[_Spend]]) -> str:
    """A step chart of cumulative privacy loss (rho charged) per node, as inline SVG."""
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

    parts = [
        f'<svg class="chart" role="img" aria-labelledby="chart-title chart-desc" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" '
        'font-size="12">',
        '<title id="chart-title">Cumulative privacy loss (rho, zCDP) per node over time</title>',
        '<desc id="chart-desc">'
        + _e(
            "; ".join(f"{node}: {_num(total)} in {len(series[node])} queries" for node, total in totals.items())
            or "No privacy loss spent yet."
        )
        + "</desc>",
    ]
    for i in range(5):
        value = top_value * i / 4
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#ddd"/>'
            f'<text x="{left - 8}" y="{y(value) + 4:.1f}" text-anchor="end">{_e(_num(value))}</text>'
        )
    ticks = [start] if span <= 1.0 else [start + (end - start) * (i / 3) for i in range(4)]
    for moment in ticks:
        parts.append(
            f'<text x="{x(moment):.1f}" y="{top + plot_h + 18}" text-anchor="middle">'
            f"{_e(moment.strftime('%Y-%m-%d %H:%M'))}</text>"
        )
    parts.append(
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#333"/>'
        f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#333"/>'
        f'<text x="{left + plot_w / 2}" y="{height - 10}" text-anchor="middle">time (UTC)</text>'
        f'<text transform="translate(16 {top + plot_h / 2}) rotate(-90)" text-anchor="middle">cumulative ρ</text>'
    )
    for i, (node, spends) in enumerate(series.items()):
        colour, dash = _COLOURS[i % len(_COLOURS)], _DASHES[i % len(_DASHES)]
        total, points, marks = 0.0, [f"{x(start):.1f},{y(0):.1f}"], []
        for spend in spends:
            points.append(f"{x(spend.time):.1f},{y(total):.1f}")
            total += spend.charge
            points.append(f"{x(spend.time):.1f},{y(total):.1f}")
            marks.append(
                f'<circle cx="{x(spend.time):.1f}" cy="{y(total):.1f}" r="3" fill="{colour}">'
                f"<title>{_e(f'{node}: {spend.query_id} spent ρ {_num(spend.charge)}, total {_num(total)}')}</title>"
                "</circle>"
            )
        points.append(f"{x(end) if span > 1.0 else left + plot_w:.1f},{y(total):.1f}")
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2.5"{dash_attr} points="{" ".join(points)}"/>'
            + "".join(marks)
        )
        ly = top + 14 + 22 * i
        parts.append(
            f'<line x1="{left + plot_w + 16}" x2="{left + plot_w + 46}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" '
            f'stroke-width="2.5"{dash_attr}/>'
            f'<text x="{left + plot_w + 52}" y="{ly}">{_e(node)} ({_e(_num(total))})</text>'
        )
    parts.append("</svg>")
    return '<figure class="chart">' + "".join(parts) + "</figure>"


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    scale = 10 ** math.floor(math.log10(value))
    return next(m * scale for m in (1, 2, 2.5, 5, 10) if m * scale >= value)


def _query_table(queries: list[_Query]) -> str:
    if not queries:
        return "<p>No queries recorded.</p>"
    rows = []
    for number, query in enumerate(queries, start=1):
        loss = _loss(query.entry)
        spent = "<br>".join(f"{_e(n)}: ε {_num(e)}, ρ {_num(r)}" for n, (e, r) in sorted(loss.items())) or "—"
        status = _e(query.get("status") or "unknown")
        if query.get("released") is not None:
            status = f'<a href="#output-{number}">{status}</a>'
        if query.get("reason"):
            status += f"<br><small>{_e(query.get('reason'))}</small>"
        rows.append(
            f'<tr id="query-{number}"><td>{_time(query.entry)}</td><th scope=row>{_e(_qid(query.entry))}</th>'
            f"<td>{_e(query.get('analyst') or '')}</td><td>{_e(query.get('project') or '')}</td>"
            f"<td>{_e(query.get('purpose') or '')}</td><td><pre><code>{_e(query.get('query') or '')}</code></pre></td>"
            f"<td>{_e(query.get('pet') or '')}</td><td>{spent}</td><td>{status}</td>"
            f"<td>{_list(query.recorded_by)}</td></tr>"
        )
    return _table(
        "Every query asked, in time order",
        [
            "Time (UTC)",
            "Query",
            "Analyst",
            "Project",
            "Purpose",
            "Query text",
            "PET",
            "Privacy loss",
            "Status",
            "Recorded by",
        ],
        rows,
    )


def _outputs(queries: list[_Query]) -> str:
    blocks = []
    for number, query in enumerate(queries, start=1):
        released = query.get("released")
        if released is None:
            continue
        heading = f"Query {_e(_qid(query.entry))} (project {_e(query.get('project') or '—')})"
        intro = f"<p>{_e(query.get('purpose') or '')}</p><pre><code>{_e(query.get('query') or '')}</code></pre>"
        columns, rows = (
            (released.get("columns"), released.get("rows")) if isinstance(released, Mapping) else (None, None)
        )
        if isinstance(columns, list) and isinstance(rows, list) and all(isinstance(r, list) for r in rows):
            body = ["<tr>" + "".join(f"<td{_align(v)}>{_e(_cell(v))}</td>" for v in row) + "</tr>" for row in rows]
            table = _table(f"Released output of query {_qid(query.entry)}", [str(c) for c in columns], body)
        else:
            table = f"<pre><code>{_e(json.dumps(released, ensure_ascii=False))}</code></pre>"
        blocks.append(f'<article id="output-{number}"><h3>{heading}</h3>{intro}{table}</article>')
    if not blocks:
        return "<p>No outputs released.</p>"
    return '<p>Values exactly as released to the analyst. "—" means no value was released for that cell.</p>' + "".join(
        blocks
    )


def _events(parties: list[_Party]) -> str:
    rows = []
    for p in parties:
        for entry in p.entries:
            if entry.kind in ("project", "query"):
                continue
            detail = "".join(f"<dt>{_e(k)}</dt><dd>{_e(_cell(v))}</dd>" for k, v in sorted(entry.fields.items()))
            rows.append(
                f"<tr><td>{_time(entry)}</td><th scope=row>{_e(p.party)}</th><td>{_e(entry.kind)}</td>"
                f"<td><dl>{detail}</dl></td></tr>"
            )
    if not rows:
        return "<p>No other events recorded.</p>"
    return _table("Other events: start-ups, test mode and the like", ["Time (UTC)", "Party", "Kind", "Details"], rows)


def _table(caption: str, headers: Iterable[str], rows: list[str]) -> str:
    head = "".join(f"<th scope=col>{_e(h)}</th>" for h in headers)
    return (
        f'<div class="scroll" role="region" aria-label="{_e(caption)}" tabindex="0"><table><caption>{_e(caption)}'
        f"</caption><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _strings(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [] if value is None else [str(value)]


def _list(value: Any) -> str:
    return ", ".join(_e(v) for v in _strings(value))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)


def _num(value: float) -> str:
    return f"{value:.6g}"


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


def _align(value: Any) -> str:
    return " class=num" if isinstance(value, int | float) and not isinstance(value, bool) else ""


_CSS = """
:root { color-scheme: light; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: #1b1b1b; background: #fff; margin: 0 auto; max-width: 1200px; padding: 1.5rem; }
h1 { font-size: 2rem; margin: 0 0 .5rem; }
h2 { font-size: 1.5rem; border-bottom: 2px solid #1b1b1b; padding-bottom: .25rem; margin-top: 2.5rem; }
h3 { font-size: 1.15rem; margin-top: 1.5rem; }
nav ul { display: flex; flex-wrap: wrap; gap: .25rem 1.25rem; list-style: none; padding: 0; }
a { color: #0b57a4; }
a:focus, .scroll:focus { outline: 3px solid #ffbf47; outline-offset: 2px; }
.scroll { overflow-x: auto; margin: .75rem 0; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
caption { text-align: left; font-weight: 600; padding: .25rem 0; }
th, td { border: 1px solid #b1b4b6; padding: .35rem .5rem; text-align: left; vertical-align: top; }
thead th { background: #f3f2f1; }
tbody tr:nth-child(even) { background: #fafafa; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85rem; }
code.hash { overflow-wrap: anywhere; }
.ok { color: #00703c; font-weight: 600; }
.bad { color: #b10e1e; font-weight: 600; }
figure.chart { margin: 1rem 0; overflow-x: auto; }
svg.chart { max-width: 100%; height: auto; background: #fff; }
dl { margin: 0; display: grid; grid-template-columns: max-content 1fr; gap: 0 .75rem; }
dt { font-weight: 600; } dd { margin: 0; }
article { margin-bottom: 1.5rem; }
"""
