"""fedlink's node operators as a Flower ``ClientApp`` and its coordinator as a Flower ``ServerApp``.

Every fedlink message becomes one Flower message of type ``query.<operator>`` whose content is the
same body fedlink's own transport carries (``RecordDict({"fedlink": ConfigRecord({"body": ...})})``),
and the answer comes back the same way, so nodes run exactly the code they run under
``fedlink node serve`` (:func:`fedlink.node.agent.answer`) and the ServerApp runs exactly the
coordinator's planning, policy checks, encrypted aggregation and register
(:class:`~fedlink.coordinator.server.Coordinator`), over Flower's ``Grid``.

Flower starts a fresh ClientApp process for every message. A reservation must therefore outlive the
process that made it: ``query.reserve`` holds it on the node's ledger for
:data:`~fedlink.node.runtime.RESERVATION_TTL_S` and keeps the reserved task in the run's node
state (``context.state``), where ``query.execute`` finds it again.

Each SuperNode names its node's ``node.toml`` in its node config:
``flower-supernode ... --node-config "fedlink-node='/srv/fedlink/nodes/dfe/node.toml'"``.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from pydantic import ValidationError

from fedlink.coordinator.config import CoordinatorConfig, RegisteredNode
from fedlink.coordinator.server import Coordinator
from fedlink.coordinator.sessions import NodeRoster, NodeSession
from fedlink.errors import BadInput, ConfigError, Fault, FedlinkError, Timeout, error_from_code
from fedlink.node.agent import answer
from fedlink.node.config import load_node_config
from fedlink.node.runtime import RESERVATION_TTL_S, NodeRuntime
from fedlink.plan.catalogue import NodeCatalogue
from fedlink.protocol import rpc
from fedlink.protocol import transport as wire
from fedlink.protocol.tasks import ExecuteTask, ModelRequest, ModelStep, QueryRequest, QueryTask
from fedlink.transparency.records import refusals_recorded

log = logging.getLogger("fedlink.flower")
CATALOGUE = "catalogue"
#: The ServerApp's answer, one log line that ``flwr run --stream`` carries to the analyst.
RESULT_MARK = "FEDLINK-RESULT "
#: The node operators, each a message type ``query.<operator>`` of the ClientApp.
OPERATORS = (
    CATALOGUE,
    rpc.RESERVE,
    rpc.EXECUTE,
    rpc.COMMIT,
    rpc.SETTLE,
    rpc.ABORT,
    rpc.BUDGET,
    rpc.LINK_CARD,
    rpc.MODEL_STEP,
)


def pack_json(payload: dict[str, Any]) -> str:
    return base64.b64encode(gzip.compress(json.dumps(payload).encode())).decode()


def unpack_json(text: str) -> dict[str, Any]:
    try:
        return dict(json.loads(gzip.decompress(base64.b64decode(text))))
    except (ValueError, OSError) as exc:
        raise BadInput("a fedlink message over Flower is malformed; check both sides run the same fedlink") from exc


def _content(kind: str, body: bytes) -> RecordDict:
    return RecordDict({"fedlink": ConfigRecord({"kind": kind, "body": body})})


def _body(message: Message) -> tuple[str, bytes]:
    record = message.content.config_records.get("fedlink")
    if record is None:
        raise Fault("a Flower message without fedlink content arrived; check both sides run the same fedlink")
    return str(record["kind"]), bytes(record["body"])  # type: ignore[arg-type]


# --- the ClientApp --------------------------------------------------------------------------------------
clientapp = ClientApp()


def _runtime(context: Context) -> NodeRuntime:
    path = context.node_config.get("fedlink-node")
    if not path:
        raise ConfigError(
            "this SuperNode names no fedlink node; start it with --node-config \"fedlink-node='/path/node.toml'\""
        )
    return NodeRuntime(load_node_config(Path(str(path))))


def _node_answer(kind: str, body: bytes, context: Context) -> tuple[str, bytes]:
    """One operator at this node, in this (fresh) process; the reservation and the reserved task outlive it."""
    runtime = _runtime(context)
    try:
        if kind == CATALOGUE:
            return rpc.RESULT, runtime.catalogue.model_dump_json().encode()
        if kind == rpc.RESERVE:
            task = QueryTask.model_validate_json(body)
            runtime.reserve(task, hold_s=RESERVATION_TTL_S)
            context.state.config_records[f"task:{task.query_id}"] = ConfigRecord({"task": body})
            return rpc.ACK, b""
        if kind == rpc.EXECUTE:
            execute = ExecuteTask.model_validate_json(body)
            held = context.state.config_records.pop(f"task:{execute.query_id}", None)
            reserved = QueryTask.model_validate_json(bytes(held["task"])) if held is not None else None  # type: ignore[arg-type]
            runtime.execute(execute.query_id, execute.contexts, reserved=reserved)  # prepared on disk
            return rpc.ACK, b""
        if kind == rpc.MODEL_STEP:
            stats = _model_step(runtime, ModelStep.model_validate_json(body), context)
            return (rpc.ACK, b"") if stats is None else (rpc.RESULT, stats)
        reply = answer(runtime, wire.Message(wire.new_call_id(), kind, body))
        return reply.kind, reply.whole_body()
    finally:
        runtime.close()


def _model_step(runtime: NodeRuntime, step: ModelStep, context: Context) -> bytes | None:
    """A model's iteration in this (fresh) process: the reserved task and the iterations answered so
    far live in the run's node state, so no iteration is answered twice and the budget is committed once."""
    records = context.state.config_records
    held = records.get(f"model:{step.query_id}") or records.get(f"task:{step.query_id}")
    reserved = QueryTask.model_validate_json(bytes(held["task"])) if held is not None else None  # type: ignore[arg-type]
    answered = [int(i) for i in held.get("done", [])] if held is not None else []  # type: ignore[union-attr]
    body = runtime.model_step(step, reserved=reserved, answered=answered)
    if reserved is not None:
        records.pop(f"task:{step.query_id}", None)
        records[f"model:{step.query_id}"] = ConfigRecord(
            {"task": reserved.model_dump_json().encode(), "done": [*answered, step.iteration]}
        )
    return body


def _operator(kind: str) -> Any:
    def handle(message: Message, context: Context) -> Message:
        try:
            _, body = _body(message)
            reply_kind, reply = _node_answer(kind, body, context)
        except FedlinkError as exc:
            error = rpc.error_message("", exc)
            reply_kind, reply = error.kind, error.body
        except Exception as exc:  # a bug must not leak data: report its type only
            log.exception("operator %s failed", kind)
            error = rpc.error_message("", Fault(f"a fedlink node failed: {type(exc).__name__}"))
            reply_kind, reply = error.kind, error.body
        return Message(_content(reply_kind, reply), reply_to=message)

    handle.__name__ = f"fedlink_{kind}"
    return handle


for _kind in OPERATORS:
    clientapp.query(_kind)(_operator(_kind))


# --- the ServerApp --------------------------------------------------------------------------------------
class FlowerSession(NodeSession):
    """A node reached through Flower: its catalogue and its SuperNode's id (calls go through
    :meth:`FlowerRoster.call_each`, all nodes in one ``send_and_receive``)."""

    def __init__(self, name: str, catalogue: NodeCatalogue, node_id: int) -> None:
        super().__init__(name, catalogue)
        self.node_id = node_id


class FlowerRoster(NodeRoster):
    """The nodes as SuperNodes behind a Flower ``Grid``: every call to them is one ``send_and_receive``."""

    def __init__(self, grid: Grid, timeout_s: float) -> None:
        super().__init__((), lambda: None, timeout_s)
        self.grid = grid

    def send(self, calls: dict[int, tuple[str, bytes]]) -> dict[int, wire.Message | FedlinkError]:
        """Send each SuperNode (by id) its operator and body; each answer is a reply or that node's error."""
        messages = [
            Message(_content(kind, body), dst_node_id=node_id, message_type=f"query.{kind}")
            for node_id, (kind, body) in calls.items()
        ]
        out: dict[int, wire.Message | FedlinkError] = {}
        for reply in self._exchange(messages):
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                out[node_id] = Fault(f"Flower could not run a fedlink operator: {reply.error.reason}")
                continue
            kind, body = _body(reply)
            if kind == rpc.ERROR:
                detail = json.loads(body)
                out[node_id] = error_from_code(str(detail.get("code")), str(detail.get("message")))
            else:
                out[node_id] = wire.Message("", kind, body)
        for node_id in calls:
            out.setdefault(node_id, Timeout(f"a SuperNode did not answer within {self.timeout_s:g} s"))
        return out

    def _exchange(self, messages: list[Message]) -> list[Message]:
        """Push the messages and pull their replies until all are in or the timeout passes. Flower's
        ``Grid.send_and_receive`` sleeps 3 s between pulls, and a query or a model fit takes several
        rounds; polling from 50 ms, backing off to 0.5 s, returns a round about as soon as its last
        reply lands while keeping the SuperLink's load from an idle wait small."""
        waiting = set(self.grid.push_messages(messages))
        deadline = time.monotonic() + self.timeout_s
        pause = 0.05
        replies: list[Message] = []
        while waiting:
            pulled = list(self.grid.pull_messages(waiting))
            replies += pulled
            waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(pause)
            pause = min(pause * 1.5, 0.5)
        return replies

    def call_each(
        self,
        calls: Mapping[str, tuple[NodeSession, bytes]],
        kind: str,
        timeout_s: float | None = None,
        sinks: Mapping[str, Path] | None = None,
    ) -> dict[str, wire.Message | FedlinkError]:
        """As fedlink's own roster; Flower delivers each reply whole, and a node named in ``sinks`` has it
        written to that file (the reply returned has an empty body)."""
        by_id = {s.node_id: name for name, (s, _) in calls.items() if isinstance(s, FlowerSession)}
        answers = self.send({s.node_id: (kind, body) for s, body in calls.values() if isinstance(s, FlowerSession)})
        named = {by_id[node_id]: reply for node_id, reply in answers.items()}
        for name, path in (sinks or {}).items():
            reply = named.get(name)
            if isinstance(reply, wire.Message):
                path.write_bytes(reply.body)
                named[name] = wire.Message(reply.call_id, reply.kind, b"")
        return named


class FlowerCoordinator(Coordinator):
    """fedlink's coordinator whose node sessions are SuperNodes behind a Flower ``Grid``."""

    def __init__(self, config: CoordinatorConfig, grid: Grid, timeout_s: float) -> None:
        self.flower = FlowerRoster(grid, timeout_s)
        super().__init__(config, roster=self.flower)

    def join(self) -> list[str]:
        """Ask every SuperNode for its node's catalogue and attach it; returns the nodes' names."""
        node_ids = list(self.flower.grid.get_node_ids())
        if not node_ids:
            raise Fault("no SuperNode is connected to this SuperLink; start the nodes' SuperNodes first")
        replies = self.flower.send({node_id: (CATALOGUE, b"") for node_id in node_ids})
        names = []
        for node_id, reply in replies.items():
            if isinstance(reply, FedlinkError):
                raise reply
            catalogue = NodeCatalogue.model_validate_json(reply.body)
            # Flower authenticates SuperNodes (--enable-supernode-auth); the node's name is its catalogue's
            self.registered.setdefault(catalogue.node, RegisteredNode(name=catalogue.node))
            self.attach(FlowerSession(catalogue.node, catalogue, node_id))
            names.append(catalogue.node)
        return sorted(names)


def coordinator_config(run_config: dict[str, Any]) -> CoordinatorConfig:
    """The ServerApp's coordinator settings from the run config (projects and register paths on the
    SuperLink's machine); fedlink's own listener and certificates are not used under Flower."""
    projects, register = str(run_config.get("fedlink-projects", "")), str(run_config.get("fedlink-register", ""))
    if not projects or not register:
        raise ConfigError("the Flower run needs fedlink-projects and fedlink-register in its run config")
    return CoordinatorConfig.model_validate(
        {
            "coordinator": {
                "name": "flower-serverapp",
                "listen": "127.0.0.1:0",
                "projects": str(Path(projects).resolve()),
                "transparency_register": str(Path(register).resolve()),
                "test_mode": bool(run_config.get("fedlink-test-mode", False)),
                "query_timeout_s": 300.0,
            },
            "tls": {"cert": "unused-under-flower", "key": "unused-under-flower", "ca": "unused-under-flower"},
            "nodes": [],
            "source": str(Path(projects).resolve().parent / "coordinator.toml"),
        }
    )


serverapp = ServerApp()


@serverapp.main()
def main(grid: Grid, context: Context) -> None:
    """Run the analyst's request (a query) and print its answer as one line for ``flwr run --stream``."""
    try:
        request = unpack_json(str(context.run_config.get("fedlink-request", "")))
        coordinator = FlowerCoordinator(coordinator_config(dict(context.run_config)), grid, timeout_s=300.0)
        try:
            coordinator.join()
            analyst = str(request.get("analyst", "analyst"))
            asked = "model" if "model" in request else "query"
            with refusals_recorded(coordinator.register, analyst, asked, json.dumps(request.get(asked)).encode()):
                if asked == "model":
                    reply, body = coordinator.fit_model(ModelRequest.model_validate(request["model"]), analyst)
                    kind = "model"
                else:
                    reply, body = coordinator.run_query(QueryRequest.model_validate(request["query"]), analyst)
                    kind = "encrypted" if reply == rpc.ENCRYPTED_RESULT else "clear"
        finally:
            coordinator.stop()
        payload: dict[str, Any] = {"ok": True, "kind": kind, "result": json.loads(body)}
    except FedlinkError as exc:
        payload = {"ok": False, "code": exc.code, "message": exc.message}
    except ValidationError as exc:
        payload = {"ok": False, "code": BadInput.code, "message": f"malformed request ({exc.errors()[0]['msg']})"}
    print(RESULT_MARK + pack_json(payload), flush=True)
