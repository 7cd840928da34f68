"""Message kinds and the error envelope shared by every party."""

from __future__ import annotations

import json

from fedlink.errors import FedlinkError, error_from_code
from fedlink.protocol.transport import Message

# node session
HELLO = "hello"  # node -> coordinator: its catalogue
WELCOME = "welcome"  # coordinator -> node: accepted
RESERVE = "reserve"  # coordinator -> node: a QueryTask; the node checks policy and reserves budget
EXECUTE = "execute"  # coordinator -> node: an ExecuteTask; the node computes, adds noise, encrypts and prepares
COMMIT = "commit"  # coordinator -> node: a TaskRef; every node prepared: commit the budget, send the answer
SETTLE = "settle"  # coordinator -> node: a TaskRef; the result is stored: drop the prepared answer
PENDING = "pending"  # coordinator -> node: which answers do you hold? (a PendingReport)
ABORT = "abort"  # coordinator -> node: a TaskRef; the node releases the reservation (never a committed one)
BUDGET = "budget"  # coordinator -> node: report budget lines
LINK_CARD = "link_card"  # coordinator -> node: its signed key-agreement card
LINK_INITIATE = "link_initiate"  # coordinator -> initiator node: seal a fresh link secret for the others
LINK_ENVELOPE = "link_envelope"  # coordinator -> node: a sealed link secret from the initiator
LINK_ENCODE = "link_encode"  # coordinator -> node: keyed encodings of its people (binary reply)
LINK_SLOTS = "link_slots"  # coordinator -> node: the slot of each of its people
LINK_QUALITY = "link_quality"  # coordinator -> node: reserve and commit the budget for releasing match rates
LINK_PSI_START = "link_psi_start"  # coordinator -> node: a PSI run: its people's positions among its distinct keys
LINK_PSI_POINTS = "link_psi_points"  # coordinator -> node: a batch of its distinct keys, hashed and blinded
LINK_PSI_BLIND = "link_psi_blind"  # coordinator -> node: re-blind other nodes' points (PSI mode, binary)
LINKED_STEP = "linked_step"  # coordinator -> node: a step of a linked query's encrypted chain (binary)
LINKED_RESULT = "linked_result"  # coordinator -> analyst: the masked cells of a linked query (binary)
LINK = "link"  # analyst -> coordinator: build the link spine of a project
MODEL = "model"  # analyst -> coordinator: fit a model (a ModelRequest); the answer is a ModelResult
MODEL_STEP = "model_step"  # coordinator -> node: a ModelStep; binary reply: masked noisy statistics
PROJECT_CHECK = "project_check"  # coordinator -> node: a ProjectRecord; the node checks its datasets' claims
PROJECT_SYNC = "project_sync"  # coordinator -> node: a ProjectList naming it; the node keeps it, answers NodeDecisions
PROJECT_APPLY = "project_apply"  # analyst -> coordinator: a ProjectApplication; the answer is its ProjectRecord
PROJECT_STATUS = "project_status"  # analyst -> coordinator: a ProjectRef ("": every project); answer: ProjectList
PROGRESS = "progress"  # coordinator -> analyst: a stage of long work (JSON)
ACK = "ack"  # node -> coordinator: done
PARTIAL = "partial"  # node -> coordinator: PartialAggregates (noisy, in the clear: pet "dp")
ENCRYPTED_PARTIAL = "encrypted_partial"  # node -> coordinator: EncryptedPartial (pet "he+dp")
ENCRYPTED_RESULT = "encrypted_result"  # coordinator -> analyst: EncryptedResult
# analyst calls
CATALOGUE = "catalogue"
QUERY = "query"  # body: a QueryRequest
REGISTER = "register"  # analyst -> coordinator: the public register
RESULT_GET = "result_get"  # analyst -> coordinator: a stored result by query id (a TaskRef)
PUBLISH = "publish"  # analyst -> coordinator: a summary of a project's released outputs (a PublishRequest)
CATALOGUE_PUBLISHED = "catalogue_published"  # analyst -> coordinator: a public catalogue's digests (a CatalogueRecord)
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
