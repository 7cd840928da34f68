"""Published outcomes on the public register page: each publication's plain-language summary beside
the outputs it is about and the privacy loss that produced them (``templates/_publications.html.j2``).

The values come from the registers' ``publication`` entries (see :mod:`fedlink.coordinator.publications`),
read as :class:`~fedlink.protocol.publication.Publication`; an entry that is not one is listed as
unreadable rather than guessed at. Summaries are analysts' text: the template escapes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from fedlink.protocol.publication import REGISTER_KIND, Publication
from fedlink.transparency.register import RegisterEntry

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def published_outcomes(
    entries: Iterable[tuple[str, RegisterEntry]],
    queries: Mapping[str, tuple[int, bool]],
    titles: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Each publication recorded in ``entries`` (``(party, entry)``), newest first, once, with the parties
    that recorded it; ``queries`` gives, per query id on the page, its row number and whether its
    released values are shown there (for links from each output to its query and values); ``titles``
    the projects' titles by id."""
    found: dict[str, tuple[RegisterEntry, Publication | None, list[str]]] = {}
    for party, entry in entries:
        if entry.kind != REGISTER_KIND:
            continue
        try:
            publication: Publication | None = Publication.model_validate(entry.fields)
        except ValidationError:
            publication = None
        key = publication.publication_id if publication else f"{party}#{entry.seq}"
        _, _, recorders = found.setdefault(key, (entry, publication, []))
        if party not in recorders:
            recorders.append(party)
    superseded: dict[str, str] = {}
    for _, publication, _ in found.values():
        if publication is not None:
            for older in publication.supersedes:
                superseded.setdefault(older, publication.publication_id)
    rows = [
        _row(entry, publication, recorders, superseded, queries, titles or {})
        for entry, publication, recorders in found.values()
    ]
    return sorted(rows, key=lambda row: row["time"].recorded, reverse=True)


@dataclass(frozen=True)
class _Moment:
    """An entry's time to the second for the eye, with the exact recorded value kept in the markup."""

    recorded: str
    shown: str

    @classmethod
    def of(cls, entry: RegisterEntry) -> _Moment:
        try:
            shown = datetime.fromisoformat(entry.time).strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            shown = entry.time
        return cls(entry.time, shown)


def _row(
    entry: RegisterEntry,
    publication: Publication | None,
    recorders: list[str],
    superseded: Mapping[str, str],
    queries: Mapping[str, tuple[int, bool]],
    titles: Mapping[str, str],
) -> dict[str, Any]:
    if publication is None:
        return {"time": _Moment.of(entry), "readable": False, "seq": entry.seq, "recorded_by": recorders}
    outputs = []
    charged: dict[str, float] = {}
    for output in publication.outputs:
        number, shown = queries.get(output.query_id, (None, False))
        for node, loss in output.privacy_loss.items():
            charged[node] = charged.get(node, 0.0) + loss.rho + loss.epsilon * loss.epsilon / 2
        outputs.append(
            {
                "id": output.query_id,
                "number": number,
                "values_shown": shown,
                "kind": output.kind,
                "query": output.query,
                "pet": output.pet,
                "datasets": list(output.datasets),
                "loss": [(node, loss.epsilon, loss.rho) for node, loss in sorted(output.privacy_loss.items())],
            }
        )
    return {
        "time": _Moment.of(entry),
        "readable": True,
        "id": publication.publication_id,
        "project": publication.project,
        "project_title": titles.get(publication.project, ""),
        "analyst": publication.analyst,
        "paragraphs": [p.strip() for p in _PARAGRAPH_BREAK.split(publication.summary) if p.strip()],
        "outputs": outputs,
        "charged": sorted(charged.items()),
        "supersedes": list(publication.supersedes),
        "superseded_by": superseded.get(publication.publication_id),
        "recorded_by": recorders,
    }
