"""The federation's public-key infrastructure: one CA, and a certificate per party.

Identities come from certificates, never from what a party says about itself: the subject's common
name is the party's name and its organisational unit is its role (``coordinator``, ``node`` or
``analyst``). Keys are ECDSA P-256 and are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedlink.errors import AccessDenied, BadInput, ConfigError

Role = Literal["coordinator", "node", "analyst"]
ROLES: tuple[Role, ...] = ("coordinator", "node", "analyst")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
REVOKED = "revoked.txt"


@dataclass(frozen=True)
class Identity:
    """Who a certificate says a party is."""

    role: Role
    name: str
    serial: int

    def __str__(self) -> str:
        return f"{self.role} '{self.name}'"


@dataclass(frozen=True)
class IssuedCertificate:
    identity: Identity
    cert_path: Path
    key_path: Path


def cert_paths(pki_dir: Path, role: Role, name: str) -> tuple[Path, Path]:
    """Where ``pki issue`` writes a party's certificate and key."""
    return pki_dir / f"{role}-{name}.crt", pki_dir / f"{role}-{name}.key"


def write_private(path: Path, data: bytes) -> None:
    """Write a new secret file readable by its owner only (mode 0600); refuses to overwrite one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def init_ca(pki_dir: Path, name: str = "fedlink federation CA", days: int = 3650) -> Path:
    """Create a federation CA in ``pki_dir``; refuses to overwrite an existing one."""
    try:
        pki_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(
            f"cannot create the CA folder {pki_dir} ({exc.strerror}); choose a folder you can write"
        ) from exc
    if (pki_dir / CA_KEY).exists() or (pki_dir / CA_CERT).exists():
        raise BadInput(f"a CA already exists in {pki_dir}; use another `pki_dir` or delete it deliberately")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    write_private(pki_dir / CA_KEY, _key_pem(key))
    (pki_dir / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pki_dir / CA_CERT


def _load_ca(pki_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((pki_dir / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((pki_dir / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"no federation CA in {pki_dir}; run `fedlink pki init --dir {pki_dir}` first") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{pki_dir / CA_KEY} is not an EC private key; re-create the CA with `fedlink pki init`")
    return cert, key


def issue(pki_dir: Path, role: str, name: str, hosts: tuple[str, ...] = (), days: int = 825) -> IssuedCertificate:
    """Issue a certificate for a party, signed by the federation CA in ``pki_dir``.

    ``hosts`` are extra DNS names or IP addresses the party serves on (coordinators); ``localhost``
    and ``127.0.0.1`` are always included so that a local federation works out of the box.
    """
    if role not in ROLES:
        raise BadInput(f"unknown role '{role}'; use one of: {', '.join(ROLES)}")
    if not _NAME.match(name):
        raise BadInput(
            f"invalid party name '{name}'; use lower-case letters, digits, '_' or '-', starting with a letter"
        )
    ca_cert, ca_key = _load_ca(pki_dir)
    cert_path, key_path = cert_paths(pki_dir, role, name)
    if cert_path.exists() or key_path.exists():
        raise BadInput(f"a certificate for {role} '{name}' already exists in {pki_dir}; revoke it or pick a new name")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(name), x509.DNSName("localhost")]
    addresses = {"127.0.0.1", "::1"}
    for host in hosts:
        try:
            addresses.add(str(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    sans.extend(x509.IPAddress(ipaddress.ip_address(a)) for a in sorted(addresses))
    now = dt.datetime.now(dt.UTC)
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return IssuedCertificate(Identity(role, name, serial), cert_path, key_path)


def _load_certificate(pem: bytes, where: object) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ConfigError(f"{where} is not a PEM certificate; point to a .crt file that `fedlink pki` wrote") from None


def identity_from_pem(pem: bytes, where: object = "the certificate") -> Identity:
    """Read the role and name a certificate was issued for (``where`` names it in errors)."""
    cert = _load_certificate(pem, where)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    role = str(units[0].value) if units else ""
    if not names or role not in ROLES:
        raise BadInput("certificate has no fedlink role; issue one with `fedlink pki issue`")
    return Identity(role, str(names[0].value), cert.serial_number)


def fingerprint(pem: bytes) -> str:
    """The SHA-256 of a certificate (DER), in hex: how a federation is told apart by its CA."""
    return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()


def issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether the certificate was signed by this CA (the signature only; TLS checks dates and use)."""
    try:
        x509.load_pem_x509_certificate(cert_pem).verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True)
class Revocation:
    """One line of the revocation list: whose certificate, and when it was revoked (UTC, ISO 8601;
    empty for lines written before the time was recorded)."""

    serial: int
    role: str
    name: str
    revoked_at: str = ""


def revoked_message(identity: Identity) -> str:
    """What a party whose certificate is revoked is told."""
    return f"the certificate of {identity} has been revoked; ask the federation for a new one"


def revoke(pki_dir: Path, cert_path: Path) -> Identity:
    """Add a certificate's serial to the federation's revocation list (``revoked.txt``), with the time."""
    try:
        identity = identity_from_pem(cert_path.read_bytes(), cert_path)
    except FileNotFoundError as exc:
        raise BadInput(f"no certificate at {cert_path}; pass the path of the .crt to revoke") from exc
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    with (pki_dir / REVOKED).open("a", encoding="utf-8") as handle:
        handle.write(f"{identity.serial:x} {identity.role} {identity.name} {when}\n")
    return identity


def revocations(path: Path) -> tuple[Revocation, ...]:
    """The revocation list written by :func:`revoke`, in order (an absent file revokes none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the revocation list {path} ({exc}); fix or restore it") from exc
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            serial = int(parts[0], 16)
        except ValueError:
            raise ConfigError(
                f"line {number} of the revocation list {path} does not start with a certificate serial in hex; "
                "fix it (`fedlink pki revoke` writes the lines)"
            ) from None
        role, name, when = [*parts[1:], "", "", ""][:3]
        out.append(Revocation(serial, role, name, when))
    return tuple(out)


def revoked_serials(path: Path) -> frozenset[int]:
    """Serials listed in a revocation file written by :func:`revoke` (an absent file revokes none)."""
    return frozenset(r.serial for r in revocations(path))


def _public_der(public: Any) -> bytes:
    return bytes(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_validity(label: str, cert: x509.Certificate, path: Path, when: dt.datetime) -> None:
    if when >= cert.not_valid_after_utc:
        raise AccessDenied(
            f"the {label} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, so the other party "
            "refuses it; ask the federation's operator for a new one (`fedlink pki issue`)"
        )
    if when < cert.not_valid_before_utc:
        raise AccessDenied(
            f"the {label} {path} is not valid until {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check this "
            "machine's clock"
        )


def check_credentials(
    cert_pem: bytes, key_pem: bytes, ca_pem: bytes, where: tuple[Path, Path, Path], now: dt.datetime | None = None
) -> Identity:
    """The identity in a party's certificate, once this party has checked what the other end's TLS
    will check, so that a refusal names its cause instead of a closed connection: the files parse,
    the key belongs to the certificate, the CA certificate is a CA, both are valid now, and the CA
    issued the certificate. Malformed files are a :class:`ConfigError`; an expired certificate or
    one from another CA an :class:`AccessDenied`, as the other end would refuse it."""
    cert_path, key_path, ca_path = where
    cert = _load_certificate(cert_pem, cert_path)
    try:
        authorities = [c for c in x509.load_pem_x509_certificates(ca_pem) if _is_ca(c)]
    except ValueError:
        authorities = []
    if not authorities:
        raise ConfigError(f"{ca_path} holds no CA certificate; point to the federation's ca.crt")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{key_path} is not an unencrypted PEM private key; point to the .key issued with {cert_path.name}"
        ) from None
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise ConfigError(
            f"the private key {key_path} does not belong to the certificate {cert_path}; use the key issued with it"
        )
    when = now or dt.datetime.now(dt.UTC)
    _check_validity("certificate", cert, cert_path, when)
    issuers = [ca for ca in authorities if _issued(cert, ca)]
    if not issuers:
        raise AccessDenied(
            f"the certificate {cert_path} was not issued by the CA in {ca_path} (it names issuer "
            f"'{cert.issuer.rfc4514_string()}'), so the other party refuses it as from an unknown CA; use a "
            "certificate this federation's CA issued, with its ca.crt"
        )
    _check_validity("CA certificate", issuers[0], ca_path, when)
    return identity_from_pem(cert_pem, cert_path)


@dataclass(frozen=True)
class TlsFiles:
    """A party's certificate, private key and the federation CA certificate, as PEM files."""

    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        out = []
        for label, path in (
            ("certificate", self.cert),
            ("private key", self.key),
            ("CA certificate", self.ca),
        ):
            try:
                out.append(path.read_bytes())
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the {label} at {path} ({exc.strerror}); issue one with `fedlink pki issue`"
                ) from exc
        return out[0], out[1], out[2]

    def identity(self) -> Identity:
        return identity_from_pem(self.read()[0], self.cert)

    def checked(self) -> Identity:
        """The identity, once the files pass every check the other end's TLS will make (see
        :func:`fedlink.pki.check_credentials`): a bad certificate is refused here, by name."""
        cert, key, ca = self.read()
        return check_credentials(cert, key, ca, (self.cert, self.key, self.ca))
