"""Secure aggregation by pairwise zero-sum masks (no dropouts): the aggregator learns the sum of the
nodes' vectors and nothing about any one of them.

Every pair of nodes shares a secret no one else can compute (:meth:`NodeKeyAgreement.pairwise_secret`,
X25519 between certificate-signed keys, so the relay cannot stand in the middle). For each round, the
pair expands it into a uniformly random vector of 64-bit words (SHAKE-256 over the secret and the
round); the node whose name sorts first adds it, the other subtracts it. A node sends its vector in
fixed point (:data:`SCALE`) plus its masks, modulo 2^64: each sent vector is uniformly random to
anyone without the secrets, and in the sum every mask meets its negative. If a node does not answer,
the masks do not cancel and nothing can be released: the round fails as a whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from fedlink.errors import Fault

#: Fixed-point scale: values are sent as round(value * SCALE); sums up to about 2^38 stay exact.
SCALE = 2.0**24


def _stream(secret: bytes, round_id: str, length: int) -> np.ndarray:
    words = hashlib.shake_256(b"fedlink secagg v1\x00" + secret + round_id.encode()).digest(8 * length)
    return np.frombuffer(words, dtype="<u8")


def masked(values: np.ndarray, node: str, peers: Sequence[tuple[str, bytes]], round_id: str) -> bytes:
    """``values`` in fixed point, plus this node's pairwise masks for ``round_id``, as little-endian words."""
    fixed = np.rint(np.asarray(values, dtype=float) * SCALE)
    if not np.all(np.abs(fixed) < 2.0**62):
        raise Fault("a value is too large for secure aggregation's fixed point; report this as a bug")
    words = fixed.astype(np.int64).view(np.uint64).copy()
    for peer, secret in peers:
        if peer == node:
            continue
        mask = _stream(secret, round_id, len(words))
        words = words + mask if node < peer else words - mask  # wraps modulo 2^64
    return words.astype("<u8").tobytes()


def unmasked_sum(parts: Sequence[bytes], length: int) -> np.ndarray:
    """The sum of every node's masked vector: the masks cancel, the fixed point is undone."""
    total = np.zeros(length, dtype=np.uint64)
    for part in parts:
        words = np.frombuffer(part, dtype="<u8")
        if len(words) != length:
            raise Fault("a node sent a masked vector of the wrong length; nothing was released")
        total = total + words
    return total.view(np.int64).astype(float) / SCALE
