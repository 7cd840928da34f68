"""Benchmark reporting: the HE overhead table (he+dp / dp, measured in the same run) and the goal line,
printed after pytest-benchmark's own tables."""

from __future__ import annotations

from typing import Any

from federation import REPORT


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORT.rows and not REPORT.lines:
        return
    terminalreporter.section("fedlink: encrypted aggregation overhead")
    if REPORT.rows:
        for line in REPORT.table():
            terminalreporter.write_line(line)
    for line in REPORT.lines:
        terminalreporter.write_line(line)
