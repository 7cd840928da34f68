"""Wire audit: every message that crosses between parties is recorded, and none carries an
identifier or a row-level value from the departments' data."""

from __future__ import annotations

import contextlib
from pathlib import Path

import fedlink
from fedlink.wire import audit

from ..conftest import NODES, find_leaks, identifier_values, start_federation

QUERIES = [
    "SELECT region, COUNT(*), AVG(duration_days) FROM support_episodes GROUP BY region",
    "SELECT fsm, sen, COUNT(*), SUM(attainment8) FROM pupils GROUP BY fsm, sen",
    "SELECT benefit, COUNT(*) FROM claims WHERE start_year >= 2015 GROUP BY benefit",
    "SELECT HISTOGRAM(age_at_diagnosis) FROM diagnoses WHERE severe = 1",
    "SELECT offence_group, AVG(sentence_months) FROM sentences GROUP BY offence_group",
    "SELECT COUNT(*) FROM pupils WHERE first_name = 'x'",  # refused, still audited
]


def test_no_identifier_crosses_the_wire(workdir: Path) -> None:
    identifiers = identifier_values(workdir)
    assert len(identifiers) > 1000
    with audit.recording() as captured:
        fed = start_federation(NODES)
        try:
            client = fedlink.connect(
                fed.address,
                cert=workdir / "pki/analyst-alice.crt",
                key=workdir / "pki/analyst-alice.key",
                ca=workdir / "pki/ca.crt",
            )
            client.catalog()
            for sql in QUERIES:
                with contextlib.suppress(fedlink.QueryError):
                    client.query(sql)
        finally:
            fed.stop()
    messages = [data for _, data in captured]
    kinds = {m for m in messages if b"hello" in m[:80]}
    assert len(messages) > 2 * len(QUERIES) and kinds, "the audit must have seen node hellos and every call"
    assert find_leaks(messages, identifiers) == []


def test_the_audit_detects_a_leak(workdir: Path) -> None:
    """Positive control: the same check flags a message that does carry an identifier."""
    identifiers = identifier_values(workdir)
    surname = next(v for v in sorted(identifiers) if v.isalpha() and len(v) >= 5)
    leaky = b'{"rows": [["' + surname.encode() + b'", 1]]}'
    assert find_leaks([b"harmless", leaky], identifiers) == [surname]
