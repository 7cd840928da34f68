"""Encrypted slot-wise products over the link spine: BFV through SEAL's low-level API (``tenseal.sealapi``).

A linked query multiplies, slot by slot, one plaintext vector per node (a 0/1 indicator of "this person
is here and matches my predicates", a value, a group or bin indicator) and sums the products over the
slots. Here:

- the first node **encrypts** its vector under the analyst's public key (:meth:`ChainEvaluator.encrypt`);
- every next node **multiplies** the ciphertexts by its own plaintext vector (plain x cipher, in NTT
  form: ~0.25 ms per 8192 slots once the plaintext is encoded), or ORs its indicator in when it holds
  the same table as the node before it;
- the last node multiplies by one vector per result cell, **sums the chunks** into one ciphertext per
  cell and **adds its DP noise** to slot 0 under encryption (:meth:`ChainEvaluator.finish`);
- the coordinator adds a fresh **encryption of a zero-sum mask** to each cell's ciphertext
  (:meth:`ChainEvaluator.mask`): every slot becomes uniformly random except for their sum, which is
  the noisy aggregate. The analyst decrypts and adds the slots (:meth:`ChainKeys.total`), so the one
  number it learns per cell is the noisy aggregate, and the coordinator needs no rotation (Galois) keys.

No rotation or relinearisation key exists, so the public context is a public key alone. Every
multiplication costs noise budget, so the parameters follow the number of multiplications a plan
needs (:meth:`ChainParams.for_multiplications`): ring degree 8192 with a 30-bit plain modulus up to
three, 16384 with a 40-bit plain modulus up to six. Parties derive the parameters from the plan
themselves; only the public key travels.
"""

from __future__ import annotations

import base64
import os
import secrets
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from tenseal import sealapi

from fedlink.errors import BadInput, Fault

MAX_MULTIPLICATIONS = 6
_SCRATCH = threading.local()


@dataclass(frozen=True)
class ChainParams:
    """BFV parameters of one linked query: ring degree (= slots per ciphertext) and plain modulus bits."""

    poly_degree: int
    plain_bits: int

    @classmethod
    def for_multiplications(cls, multiplications: int) -> ChainParams:
        if multiplications <= 3:
            return cls(8192, 30)
        if multiplications <= MAX_MULTIPLICATIONS:
            return cls(16384, 40)
        raise BadInput(
            f"the query needs {multiplications} encrypted multiplications, more than {MAX_MULTIPLICATIONS}; "
            "link fewer tables or nodes in one query"
        )

    @property
    def slots(self) -> int:
        return self.poly_degree

    @property
    def plain_modulus(self) -> int:
        return int(_context(self.poly_degree, self.plain_bits).first_context_data().parms().plain_modulus().value())

    @property
    def max_total(self) -> int:
        """Largest absolute total that decrypts unambiguously (totals are centred modulo t)."""
        return self.plain_modulus // 2 - 1

    def context(self) -> Any:
        return _context(self.poly_degree, self.plain_bits)


@lru_cache(maxsize=4)
def _context(poly_degree: int, plain_bits: int) -> Any:
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(poly_degree)
    parms.set_coeff_modulus(sealapi.CoeffModulus.BFVDefault(poly_degree, sealapi.SEC_LEVEL_TYPE.TC128))
    parms.set_plain_modulus(sealapi.PlainModulus.Batching(poly_degree, plain_bits))
    return sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)


def _scratch_dir() -> Path:
    """A private per-process folder (in memory where the OS offers one) for SEAL's file-based I/O."""
    folder = getattr(_SCRATCH, "folder", None)
    if folder is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        folder = Path(tempfile.mkdtemp(prefix="fedlink-he-", dir=base))
        os.chmod(folder, 0o700)
        _SCRATCH.folder = folder
    return Path(folder)


@contextmanager
def _scratch_file() -> Iterator[str]:
    path = _scratch_dir() / uuid.uuid4().hex
    try:
        yield str(path)
    finally:
        path.unlink(missing_ok=True)


def _save(obj: Any) -> bytes:
    with _scratch_file() as path:
        obj.save(path)
        with open(path, "rb") as handle:
            return handle.read()


def _load(obj: Any, context: Any, blob: bytes) -> Any:
    with _scratch_file() as path:
        with open(path, "wb") as handle:
            handle.write(blob)
        try:
            obj.load(context, path)
        except Exception as exc:  # SEAL refuses data that does not fit the parameters
            raise Fault("a ciphertext or key does not match this query's encryption parameters") from exc
    return obj


class ChainKeys:
    """The analyst's fresh key pair for one linked query; only :meth:`public_key` leaves the process."""

    def __init__(self, params: ChainParams) -> None:
        self.params = params
        context = params.context()
        self._keygen = sealapi.KeyGenerator(context)
        public = sealapi.PublicKey()
        self._keygen.create_public_key(public)
        self._public = public
        self._decryptor = sealapi.Decryptor(context, self._keygen.secret_key())
        self._encoder = sealapi.BatchEncoder(context)

    def public_key(self) -> str:
        return base64.b64encode(_save(self._public)).decode()

    def total(self, blob: bytes) -> int:
        """Decrypt one masked cell and add its slots modulo t: the noisy aggregate, centred."""
        ciphertext = _load(sealapi.Ciphertext(), self.params.context(), blob)
        if self._decryptor.invariant_noise_budget(ciphertext) <= 0:
            raise Fault("an encrypted result ran out of noise budget and cannot be decrypted; report this as a bug")
        plain = sealapi.Plaintext()
        self._decryptor.decrypt(ciphertext, plain)
        t = self.params.plain_modulus
        total = sum(self._encoder.decode_uint64(plain)) % t
        return total - t if total > t // 2 else total

    def secret_key_bytes(self) -> bytes:
        """The serialised secret key (for tests that prove it never crosses the wire)."""
        return _save(self._keygen.secret_key())


class ChainEvaluator:
    """What nodes and the coordinator do with ciphertexts of one linked query (they hold no secret key)."""

    def __init__(self, params: ChainParams, public_key: str) -> None:
        self.params = params
        self.context = params.context()
        try:
            blob = base64.b64decode(public_key, validate=True)
        except ValueError as exc:
            raise BadInput("the linked query's public key is not valid base64") from exc
        self._public = _load(sealapi.PublicKey(), self.context, blob)
        self._encryptor = sealapi.Encryptor(self.context, self._public)
        self._evaluator = sealapi.Evaluator(self.context)
        self._encoder = sealapi.BatchEncoder(self.context)
        self._t = params.plain_modulus

    # --- helpers ---------------------------------------------------------------------------------
    def chunks(self, length: int) -> int:
        return max(1, -(-length // self.params.slots))

    def _plain(self, values: np.ndarray) -> Any:
        padded = np.zeros(self.params.slots, dtype=np.int64)
        padded[: len(values)] = values
        plain = sealapi.Plaintext()
        self._encoder.encode((padded % self._t).astype(np.uint64).tolist(), plain)
        return plain

    def _chunk(self, vector: np.ndarray, index: int) -> np.ndarray:
        n = self.params.slots
        return vector[index * n : (index + 1) * n]

    def _load(self, blob: bytes) -> Any:
        return _load(sealapi.Ciphertext(), self.context, blob)

    def _ntt(self, blob: bytes) -> Any:
        ciphertext = self._load(blob)
        if not ciphertext.is_ntt_form():
            self._evaluator.transform_to_ntt_inplace(ciphertext)
        return ciphertext

    def _times(self, ciphertext: Any, values: np.ndarray) -> Any:
        """ciphertext (NTT form) times a plaintext chunk, as a new NTT-form ciphertext."""
        plain = self._plain(values)
        self._evaluator.transform_to_ntt_inplace(plain, ciphertext.parms_id())
        out = sealapi.Ciphertext()
        self._evaluator.multiply_plain(ciphertext, plain, out)
        return out

    # --- chain steps -------------------------------------------------------------------------------
    def encrypt(self, vector: np.ndarray) -> list[bytes]:
        """The first node: its vector over all slots, as ceil(slots / N) ciphertexts."""
        out = []
        for index in range(self.chunks(len(vector))):
            ciphertext = sealapi.Ciphertext()
            self._encryptor.encrypt(self._plain(self._chunk(vector, index)), ciphertext)
            out.append(_save(ciphertext))
        return out

    def multiply(self, chunks: Sequence[bytes], vector: np.ndarray) -> list[bytes]:
        """A middle node: slot-wise product with its plaintext vector (the ciphertexts stay in NTT form)."""
        self._check(chunks, vector)
        return [_save(self._times(self._ntt(blob), self._chunk(vector, i))) for i, blob in enumerate(chunks)]

    def union(self, chunks: Sequence[bytes], indicator: np.ndarray) -> list[bytes]:
        """A node holding the same table as the first: x OR b = x * (1 - b) + b, slot-wise, for 0/1 x and b."""
        self._check(chunks, indicator)
        out = []
        for i, blob in enumerate(chunks):
            ciphertext = self._load(blob)
            if ciphertext.is_ntt_form():
                self._evaluator.transform_from_ntt_inplace(ciphertext)
            part = self._chunk(indicator, i)
            self._evaluator.multiply_plain_inplace(ciphertext, self._plain(1 - part))
            self._evaluator.add_plain_inplace(ciphertext, self._plain(part))
            out.append(_save(ciphertext))
        return out

    def finish(self, chunks: Sequence[bytes], cells: Sequence[np.ndarray], noise: Sequence[int]) -> list[bytes]:
        """The last node: for each cell, the sum over slots of ciphertext x that cell's vector, one
        ciphertext per cell, with the cell's DP noise added to slot 0 under encryption."""
        if len(cells) != len(noise):
            raise Fault("one noise value per result cell is needed")
        for vector in cells:
            self._check(chunks, vector)
        ready = [self._ntt(blob) for blob in chunks]
        out = []
        for vector, draw in zip(cells, noise, strict=True):
            total = None
            for i, ciphertext in enumerate(ready):
                part = self._chunk(vector, i)
                if not part.any():
                    continue
                product = self._times(ciphertext, part)
                if total is None:
                    total = product
                else:
                    self._evaluator.add_inplace(total, product)
            if total is None:  # no slot contributes: an encryption of zero keeps the shape uniform
                total = sealapi.Ciphertext()
                self._encryptor.encrypt(self._plain(np.zeros(1, dtype=np.int64)), total)
            elif total.is_ntt_form():
                self._evaluator.transform_from_ntt_inplace(total)
            self._evaluator.add_plain_inplace(total, self._plain(np.array([draw], dtype=np.int64)))
            out.append(_save(total))
        return out

    def mask(self, blob: bytes) -> bytes:
        """The coordinator: add a fresh encryption of uniformly random slots that sum to zero modulo t,
        so decryption reveals the sum of the slots and nothing about any one of them."""
        ciphertext = self._load(blob)
        if ciphertext.is_ntt_form():
            self._evaluator.transform_from_ntt_inplace(ciphertext)
        rng = np.random.default_rng(int.from_bytes(secrets.token_bytes(32), "big"))
        mask = rng.integers(0, self._t, size=self.params.slots, dtype=np.int64)
        mask[-1] = (-int(mask[:-1].sum())) % self._t
        fresh = sealapi.Ciphertext()
        self._encryptor.encrypt(self._plain(mask), fresh)
        self._evaluator.add_inplace(ciphertext, fresh)
        return _save(ciphertext)

    def _check(self, chunks: Sequence[bytes], vector: np.ndarray) -> None:
        if len(chunks) != self.chunks(len(vector)):
            raise Fault(
                f"{len(chunks)} ciphertexts arrived for {len(vector)} slots; the nodes hold different link "
                "spines: rebuild it with `fedlink link`"
            )
