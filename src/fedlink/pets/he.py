"""Homomorphic encryption with TenSEAL: the analyst's keys, node-side encryption, coordinator-side
addition of ciphertexts, analyst-side decryption.

- **BFV** carries integer vectors (counts, histogram bins, with their integer DP noise) exactly: the
  plain modulus is a 40-bit batching prime, so any sum below 2^39 in absolute value decrypts exactly.
- **CKKS** carries real vectors (clamped sums) with a 2^40 scale: relative error around 1e-12.

Only additions are ever performed, so no relinearisation or Galois keys are generated or sent: the
public context is the public key alone (about 0.5 MB per scheme). A vector longer than
:data:`SLOTS` is split into several ciphertexts. The analyst's :class:`AnalystKeys` never sends its
secret key; it keeps it on the analyst's own disk only (:meth:`AnalystKeys.secret_contexts`, so that a
result stored at the coordinator can be collected later). Every other party loads contexts with
:func:`load_public_context`, which refuses one that carries a secret key.
"""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from fedlink.errors import BadInput, Fault

Scheme = Literal["bfv", "ckks"]
POLY_DEGREE = 8192
#: Values per ciphertext: half the ring degree, safely inside what both schemes batch.
SLOTS = POLY_DEGREE // 2
CKKS_SCALE = 2.0**40
CKKS_MODULI = [60, 40, 40, 60]


@lru_cache(maxsize=1)
def plain_modulus() -> int:
    """A 40-bit prime congruent to 1 modulo 2 * POLY_DEGREE (needed for BFV batching)."""
    from tenseal import sealapi

    return int(sealapi.PlainModulus.Batching(POLY_DEGREE, 40).value())


def _public_bytes(context: Any) -> bytes:
    return bytes(
        context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    )


class AnalystKeys:
    """A fresh key pair per query and scheme, generated and kept in the analyst's process."""

    def __init__(self, schemes: Sequence[Scheme], restored: dict[str, bytes] | None = None) -> None:
        """Fresh keys for ``schemes``, or with ``restored`` the keys :meth:`secret_contexts` saved."""
        import tenseal as ts

        self._contexts: dict[str, Any] = {}
        if restored is not None:
            self._contexts = {scheme: ts.context_from(blob) for scheme, blob in restored.items()}
            return
        for scheme in sorted(set(schemes)):
            if scheme == "bfv":
                ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=POLY_DEGREE, plain_modulus=plain_modulus())
            else:
                ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=POLY_DEGREE, coeff_mod_bit_sizes=CKKS_MODULI)
                ctx.global_scale = CKKS_SCALE
            self._contexts[scheme] = ctx

    def public_contexts(self) -> dict[str, str]:
        """What may leave the analyst: each scheme's public key, base64-encoded, no secret key."""
        return {scheme: base64.b64encode(_public_bytes(ctx)).decode() for scheme, ctx in self._contexts.items()}

    def secret_contexts(self) -> dict[str, bytes]:
        """Each scheme's context with its secret key, to keep on the analyst's own disk (never to send)."""
        only_secret = {"save_public_key": False, "save_secret_key": True, "save_galois_keys": False}
        return {
            scheme: bytes(ctx.serialize(**only_secret, save_relin_keys=False)) for scheme, ctx in self._contexts.items()
        }

    def decrypt(self, scheme: Scheme, chunks: Sequence[str], length: int) -> np.ndarray:
        import tenseal as ts

        ctx = self._contexts[scheme]
        values: list[float] = []
        for chunk in chunks:
            blob = base64.b64decode(chunk)
            vector = ts.bfv_vector_from(ctx, blob) if scheme == "bfv" else ts.ckks_vector_from(ctx, blob)
            values.extend(vector.decrypt())
        if len(values) < length:
            raise Fault("the encrypted result is shorter than the query's cell layout; nothing to decrypt")
        return np.asarray(values[:length], dtype=float)

    def secret_key_bytes(self) -> list[bytes]:
        """The serialised secret keys alone (SEAL format), for tests that prove they never cross the wire."""
        out = []
        for ctx in self._contexts.values():
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "secret.key")
                ctx.secret_key().data.save(path)
                with open(path, "rb") as handle:
                    out.append(handle.read())
        return out


@dataclass(frozen=True)
class PublicContext:
    scheme: Scheme
    context: Any


def load_public_context(scheme: Scheme, encoded: str) -> PublicContext:
    """Load a context received from an analyst, refusing one that carries a secret key."""
    import tenseal as ts

    try:
        context = ts.context_from(base64.b64decode(encoded))
    except Exception as exc:
        raise BadInput(f"the {scheme.upper()} context sent with the query is not a valid TenSEAL context") from exc
    if context.is_private() or context.has_secret_key():
        raise BadInput("the query carried a secret key; an analyst client must send only public contexts")
    return PublicContext(scheme, context)


def encrypt(public: PublicContext, values: np.ndarray) -> list[str]:
    """Encrypt a vector (split into :data:`SLOTS`-sized ciphertexts), base64-encoded."""
    import tenseal as ts

    chunks = []
    for start in range(0, max(len(values), 1), SLOTS):
        part = values[start : start + SLOTS]
        if public.scheme == "bfv":
            vector = ts.bfv_vector(public.context, [round(v) for v in part.tolist()])
        else:
            vector = ts.ckks_vector(public.context, part.tolist())
        chunks.append(base64.b64encode(bytes(vector.serialize())).decode())
    return chunks


def add(public: PublicContext, operands: Sequence[Sequence[str]]) -> list[str]:
    """Element-wise sum of several encrypted vectors of the same layout (done by the coordinator)."""
    import tenseal as ts

    if not operands or len({len(o) for o in operands}) != 1:
        raise Fault("nodes returned encrypted vectors of different shapes; nothing was released")
    load = ts.bfv_vector_from if public.scheme == "bfv" else ts.ckks_vector_from
    sums = []
    for position in range(len(operands[0])):
        total = load(public.context, base64.b64decode(operands[0][position]))
        for other in operands[1:]:
            total += load(public.context, base64.b64decode(other[position]))
        sums.append(base64.b64encode(bytes(total.serialize())).decode())
    return sums
