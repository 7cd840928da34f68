"""Message kinds and the error envelope shared by every party."""

from __future__ import annotations

import json

from fedlink.errors import FedlinkError, error_from_code
from fedlink.wire.transport import Message

# node session
HELLO = "hello"  # node -> coordinator: its catalogue
WELCOME = "welcome"  # coordinator -> node: accepted
AGGREGATE = "aggregate"  # coordinator -> node: an AggregatePlan
PARTIAL = "partial"  # node -> coordinator: PartialAggregates
# analyst calls
CATALOGUE = "catalogue"
QUERY = "query"
RESULT = "result"
ERROR = "error"


def error_message(call_id: str, error: FedlinkError) -> Message:
    body = json.dumps({"code": error.code, "message": error.message}).encode()
    return Message(call_id, ERROR, body)


def raise_if_error(message: Message) -> Message:
    """Re-raise an error sent by the other party as the same FedlinkError class."""
    if message.kind == ERROR:
        payload = json.loads(message.body)
        raise error_from_code(str(payload.get("code", "fault")), str(payload.get("message", "unknown error")))
    return message
