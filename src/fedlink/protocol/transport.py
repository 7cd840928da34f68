"""gRPC with mutual TLS, and messages of any size as streams of frames.

A logical message is ``(kind, body)``; :func:`frames` cuts its body into chunks of at most
:data:`CHUNK` bytes and :class:`Reassembler` puts them back together, so gRPC's per-message limit
(set deliberately to :data:`MAX_GRPC_MESSAGE`) is never hit however large a payload grows.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from fedlink.errors import AccessDenied, ConfigError, Fault, FedlinkError, Timeout
from fedlink.pki import Identity, TlsFiles, identity_from_pem, revoked_message
from fedlink.protocol import audit
from fedlink.protocol.fedlink_pb2 import Frame

CHUNK = 1 << 20
MAX_GRPC_MESSAGE = 4 * CHUNK
SERVICE = "fedlink.v1.Coordinator"
NODE_SESSION = f"/{SERVICE}/NodeSession"
ANALYST = f"/{SERVICE}/Analyst"
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS: list[tuple[str, Any]] = [
    *CHANNEL_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
]


@dataclass(frozen=True)
class Message:
    """A logical message. A large body may instead lie in ``file`` (``body`` then empty): it is sent a
    frame at a time from disk and the file removed once sent (a node's encodings run to gigabytes)."""

    call_id: str
    kind: str
    body: bytes
    file: Path | None = None

    def whole_body(self) -> bytes:
        """The body, for transports that carry a message whole: read from ``file`` (then removed, as
        once sent) for a message whose body lies there."""
        if self.file is None:
            return self.body
        body = self.file.read_bytes()
        self.file.unlink(missing_ok=True)
        return body


def connection_error(exc: grpc.RpcError, address: str, tls: TlsFiles, timeout_s: float | None = None) -> FedlinkError:
    """A failed call to the coordinator at ``address`` as one line naming the cause.

    gRPC reports every failure to connect as UNAVAILABLE "failed to connect to all addresses", with
    the cause after it, and a connection lost mid-call otherwise; a party whose certificate the
    coordinator's TLS refuses sees only "Socket closed". So the local certificate is checked first
    (expired, another CA, wrong key: raised as such), then the cause is read from gRPC's details.
    """
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return AccessDenied(details or f"the coordinator at {address} refused this certificate")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        waited = f" within {timeout_s:g} s" if timeout_s else ""
        return Timeout(f"the coordinator at {address} did not answer{waited}; retry or raise the timeout")
    lowered = details.lower()
    if not (lowered.startswith("failed to connect") or "resolv" in lowered):
        return Fault(
            f"the connection to the coordinator at {address} was lost during the call ({details or code}); it "
            "may have stopped or restarted: check its log, then retry"
        )
    tls.checked()
    if "certificate_verify_failed" in lowered or "certificate verify failed" in lowered:
        if "expired" in lowered:
            return AccessDenied(
                f"the coordinator at {address} presented an expired certificate; its operator must renew it"
            )
        return AccessDenied(
            f"the coordinator at {address} presented a certificate that the CA in {tls.ca} did not issue (unknown "
            "CA); point ca at this federation's CA certificate"
        )
    if "peer name" in lowered or "hostname mismatch" in lowered:
        return AccessDenied(
            f"the coordinator's certificate is not valid for the name in {address}; connect with a name it was "
            "issued for (coordinator_name in the profile)"
        )
    if "connection refused" in lowered:
        return Fault(
            f"nothing is listening at {address} (connection refused); start the coordinator or check the address"
        )
    if "resolv" in lowered:
        return Fault(f"cannot find the host of {address} (DNS lookup failed); check the address")
    if "socket closed" in lowered or "connection reset" in lowered:
        return AccessDenied(
            f"the coordinator at {address} ended the TLS handshake: it refused this certificate (issued by a CA "
            "it does not trust, or expired or not yet valid by its clock)"
        )
    cause = details.split("last error:", 1)[-1].strip()
    return Fault(f"cannot reach the coordinator at {address} ({cause}); check that it is running and the address")


def new_call_id() -> str:
    return uuid.uuid4().hex


def frames(message: Message) -> Iterator[Frame]:
    """Cut a message into frames of at most :data:`CHUNK` bytes (an empty body is one frame); a body in a
    file is read a frame at a time, and the file removed once its last frame is out."""
    if message.file is not None:
        yield from _file_frames(message, message.file)
        return
    body = message.body
    if not body:
        yield Frame(call_id=message.call_id, kind=message.kind, data=b"", last=True)
        return
    for start in range(0, len(body), CHUNK):
        end = start + CHUNK
        yield Frame(call_id=message.call_id, kind=message.kind, data=body[start:end], last=end >= len(body))


def _file_frames(message: Message, path: Path) -> Iterator[Frame]:
    size = path.stat().st_size
    with path.open("rb") as file:
        sent = 0
        while True:
            data = file.read(CHUNK)
            if not data and sent < size:
                raise Fault(f"{path.name} shrank while it was being sent; nothing more of it is sent")
            sent += len(data)
            yield Frame(call_id=message.call_id, kind=message.kind, data=data, last=sent >= size)
            if sent >= size:
                break
    path.unlink(missing_ok=True)


class Reassembler:
    """Turns a stream of frames (possibly interleaving several calls) back into messages."""

    def __init__(self) -> None:
        self._parts: dict[str, list[bytes]] = {}

    def feed(self, frame: Frame) -> Message | None:
        parts = self._parts.setdefault(frame.call_id, [])
        parts.append(frame.data)
        if not frame.last:
            return None
        del self._parts[frame.call_id]
        return Message(frame.call_id, frame.kind, b"".join(parts))


def messages(stream: Iterable[Frame]) -> Iterator[Message]:
    reassembler = Reassembler()
    for frame in stream:
        message = reassembler.feed(frame)
        if message is not None:
            yield message


def _serialize(frame: Frame) -> bytes:
    data = frame.SerializeToString()
    audit.record("sent", data)
    return data


def _deserialize(data: bytes) -> Frame:
    audit.record("received", data)
    return Frame.FromString(data)


StreamHandler = Callable[[Iterator[Frame], grpc.ServicerContext], Iterator[Frame]]


def make_server(
    address: str, tls: TlsFiles, handlers: dict[str, StreamHandler], max_workers: int = 32
) -> tuple[grpc.Server, int]:
    """A gRPC server that requires a client certificate from the federation CA on every call."""
    from concurrent.futures import ThreadPoolExecutor

    audit.install_from_env()
    tls.checked()  # an expired certificate or one from another CA is refused at start, by name
    cert, key, ca = tls.read()
    credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
    server = grpc.server(ThreadPoolExecutor(max_workers=max_workers), options=SERVER_OPTIONS)
    method_handlers = {
        name: grpc.stream_stream_rpc_method_handler(
            handler, request_deserializer=_deserialize, response_serializer=_serialize
        )
        for name, handler in handlers.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, method_handlers),))
    try:
        port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {address} ({exc}); choose a free host:port") from exc
    if port == 0:
        raise ConfigError(f"cannot listen on {address}; is the port in use? choose a free host:port")
    return server, port


def peer_identity(context: grpc.ServicerContext, revoked: frozenset[int] = frozenset()) -> Identity:
    """The identity in the client certificate that TLS already verified against the federation CA."""
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        raise AccessDenied("no client certificate; connect with a certificate from `fedlink pki issue`")
    identity = identity_from_pem(pems[0])
    if identity.serial in revoked:
        raise AccessDenied(revoked_message(identity))
    return identity


def secure_channel(address: str, tls: TlsFiles, server_name: str | None = None) -> grpc.Channel:
    """A channel to the coordinator, authenticating both ends with the federation CA."""
    audit.install_from_env()
    cert, key, ca = tls.read()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    options = list(CHANNEL_OPTIONS)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(address, credentials, options=options)


def stream_method(channel: grpc.Channel, method: str) -> Callable[..., Iterator[Frame]]:
    return channel.stream_stream(method, request_serializer=_serialize, response_deserializer=_deserialize)
