"""A project's checklist (``fedlink project checklist``): every participating node's contacts and the
teams to consult there (from each node's ``[contacts]``), the legal gateway claimed for each dataset and
those the dataset declares, the identifiers requested, and where each node's approval stands.

Rendered from Jinja2 templates: HTML with autoescaping on; Markdown with every value from an
application or a node escaped for Markdown (so a title cannot inject markup or links into the page a
Markdown renderer makes of it).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from jinja2 import Environment, PackageLoader, StrictUndefined

from fedlink.errors import BadInput
from fedlink.protocol.projects import ProjectRecord
from fedlink.templating import environment

ChecklistFormat = Literal["md", "html"]
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~&])")


def markdown_text(value: Any) -> str:
    """``value`` as literal Markdown text: special characters escaped, on one line."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))


_HTML = environment("fedlink.governance")
_MARKDOWN = Environment(
    loader=PackageLoader("fedlink.governance", "templates"),
    autoescape=False,  # Markdown, not HTML: every value goes through the `md` filter instead
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_MARKDOWN.filters["md"] = markdown_text


def checklist_rows(record: ProjectRecord) -> list[dict[str, Any]]:
    """One entry per node that must approve the project: its contacts, datasets and decision."""
    app = record.application
    rows = []
    for node in record.approvers:
        decision = record.decision(node)
        datasets = [
            {
                "dataset": claim.dataset,
                "claimed": claim.legal_gateway,
                "declared": list(decision.gateways.get(claim.table, ())) if decision else [],
            }
            for claim in app.datasets
            if claim.node == node
        ]
        rows.append(
            {
                "node": node,
                "contacts": decision.contacts if decision else None,
                "datasets": datasets,
                "spine_only": not datasets,
                "decision": decision.decision if decision else "not reported yet (the node has not been reached)",
                "decided_at": decision.decided_at if decision else "",
                "reason": decision.reason if decision else "",
                "conditions": [
                    (name, value)
                    for name, value in (decision.public_conditions() if decision else {}).items()
                    if value is not None
                ],
            }
        )
    return rows


def render_checklist(record: ProjectRecord, fmt: str = "md") -> str:
    """The checklist of ``record`` as Markdown (``md``) or a self-contained HTML page (``html``)."""
    if fmt not in ("md", "html"):
        raise BadInput(f"unknown checklist format {fmt!r}; use md or html")
    templates = _HTML if fmt == "html" else _MARKDOWN
    template = templates.get_template(f"checklist.{fmt}.j2")
    return template.render(record=record, app=record.application, nodes=checklist_rows(record))
