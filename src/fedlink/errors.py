"""The one exception family of fedlink.

Every error a user can cause or meet is a :class:`FedlinkError` whose message is one line saying what
was wrong and what to do. The CLI maps :class:`BadInput` to exit code 2 and :class:`Fault` to exit
code 1, without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations


class FedlinkError(Exception):
    """Root of every error fedlink raises on purpose."""

    exit_code: int = 1
    #: Stable machine-readable name, carried across the wire so the far side re-raises the same class.
    code: str = "fault"

    def __init__(self, message: str) -> None:
        one_line = " ".join(str(message).split())
        super().__init__(one_line)
        self.message = one_line


class BadInput(FedlinkError):
    """The caller asked for something invalid: fix the input and try again (exit code 2)."""

    exit_code = 2
    code = "bad_input"


class ConfigError(BadInput):
    """A configuration file is missing, unreadable or invalid."""

    code = "config"


class QueryError(BadInput):
    """A query is malformed, names unknown data, or asks for something not allowed."""

    code = "query"


class AccessDenied(BadInput):
    """A party without a valid certificate, or without the right role, was refused."""

    code = "access_denied"


class PolicyRefused(BadInput):
    """A node's policy refused the request (project not approved, dataset not allowed, ...)."""

    code = "policy_refused"


class BudgetExhausted(PolicyRefused):
    """A query would spend more privacy budget than a node allows for the project and dataset."""

    code = "budget_exhausted"


class Fault(FedlinkError):
    """Something outside the caller's input failed: a node down, a timeout, a broken connection."""

    exit_code = 1
    code = "fault"


class NodeUnavailable(Fault):
    """A node that a query needs is not connected or stopped answering."""

    code = "node_unavailable"


class Timeout(Fault):
    """A party did not answer in time."""

    code = "timeout"


class ResultPending(Fault):
    """A query's budget is committed but a node has not yet delivered its answer: the result is kept
    and completes when the node is back; collect it with ``fedlink result get ID`` (exit code 1)."""

    code = "result_pending"

    def __init__(self, message: str, query_id: str = "") -> None:
        super().__init__(message)
        self.query_id = query_id


_BY_CODE: dict[str, type[FedlinkError]] = {
    cls.code: cls
    for cls in (
        FedlinkError,
        BadInput,
        ConfigError,
        QueryError,
        AccessDenied,
        PolicyRefused,
        BudgetExhausted,
        Fault,
        NodeUnavailable,
        Timeout,
        ResultPending,
    )
}


def error_from_code(code: str, message: str) -> FedlinkError:
    """Rebuild an error received from another party; unknown codes become a plain :class:`Fault`."""
    return _BY_CODE.get(code, Fault)(message)
