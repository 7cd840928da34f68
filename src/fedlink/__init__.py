"""fedlink: linked statistics across departments without raw data leaving source.

The public surface for analysts::

    import fedlink
    fed = fedlink.connect(profile=".fedlink/analyst.toml")
    fed.catalog()
    fed.query("SELECT region, COUNT(*) FROM support_episodes GROUP BY region").to_pandas()

and for operators, the functions the ``fedlink`` command runs: :func:`serve_coordinator`,
:func:`serve_node`, :func:`synthesize`, :func:`run_demo` and the ``pki_*`` helpers.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from fedlink.errors import (
    AccessDenied,
    BadInput,
    BudgetExhausted,
    ConfigError,
    Fault,
    FedlinkError,
    NodeUnavailable,
    PolicyRefused,
    QueryError,
    Timeout,
)

__version__ = "0.1.0"

# Heavy modules load on first use, so `import fedlink` and `fedlink --help` stay fast.
_LAZY = {
    "connect": "fedlink.analyst.client",
    "Federation": "fedlink.analyst.client",
    "Result": "fedlink.analyst.result",
    "Catalogue": "fedlink.analyst.result",
    "ModelResult": "fedlink.query.tasks",
    "FlowerFederation": "fedlink.flower",
    "format_value": "fedlink.analyst.result",
    "serve_coordinator": "fedlink.services",
    "serve_node": "fedlink.services",
    "synthesize": "fedlink.synth",
    "load_corruption_config": "fedlink.synth",
    "run_demo": "fedlink.demo",
    "prepare_demo": "fedlink.demo",
    "DEMO_QUERIES": "fedlink.demo:EXAMPLE_QUERIES",
    "pki_init": "fedlink.wire.pki:init_ca",
    "pki_issue": "fedlink.wire.pki:issue",
    "pki_revoke": "fedlink.wire.pki:revoke",
    "verify_register": "fedlink.governance.register",
    "export_register": "fedlink.governance.export",
    "find_registers": "fedlink.governance.register",
    "verify_federation": "fedlink.governance.federation",
    "evaluate_linkage": "fedlink.linkage.evaluate:evaluate_files",
    "run_linkage": "fedlink.linkage.run:run_files",
    "LOW_VALID_SHARE": "fedlink.linkage.concepts:LOW_VALID_SHARE",
    "run_scenario": "fedlink.analyst.scenarios",
    "require_extra": "fedlink.extras:require",
    "SCENARIOS": "fedlink.analyst.scenarios",
    "DemoTruth": "fedlink.analyst.scenarios",
    "run_benchmarks": "fedlink.bench.runner:run",
    "write_benchmark_report": "fedlink.bench.report:write_report",
}

__all__ = [
    "AccessDenied",
    "BadInput",
    "BudgetExhausted",
    "ConfigError",
    "FedlinkError",
    "Fault",
    "NodeUnavailable",
    "PolicyRefused",
    "QueryError",
    "Timeout",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'fedlink' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = getattr(import_module(module), attr or name)
    globals()[name] = value
    return value
