"""Agreeing a link secret among nodes only, with the coordinator as a relay it cannot read.

Every node has a long-term X25519 key pair (kept in its state folder) and publishes the public half
*signed with its TLS certificate's key*, together with that certificate. A node checks every peer's
certificate against the federation CA and the signature over (node name, X25519 key), so a relay that
swapped keys would be caught: the coordinator cannot stand in the middle.

For each linkage project, one initiator node draws a fresh 32-byte secret and seals it to each other
participant: an ephemeral X25519 exchange with the recipient's key, HKDF-SHA256 bound to
(project, sender, recipient), and AES-256-GCM with that binding as associated data. The coordinator
relays the envelopes and can open none of them. Each node stores the secret in its state folder with
mode 0600; it is used only to derive keyed encodings (HKDF per project, tier and field).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedlink.errors import AccessDenied, Fault
from fedlink.frozen import Frozen
from fedlink.pki import identity_from_pem, write_private

SECRET_BYTES = 32


class LinkKeyCard(Frozen):
    """A node's published key-agreement key, signed with its certificate's key."""

    node: str
    x25519: str  # base64 raw public key
    signature: str  # base64 ECDSA-SHA256 over _card_message(node, key)
    certificate: str  # PEM


class Envelope(Frozen):
    project: str
    sender: str
    recipient: str
    ephemeral: str  # base64 raw X25519 public key
    nonce: str
    ciphertext: str


def _card_message(node: str, raw_key: bytes) -> bytes:
    return b"fedlink link key v1\x00" + node.encode() + b"\x00" + raw_key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class NodeKeyAgreement:
    """A node's side: its X25519 key, its signed card, and its stored per-project link secrets."""

    node: str
    folder: Path
    cert_pem: bytes
    tls_key_pem: bytes
    ca_pem: bytes

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "x25519.key"
        if path.exists():
            self._key = X25519PrivateKey.from_private_bytes(path.read_bytes())
        else:
            self._key = X25519PrivateKey.generate()
            raw = self._key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            write_private(path, raw)

    def card(self) -> LinkKeyCard:
        raw = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        signer = serialization.load_pem_private_key(self.tls_key_pem, password=None)
        if not isinstance(signer, ec.EllipticCurvePrivateKey):
            raise Fault("the node's TLS key is not an EC key; re-issue it with `fedlink pki issue`")
        signature = signer.sign(_card_message(self.node, raw), ec.ECDSA(hashes.SHA256()))
        return LinkKeyCard(
            node=self.node, x25519=_b64(raw), signature=_b64(signature), certificate=self.cert_pem.decode()
        )

    def _verified_key(self, card: LinkKeyCard) -> X25519PublicKey:
        """The peer's X25519 key, after checking its certificate chain and signature."""
        cert = x509.load_pem_x509_certificate(card.certificate.encode())
        ca = x509.load_pem_x509_certificate(self.ca_pem)
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise AccessDenied(f"the link key card of '{card.node}' is not from this federation's CA") from exc
        identity = identity_from_pem(card.certificate.encode())
        if identity.role != "node" or identity.name != card.node:
            raise AccessDenied(f"the link key card of '{card.node}' carries the certificate of {identity}")
        raw = base64.b64decode(card.x25519)
        public = cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise AccessDenied(f"the certificate of '{card.node}' has no EC key")
        try:
            public.verify(base64.b64decode(card.signature), _card_message(card.node, raw), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise AccessDenied(f"the link key of '{card.node}' is not signed by its certificate: refusing it") from exc
        return X25519PublicKey.from_public_bytes(raw)

    @staticmethod
    def _binding(project: str, sender: str, recipient: str) -> bytes:
        return f"fedlink link secret v1\x00{project}\x00{sender}\x00{recipient}".encode()

    def _aead_key(self, shared: bytes, binding: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=binding).derive(shared)

    def seal_for(self, project: str, secret: bytes, cards: list[LinkKeyCard]) -> list[Envelope]:
        """Envelopes of ``secret`` for every other node in ``cards`` (verified first)."""
        envelopes = []
        for card in cards:
            if card.node == self.node:
                continue
            recipient = self._verified_key(card)
            ephemeral = X25519PrivateKey.generate()
            binding = self._binding(project, self.node, card.node)
            key = self._aead_key(ephemeral.exchange(recipient), binding)
            nonce = os.urandom(12)
            envelopes.append(
                Envelope(
                    project=project,
                    sender=self.node,
                    recipient=card.node,
                    ephemeral=_b64(
                        ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
                    ),
                    nonce=_b64(nonce),
                    ciphertext=_b64(AESGCM(key).encrypt(nonce, secret, binding)),
                )
            )
        return envelopes

    def open(self, envelope: Envelope) -> bytes:
        if envelope.recipient != self.node:
            raise AccessDenied(f"an envelope for '{envelope.recipient}' reached '{self.node}'")
        binding = self._binding(envelope.project, envelope.sender, envelope.recipient)
        peer = X25519PublicKey.from_public_bytes(base64.b64decode(envelope.ephemeral))
        key = self._aead_key(self._key.exchange(peer), binding)
        try:
            return AESGCM(key).decrypt(base64.b64decode(envelope.nonce), base64.b64decode(envelope.ciphertext), binding)
        except InvalidTag as exc:
            raise AccessDenied(f"the link-secret envelope from '{envelope.sender}' failed authentication") from exc

    def pairwise_secret(self, card: LinkKeyCard, context: str) -> bytes:
        """A 32-byte secret this node and the card's node (verified) both derive and no one else can:
        X25519 of their keys, through HKDF bound to ``context`` and the two names (in sorted order)."""
        peer = self._verified_key(card)
        first, second = sorted((self.node, card.node))
        binding = f"fedlink pairwise v1\x00{context}\x00{first}\x00{second}".encode()
        return self._aead_key(self._key.exchange(peer), binding)

    # --- stored secrets ----------------------------------------------------------------------------
    def _secret_path(self, project: str) -> Path:
        return self.folder / "link-secrets" / f"{project}.key"

    def secret(self, project: str) -> bytes | None:
        path = self._secret_path(project)
        return path.read_bytes() if path.exists() else None

    def store(self, project: str, secret: bytes) -> None:
        if len(secret) != SECRET_BYTES:
            raise Fault("a link secret must be 32 bytes")
        path = self._secret_path(project)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)  # left by an interrupted store
        write_private(tmp, secret)
        os.replace(tmp, path)

    def initiate(self, project: str, cards: list[LinkKeyCard]) -> list[Envelope]:
        """Draw a fresh secret for ``project`` (or reuse the one held), keep it, seal it for the others."""
        secret = self.secret(project) or os.urandom(SECRET_BYTES)
        envelopes = self.seal_for(project, secret, cards)
        self.store(project, secret)
        return envelopes
