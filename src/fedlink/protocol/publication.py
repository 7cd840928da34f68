"""A publication: an analyst's plain-language summary of a project's released outputs, for the public.

The analyst sends a :class:`PublishRequest`; the coordinator checks it against its project registry
and its query journal, stores the :class:`Publication` and records it on its transparency register,
from which the public register page shows it. Per output, a publication holds only what the
register's entry of that query already makes public (the query text, its PET, the datasets it read
and the privacy loss at each node), never a value: so never a suppressed value, nor anything row level.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from fedlink.errors import BadInput
from fedlink.frozen import Frozen
from fedlink.protocol.tasks import PrivacyLoss

#: The kind of a publication's entry on the coordinator's transparency register.
REGISTER_KIND = "publication"
#: Longest summary a publication holds: a few paragraphs, read by the public beside the outputs.
MAX_SUMMARY_CHARS = 5000
#: Most outputs one publication may name.
MAX_OUTPUTS = 100
#: Longest result id accepted (fedlink's are 32 hex digits).
MAX_RESULT_ID_CHARS = 64

#: What kind of query produced an output: SQL over one table, a LINK query, or a model.
OutputKind = Literal["horizontal", "linked", "model"]
ResultId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_RESULT_ID_CHARS)]


def check_summary(text: object) -> str:
    """``text`` as a publication's summary, stripped of surrounding space: plain Unicode text (new lines
    and tabs allowed, no other control character), not empty, at most :data:`MAX_SUMMARY_CHARS` long;
    a :class:`BadInput` otherwise."""
    if not isinstance(text, str):
        raise BadInput(f"the `summary` must be text, not {type(text).__name__}")
    summary = text.strip()
    if not summary:
        raise BadInput("the `summary` is empty; say in plain language what the outputs show")
    if len(summary) > MAX_SUMMARY_CHARS:
        raise BadInput(
            f"the `summary` is {len(summary):,} characters long, more than the limit of {MAX_SUMMARY_CHARS:,}; "
            "shorten it"
        )
    for character in summary:
        category = unicodedata.category(character)
        if (category == "Cc" and character not in "\n\t") or category == "Cs":
            raise BadInput(f"the `summary` holds the control character U+{ord(character):04X}; write plain text")
    return summary


class PublishRequest(Frozen):
    """An analyst's request to publish ``summary`` for ``results`` of ``project`` (empty: every output
    of the project released so far)."""

    project: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    summary: Annotated[str, StringConstraints(max_length=4 * MAX_SUMMARY_CHARS)]
    results: tuple[ResultId, ...] = Field(default=(), max_length=MAX_OUTPUTS)


class PublishedOutput(Frozen):
    """One released output as a publication shows it: what was asked, of which data, at what privacy loss."""

    query_id: str
    kind: OutputKind
    #: The query text as the register records it (comment-free, bounded in length).
    query: str
    pet: str
    #: The datasets (``node.table``) the output was computed from.
    datasets: tuple[str, ...]
    #: The privacy loss each node spent on it.
    privacy_loss: dict[str, PrivacyLoss]


class Publication(Frozen):
    """A summary published for a project's released outputs. A later publication of the same project
    that names any of the same outputs supersedes it (``supersedes`` names the ones it replaced); both
    stay on the register."""

    publication_id: str
    project: str
    analyst: str
    #: When the coordinator stored it (ISO 8601, UTC).
    published_at: str
    summary: str
    outputs: tuple[PublishedOutput, ...]
    supersedes: tuple[str, ...] = ()

    @property
    def query_ids(self) -> tuple[str, ...]:
        return tuple(output.query_id for output in self.outputs)

    def register_fields(self) -> dict[str, Any]:
        """The publication as its register entry records it."""
        return self.model_dump(mode="json")


#: The kind of a public catalogue's entry on the coordinator's transparency register.
CATALOGUE_KIND = "catalogue_published"
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class CatalogueRecord(Frozen):
    """A public catalogue export as the coordinator's register records it: the SHA-256 of each file
    written and the datasets it describes, so that anyone holding a copy of the catalogue can check it
    is the one the federation published, and when. It holds metadata digests only, never a value."""

    #: File name (``index.html``, ``catalogue.jsonld``, ``datapackage.json``) -> SHA-256, hex.
    files: dict[Literal["index.html", "catalogue.jsonld", "datapackage.json"], Sha256]
    #: ``node.table`` of every dataset the catalogue lists.
    datasets: tuple[Annotated[str, StringConstraints(min_length=3, max_length=200)], ...] = Field(max_length=10_000)
    title: Annotated[str, StringConstraints(max_length=500)] = ""
