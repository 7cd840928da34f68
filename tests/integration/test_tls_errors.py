"""TLS failures say which: an expired certificate, one from another CA, a coordinator whose certificate
this party's CA did not issue, a revoked certificate, nothing listening, a wrong key, and a
coordinator that dies mid-call each give their own one-line error (never "check that your certificate
was issued by this federation's CA" for all of them). Certificates are made here with `cryptography`,
signed by the test federation's CA as `fedlink pki issue` signs them."""

from __future__ import annotations

import datetime as dt
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import fedlink
from fedlink import pki
from fedlink.node.agent import NodeAgent
from fedlink.node.data import NodeData
from fedlink.pki import TlsFiles

from ..conftest import ANALYST, InProcessFederation, node_config, start_federation
from ..servers import free_port

pytestmark = pytest.mark.usefixtures("workdir")


@pytest.fixture(scope="module")
def federation() -> InProcessFederation:
    fed = start_federation([])
    yield fed  # type: ignore[misc]
    fed.stop()


def _issue(workdir: Path, folder: Path, role: str, name: str, start: dt.datetime, end: dt.datetime) -> TlsFiles:
    """A certificate for ``role`` ``name`` valid from ``start`` to ``end``, signed by the federation's CA."""
    ca_cert = x509.load_pem_x509_certificate((workdir / "pki" / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((workdir / "pki" / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role)]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return TlsFiles(folder / f"{name}.crt", folder / f"{name}.key", workdir / "pki" / "ca.crt")


def _expired(workdir: Path, folder: Path, role: str, name: str) -> TlsFiles:
    now = dt.datetime.now(dt.UTC)
    return _issue(workdir, folder, role, name, now - dt.timedelta(days=30), now - dt.timedelta(days=1))


def test_an_expired_certificate_says_so(federation: InProcessFederation, workdir: Path, tmp_path: Path) -> None:
    tls = _expired(workdir, tmp_path, "analyst", ANALYST)
    with pytest.raises(fedlink.AccessDenied, match=r"expired on .* UTC"):
        fedlink.connect(federation.address, cert=tls.cert, key=tls.key, ca=tls.ca)
    # a client that skips the local check meets the coordinator's refusal (the socket closes during the
    # handshake) and still names the cause
    with pytest.raises(fedlink.AccessDenied, match=r"expired on .* UTC"):
        fedlink.Federation(federation.address, tls, timeout_s=10).catalog()


def test_a_certificate_from_another_ca_says_unknown_ca(federation: InProcessFederation, workdir: Path) -> None:
    other = workdir / "other-ca"
    mine = (other / f"analyst-{ANALYST}.crt", other / f"analyst-{ANALYST}.key")
    with pytest.raises(fedlink.AccessDenied, match=r"was not issued by the CA in .* unknown CA"):
        fedlink.connect(federation.address, cert=mine[0], key=mine[1], ca=workdir / "pki" / "ca.crt")
    # trusting only the other CA, the client refuses the coordinator's certificate instead
    with pytest.raises(fedlink.AccessDenied, match=r"presented a certificate that the CA in .* did not issue"):
        fedlink.connect(federation.address, cert=mine[0], key=mine[1], ca=other / "ca.crt").catalog()


def test_a_revoked_certificate_says_revoked(federation: InProcessFederation, workdir: Path) -> None:
    pki.issue(workdir / "pki", "analyst", "carol")
    carol = (workdir / "pki" / "analyst-carol.crt", workdir / "pki" / "analyst-carol.key")
    fed = fedlink.connect(federation.address, cert=carol[0], key=carol[1], ca=workdir / "pki" / "ca.crt")
    assert fed.catalog().raw.nodes is not None
    pki.revoke(workdir / "pki", carol[0])
    with pytest.raises(fedlink.AccessDenied, match="revoked"):
        fed.catalog()


def test_nothing_listening_says_so(workdir: Path) -> None:
    pki_dir = workdir / "pki"
    address = f"127.0.0.1:{free_port()}"
    fed = fedlink.connect(
        address, cert=pki_dir / f"analyst-{ANALYST}.crt", key=pki_dir / f"analyst-{ANALYST}.key", ca=pki_dir / "ca.crt"
    )
    with pytest.raises(fedlink.Fault, match=r"nothing is listening at .* \(connection refused\)") as refused:
        fed.catalog()
    assert "certificate" not in refused.value.message


def test_a_wrong_key_or_file_is_named(workdir: Path) -> None:
    pki_dir = workdir / "pki"
    cert, ca = pki_dir / f"analyst-{ANALYST}.crt", pki_dir / "ca.crt"
    with pytest.raises(fedlink.ConfigError, match="does not belong to the certificate"):
        fedlink.connect("127.0.0.1:1", cert=cert, key=pki_dir / "node-dfe.key", ca=ca)
    with pytest.raises(fedlink.ConfigError, match="is not an unencrypted PEM private key"):
        fedlink.connect("127.0.0.1:1", cert=cert, key=cert, ca=ca)
    with pytest.raises(fedlink.ConfigError, match="is not a PEM certificate"):
        fedlink.connect("127.0.0.1:1", cert=pki_dir / "ca.key", key=pki_dir / f"analyst-{ANALYST}.key", ca=ca)
    with pytest.raises(fedlink.ConfigError, match="holds no CA certificate"):
        fedlink.connect("127.0.0.1:1", cert=cert, key=pki_dir / f"analyst-{ANALYST}.key", ca=cert)


def test_a_node_with_an_expired_certificate_refuses_to_start(workdir: Path, tmp_path: Path) -> None:
    tls = _expired(workdir, tmp_path, "node", "dfe")
    config = node_config("dfe", "127.0.0.1:1", tmp_path / "state")
    expired = config.model_copy(
        update={"tls": config.tls.model_copy(update={"cert": str(tls.cert), "key": str(tls.key)})}
    )
    with pytest.raises(fedlink.AccessDenied, match=r"expired on .* UTC"):
        NodeAgent(expired, NodeData(config))


def test_a_node_retrying_says_why(workdir: Path, tmp_path: Path) -> None:
    """A node whose coordinator is not listening logs that, not a generic "unreachable"."""
    address = f"127.0.0.1:{free_port()}"
    config = node_config("dfe", address, tmp_path / "state")
    seen = threading.Event()
    lines: list[str] = []

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())
            if "retrying" in record.getMessage():
                seen.set()

    watch = Watch()
    logging.getLogger("fedlink.node").addHandler(watch)
    agent = NodeAgent(config, NodeData(config))
    thread = threading.Thread(target=agent.serve, kwargs={"retry_s": 0.05}, daemon=True)
    try:
        thread.start()
        assert seen.wait(30), lines
    finally:
        agent.stop()
        thread.join(10)
        logging.getLogger("fedlink.node").removeHandler(watch)
    retry = next(line for line in lines if "retrying" in line)
    assert f"nothing is listening at {address} (connection refused)" in retry, retry


# A stand-in coordinator process: it accepts the analyst's call, says so, and waits to be killed.
_DYING = """
import sys, threading
from pathlib import Path
from fedlink.pki import TlsFiles
from fedlink.protocol.transport import make_server
pki = Path(sys.argv[1])
def handler(inbound, context):
    next(inbound)
    print("called", flush=True)
    threading.Event().wait()
    yield from ()
tls = TlsFiles(pki / "coordinator-coordinator.crt", pki / "coordinator-coordinator.key", pki / "ca.crt")
server, port = make_server("127.0.0.1:0", tls, {"Analyst": handler})
server.start()
print(port, flush=True)
server.wait_for_termination()
"""


def test_a_coordinator_dying_mid_call_is_not_called_a_certificate_problem(workdir: Path) -> None:
    pki_dir = workdir / "pki"
    process = subprocess.Popen(
        [sys.executable, "-c", _DYING, str(pki_dir)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert process.stdout is not None
        port = process.stdout.readline().strip()
        fed = fedlink.connect(
            f"127.0.0.1:{port}",
            cert=pki_dir / f"analyst-{ANALYST}.crt",
            key=pki_dir / f"analyst-{ANALYST}.key",
            ca=pki_dir / "ca.crt",
            timeout_s=60,
        )

        def kill_once_called() -> None:
            assert process.stdout is not None
            if process.stdout.readline().strip() == "called":
                process.send_signal(signal.SIGKILL)

        killer = threading.Thread(target=kill_once_called)
        killer.start()
        with pytest.raises(fedlink.Fault, match="was lost during the call") as lost:
            fed.catalog()
        killer.join(10)
        assert "certificate" not in lost.value.message and "CA" not in lost.value.message
    finally:
        process.kill()
        process.wait(10)
