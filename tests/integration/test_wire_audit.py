"""Wire audit: every message that crosses between parties is recorded, and none carries an
identifier or a row-level value from the departments' data."""

from __future__ import annotations

import contextlib
from pathlib import Path

import fedlink
from fedlink.protocol import audit

from ..conftest import (
    NODES,
    connect_analyst,
    find_leaks,
    identifier_values,
    start_federation,
    without_sealed_results,
)

QUERIES = [
    ("homelessness-outcomes", "SELECT region, COUNT(*), AVG(duration_days) FROM support_episodes GROUP BY region"),
    ("deprivation-mental-health", "SELECT fsm, sen, COUNT(*), SUM(attainment8) FROM pupils GROUP BY fsm, sen"),
    ("deprivation-mental-health", "SELECT benefit, COUNT(*) FROM claims WHERE start_year >= 2015 GROUP BY benefit"),
    ("deprivation-mental-health", "SELECT HISTOGRAM(age_at_diagnosis) FROM diagnoses WHERE severe = 1"),
    ("justice-attainment", "SELECT offence_group, AVG(sentence_months) FROM sentences GROUP BY offence_group"),
    ("deprivation-mental-health", "SELECT COUNT(*) FROM pupils WHERE first_name = 'x'"),  # refused, still audited
]


def test_no_identifier_crosses_the_wire(workdir: Path) -> None:
    identifiers = identifier_values(workdir)
    assert len(identifiers) > 1000
    with audit.recording() as captured:
        fed = start_federation(NODES)
        try:
            client = connect_analyst(fed.address, workdir)
            client.catalog()
            client.budget()
            for project, sql in QUERIES:
                with contextlib.suppress(fedlink.QueryError):
                    client.query(sql, project=project, epsilon=1.0)  # noisy answers
                with contextlib.suppress(fedlink.QueryError):
                    client.query(sql, project=project, noiseless=True)  # and exact ones, in test mode
        finally:
            fed.stop()
    messages = without_sealed_results([data for _, data in captured])
    kinds = {m for m in messages if b"hello" in m[:80]}
    assert len(messages) > 2 * len(QUERIES) and kinds, "the audit must have seen node hellos and every call"
    assert find_leaks(messages, identifiers) == []


def test_the_audit_detects_a_leak(workdir: Path) -> None:
    """Positive control: the same check flags a message that does carry an identifier."""
    identifiers = identifier_values(workdir)
    surname = next(v for v in sorted(identifiers) if v.isalpha() and len(v) >= 5)
    leaky = b'{"rows": [["' + surname.encode() + b'", 1]]}'
    assert find_leaks([b"harmless", leaky], identifiers) == [surname]
    dated = next(v for v in sorted(identifiers) if any(c.isdigit() for c in v) and "/" in v)
    assert find_leaks([b"x" + dated.encode() + b"y"], identifiers) == [dated]  # dates count even inside text
    born = next(v for v in sorted(identifiers) if v.isdigit() and len(v) == 8)  # a date of birth as YYYYMMDD
    assert find_leaks([b'{"dob": ' + born.encode() + b"}"], identifiers) == [born]
    assert find_leaks([b"dob=" + born.encode() + b";"], identifiers) == [born]
    code = next(v for v in sorted(identifiers) if v.isalnum() and not v.isdigit() and not v.isalpha())
    assert find_leaks([b'{"postcode": "' + code.encode() + b'"}'], identifiers) == [code]
    # ...but not as chance characters inside a longer number, a hex id or a base64 field
    assert find_leaks([b'{"noise_sd": 6.7' + born.encode() + b"3}"], identifiers) == []
    assert find_leaks([b'{"query_id": "5f' + born.encode() + code.lower().encode() + b'0a"}'], identifiers) == []
    assert find_leaks([b'{"nonce": "Qx' + code.encode() + b'Zk+/"}'], identifiers) == []
