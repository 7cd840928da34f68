"""fedlink: linked statistics across departments without raw data leaving source.

This package exports the analyst's objects only::

    import fedlink
    fed = fedlink.connect(profile=".fedlink/analyst.toml")
    fed.catalog()
    fed.query("SELECT region, COUNT(*) FROM support_episodes GROUP BY region").to_pandas()

:func:`connect` gives a :class:`Federation` (fedlink's own mTLS gRPC transport); :class:`FlowerFederation`
runs the same queries through a Flower SuperLink. Both return :class:`Result`, :class:`ModelResult`,
:class:`LinkReport`, :class:`Catalogue`, :class:`Budget` and :class:`RegisterView` objects, and raise the
errors below; a :class:`Federation` also publishes outcomes (:class:`Publication`). The operators' and
tooling functions that the ``fedlink`` command runs are imported from their own modules:
:mod:`fedlink.services` (serve a node or a coordinator), :mod:`fedlink.pki`, :mod:`fedlink.governance`,
:mod:`fedlink_tools.synth`, :mod:`fedlink_tools.demo`, :mod:`fedlink_tools.bench`.

The cryptographic and DP libraries (TenSEAL, OpenDP) load when a query first needs them, not here.
"""

from fedlink.analyst.client import Federation, connect
from fedlink.analyst.result import Budget, Catalogue, RegisterView, Result
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
    ResultPending,
    Timeout,
)
from fedlink.flower.analyst import FlowerFederation
from fedlink.protocol.linkage import LinkReport
from fedlink.protocol.publication import Publication
from fedlink.protocol.tasks import ModelResult

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "BadInput",
    "Budget",
    "BudgetExhausted",
    "Catalogue",
    "ConfigError",
    "Fault",
    "Federation",
    "FedlinkError",
    "FlowerFederation",
    "LinkReport",
    "ModelResult",
    "NodeUnavailable",
    "PolicyRefused",
    "Publication",
    "QueryError",
    "RegisterView",
    "Result",
    "ResultPending",
    "Timeout",
    "connect",
]
