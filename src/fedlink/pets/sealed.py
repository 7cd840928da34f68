"""Results sealed to the analyst: what the coordinator stores can be opened only with the analyst's key.

For every query the analyst's client makes a fresh X25519 key pair, keeps the private half on its own
disk (mode 0600) and sends the public half with the query. The coordinator seals the result to it
(an ephemeral X25519 key, HKDF-SHA256 bound to the query id, AES-256-GCM) before storing it, so a
result kept until the analyst collects it is unreadable on the coordinator's disk, and only that
analyst's key opens it.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedlink.errors import BadInput, Fault

_MAGIC = b"FLS1"
_RAW = serialization.Encoding.Raw


def new_key() -> tuple[bytes, str]:
    """A fresh key pair: the raw private key (keep it secret) and the public key (base64, to send)."""
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
    return raw, base64.b64encode(public).decode()


def _key(shared: bytes, query_id: str) -> bytes:
    info = f"fedlink sealed result v1\x00{query_id}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def seal(recipient: str, query_id: str, data: bytes) -> bytes:
    """``data`` sealed to the base64 X25519 public key ``recipient`` for query ``query_id``."""
    try:
        public = X25519PublicKey.from_public_bytes(base64.b64decode(recipient, validate=True))
    except ValueError as exc:
        raise BadInput("the query's result key is not a base64 X25519 public key; upgrade the analyst client") from exc
    ephemeral = X25519PrivateKey.generate()
    nonce = os.urandom(12)
    sealed = AESGCM(_key(ephemeral.exchange(public), query_id)).encrypt(nonce, data, query_id.encode())
    return _MAGIC + ephemeral.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw) + nonce + sealed


def open_sealed(private: bytes, query_id: str, blob: bytes) -> bytes:
    """The data of a :func:`seal`-ed blob, with the raw private key it was sealed to."""
    if blob[:4] != _MAGIC or len(blob) < 4 + 32 + 12 + 16:
        raise Fault(f"the stored result of query {query_id[:8]} is not a sealed result; nothing to open")
    ephemeral = X25519PublicKey.from_public_bytes(blob[4:36])
    key = _key(X25519PrivateKey.from_private_bytes(private).exchange(ephemeral), query_id)
    try:
        return AESGCM(key).decrypt(blob[36:48], blob[48:], query_id.encode())
    except InvalidTag as exc:
        raise Fault(f"the result of query {query_id[:8]} does not open with this analyst's key for it") from exc
