"""What the registers record of an analyst's text: query text without comments, bounded in length, and
the entry for a request refused before anything was reserved.

Registers are published, so free text an analyst typed that the query does not need (SQL comments and
optimiser hints, which can hold anything, names included) never reaches them. A refused request's
query was never checked against the catalogue, so its literals may be anything an analyst typed
(identifier probing puts names and numbers there): its entry keeps the query's shape with every
literal masked as ``?``, and those literals are masked in its reason too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError
from sqlglot.errors import SqlglotError
from sqlglot.tokens import Token, Tokenizer, TokenType

from fedlink.errors import BadInput, Fault, FedlinkError, QueryError
from fedlink.transparency.register import Register, appended_here

log = logging.getLogger("fedlink.governance")
#: The analysts' requests whose refusals are recorded; the others (catalogue, budget, register) use no data.
RECORDED_REQUESTS = frozenset({"query", "model", "link"})

#: Longest query text a register records; a longer one is recorded by its length and SHA-256 only.
MAX_RECORDED_QUERY = 4000
#: Longest reason a refusal entry records.
MAX_RECORDED_REASON = 500
_LITERALS = frozenset(
    getattr(TokenType, name)
    for name in (
        "STRING",
        "NUMBER",
        "BIT_STRING",
        "HEX_STRING",
        "BYTE_STRING",
        "NATIONAL_STRING",
        "NATIONAL_RAW_STRING",
        "RAW_STRING",
        "HEREDOC_STRING",
        "UNICODE_STRING",
    )
)
_MASK = "?"
#: Longest refused text whose shape is recorded; beyond it, its length only (tokenising megabytes of
#: refused text would cost the coordinator seconds of CPU per refusal).
_SHAPE_LIMIT = 16 * MAX_RECORDED_QUERY
#: A quoted fragment in a message: how errors quote text back.
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


def _tokens(text: str) -> list[Token]:
    try:
        return Tokenizer().tokenize(text)
    except SqlglotError as exc:
        raise QueryError("the query text cannot be read as SQL (an unterminated string or comment?)") from exc


def _joined(text: str, tokens: Iterable[Token], mask_literals: bool = False) -> str:
    """The tokens' own text, one space where comments, hints or whitespace stood between them."""
    parts: list[str] = []
    end = -1
    for token in tokens:
        if token.token_type == TokenType.HINT:
            continue  # /*+ ... */ is a comment to everything but a query optimiser
        if parts and token.start > end + 1:
            parts.append(" ")
        piece = text[token.start : token.end + 1]
        if token.token_type in _LITERALS:
            parts.append(_MASK if mask_literals else piece)
        else:  # a keyword of several words ("GROUP\n  BY") is one token: one space between its words
            parts.append(piece if token.token_type == TokenType.IDENTIFIER else " ".join(piece.split()))
        end = token.end
    return "".join(parts)


def without_comments(text: str) -> str:
    """``text`` with its SQL comments (``--``, ``/* */``) and hints removed and the space between tokens
    made one space; literals and quoted names are kept exactly. Raises :class:`QueryError` if the
    text cannot be tokenised."""
    return _joined(text, _tokens(text))


def bounded(text: str) -> str:
    """``text`` if it is short enough to record; otherwise its length and SHA-256 instead."""
    if len(text) <= MAX_RECORDED_QUERY:
        return text
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f"[not recorded: {len(text)} characters, over the limit of {MAX_RECORDED_QUERY}; sha256 {digest}]"


def refusal_fields(
    *,
    query_id: str,
    analyst: str,
    request: str,
    project: str | None,
    text: str | None,
    pet: str | None,
    status: str,
    error: FedlinkError,
) -> dict[str, Any]:
    """The register entry of a ``request`` ("query", "model" or "link") refused or failed before anything
    was reserved: who, for which project, why, and the query's shape with its literals masked.

    The keys are those of a planned query's entry, so the public page and the cross-check read both alike;
    ``privacy_loss`` is empty because no node was asked to spend anything."""
    shown: str | None = None
    reason = error.message
    if text is not None:
        tokens, unread = _shape(text)
        if tokens is None:
            shown = f"[not recorded: {len(text)} characters {unread}]"
            reason = _QUOTED.sub(f"'{_MASK}'", reason)  # the message may quote the text back
        else:
            shown = bounded(_joined(text, tokens, mask_literals=True))
            typed = [t.text for t in tokens if t.token_type in _LITERALS] + [
                c.strip() for t in tokens for c in t.comments
            ]
            reason = _masked(reason, typed)
    return {
        "query_id": query_id,
        "analyst": analyst,
        "project": None if project is None else _clipped(project, 200),
        "purpose": None,
        "request": request,
        "query": shown,
        "pet": pet,
        "privacy_loss": {},
        "status": status,
        "reason": _clipped(reason, MAX_RECORDED_REASON),
        "released": None,
        "encrypted_for": None,
    }


def _shape(text: str) -> tuple[list[Token] | None, str]:
    """The tokens of a refused text, or None and why it is not read."""
    if len(text) > _SHAPE_LIMIT:
        return None, "too long to read"
    try:
        return _tokens(text), ""
    except QueryError:
        return None, "that cannot be read as SQL"


def _masked(message: str, typed: Iterable[str]) -> str:
    """``message`` with every piece of the analyst's typed free text (literals, comments) masked."""
    for piece in sorted({p for p in typed if len(p) >= 2}, key=len, reverse=True):
        message = message.replace(piece, _MASK)
    return re.sub(r"/\*.*?\*/", "", message)  # comments sqlglot writes back when it quotes a fragment


def _clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextmanager
def refusals_recorded(register: Register, analyst: str, request: str, body: bytes) -> Iterator[None]:
    """Run an analyst's ``request`` (its wire kind and JSON body); if it raises before it has recorded
    itself on ``register`` (a query or link entry, as a query that reached the nodes does), record it as
    refused (bad input, policy) or failed (any other error) and raise the error on.

    So every query, model or link request the coordinator turns down before reserving anything is on
    its register: unknown or unapproved project, identifier probing, malformed SQL, a loss not declared.
    The block must not span a ``yield`` (see :func:`appended_here`)."""
    if request not in RECORDED_REQUESTS:
        yield
        return
    with appended_here() as appended:
        try:
            yield
        except Exception as exc:
            recorded = any(e.party == register.party and e.kind in ("query", "link") for e in appended)
            if not recorded:
                _record_refusal(register, analyst, request, body, exc)
            raise


def _record_refusal(register: Register, analyst: str, request: str, body: bytes, exc: Exception) -> None:
    error: FedlinkError
    if isinstance(exc, FedlinkError):
        error = exc
    elif isinstance(exc, ValidationError):
        error = BadInput("malformed request")
    else:
        error = Fault(f"the coordinator failed ({type(exc).__name__})")
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    project, text, pet = request_summary(request, parsed if isinstance(parsed, dict) else {})
    fields = refusal_fields(
        query_id=uuid.uuid4().hex,
        analyst=analyst,
        request=request,
        project=project,
        text=text,
        pet=pet,
        status="refused" if isinstance(error, BadInput) else "failed",
        error=error,
    )
    try:
        register.append("query", fields)
    except FedlinkError as failure:  # the analyst still gets the original error
        log.error("could not record a refused %s on the register: %s", request, failure.message)


def request_summary(kind: str, body: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """``(project, text, pet)`` as an analyst's request of ``kind`` ("query", "model", "link") gave them,
    read leniently from its JSON body (a malformed request still gets an entry)."""

    def text_of(key: str) -> str | None:
        value = body.get(key)
        return value if isinstance(value, str) else None

    project = text_of("project")
    if kind == "model":
        formula, table, family = text_of("formula"), text_of("table"), text_of("family") or "logistic"
        text = None if formula is None else f"MODEL {family} {formula} ON {table or ''}"
        return project, text, "secagg+dp"
    if kind == "query":
        return project, text_of("sql"), text_of("pet") or "he+dp"
    return project, None, None
