"""Encrypted slot-wise products over the link spine: BFV through SEAL's low-level API (``tenseal.sealapi``).

A linked query multiplies, slot by slot, one plaintext vector per node (a 0/1 indicator of "this person
is here and matches my predicates", a value, a group or bin indicator) and sums the products over the
slots. Here:

- the first node **encrypts** its vector under the analyst's public key (:meth:`ChainEvaluator.encrypt`);
- every next node **multiplies** the ciphertexts by its own plaintext vector (plain x cipher, in NTT
  form), or ORs its indicator in when it holds the same table as the node before it
  (:meth:`ChainEvaluator.union`), and **re-randomises** what it sends by adding a fresh encryption
  (of zero, or of its indicator for a union). Without that step a plain x cipher product is
  deterministic: anyone holding both the ciphertext that came in and the one that went out (the
  coordinator, which relays both) could divide them, coefficient by coefficient in NTT form, and read
  the node's plaintext vector. A fresh encryption makes the outgoing ciphertext look like any other
  encryption to everyone without the analyst's secret key (RLWE);
- the last node multiplies by one vector per result cell, sums the chunks into one ciphertext per cell
  and adds a fresh encryption of a **zero-sum mask plus its DP noise** (:meth:`ChainEvaluator.finish`):
  every slot becomes uniformly random modulo t except for their sum, which is the noisy aggregate.
  The analyst decrypts and adds the slots (:meth:`ChainKeys.total`), so the one number it learns per
  cell is the noisy aggregate. No rotation (Galois) or relinearisation key exists, so the public
  context is a public key alone, and DP and masking are done by a data-holding node: neither depends on
  the coordinator's honesty.

Residual risk, stated: the decryption *noise* of a cell (below the plaintext, visible only to the
analyst, who holds the secret key) is a function of the nodes' vectors and the first node's random
coins; it is not flooded to statistical independence, because SEAL's Python binding gives no access to
the coefficients. Extracting data from it would take an attack on the noise distribution of a sum of
thousands of products with unknown randomness; fedlink does not claim circuit privacy against it.

Parameters follow the plan (:meth:`ChainParams.for_chain`): every plain x cipher product costs about
``log2(t) + 5`` bits of noise budget, so the ring keeps as few 60-bit primes as the chain needs (cost
per slot is proportional to their number). Counts use a 26-bit plain modulus, sums a 30-bit one (room
for fixed-point values). Parties derive the parameters from the plan themselves; only the public key
travels.

Work on a vector is split by chunks (``N`` slots each) across a process pool (:mod:`fedlink.pets.pool`;
SEAL's binding holds the GIL), so a node uses all its cores on a large spine.
"""

from __future__ import annotations

import base64
import os
import secrets
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fedlink.errors import BadInput, Fault
from fedlink.pets import pool

MAX_MULTIPLICATIONS = 6
COUNT_PLAIN_BITS = 26
SUM_PLAIN_BITS = 30
_SCRATCH = threading.local()


@dataclass(frozen=True)
class ChainParams:
    """BFV parameters of one linked query: ring degree (= slots per ciphertext), the bit sizes of the
    coefficient modulus primes (the last is SEAL's special prime) and of the plain modulus."""

    poly_degree: int
    coeff_bits: tuple[int, ...]
    plain_bits: int

    @classmethod
    def for_chain(cls, multiplications: int, sums: bool = False) -> ChainParams:
        """The cheapest parameters whose noise budget outlasts ``multiplications`` products, summed over
        a spine of millions (measured budgets left: ``tests/unit/test_linked_sql.py``)."""
        plain = SUM_PLAIN_BITS if sums else COUNT_PLAIN_BITS
        if multiplications <= (1 if sums else 2):
            return cls(8192, (60, 60, 58), plain)
        if multiplications <= 3:
            return cls(8192, (60, 60, 60, 38), plain)
        if multiplications <= MAX_MULTIPLICATIONS:
            return cls(16384, (60,) * 6, plain)
        raise BadInput(
            f"the query needs {multiplications} encrypted multiplications, more than {MAX_MULTIPLICATIONS}; "
            "link fewer tables or nodes in one query"
        )

    @property
    def slots(self) -> int:
        return self.poly_degree

    @property
    def plain_modulus(self) -> int:
        return int(self.context().first_context_data().parms().plain_modulus().value())

    @property
    def max_total(self) -> int:
        """Largest absolute total that decrypts unambiguously (totals are centred modulo t)."""
        return self.plain_modulus // 2 - 1

    def context(self) -> Any:
        return _context(self.poly_degree, self.coeff_bits, self.plain_bits)


@lru_cache(maxsize=8)
def _context(poly_degree: int, coeff_bits: tuple[int, ...], plain_bits: int) -> Any:
    from tenseal import sealapi

    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(poly_degree)
    parms.set_coeff_modulus(sealapi.CoeffModulus.Create(poly_degree, list(coeff_bits)))
    parms.set_plain_modulus(sealapi.PlainModulus.Batching(poly_degree, plain_bits))
    context = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():
        raise Fault(f"SEAL refuses the chain parameters: {context.parameter_error_message()}")
    return context


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

    def __init__(self, params: ChainParams, secret: bytes | None = None) -> None:
        """A fresh key pair for ``params``, or with ``secret`` the key :meth:`secret_key_bytes` saved."""
        from tenseal import sealapi

        self.params = params
        context = params.context()
        if secret is None:
            self._keygen = sealapi.KeyGenerator(context)
        else:
            self._keygen = sealapi.KeyGenerator(context, _load(sealapi.SecretKey(), context, secret))
        public = sealapi.PublicKey()
        self._keygen.create_public_key(public)
        self._public = public
        self._decryptor = sealapi.Decryptor(context, self._keygen.secret_key())
        self._encoder = sealapi.BatchEncoder(context)

    def public_key(self) -> str:
        return base64.b64encode(_save(self._public)).decode()

    def total(self, blob: bytes) -> int:
        """Decrypt one masked cell and add its slots modulo t: the noisy aggregate, centred."""
        from tenseal import sealapi

        ciphertext = _load(sealapi.Ciphertext(), self.params.context(), blob)
        if ciphertext.is_ntt_form():
            raise Fault("a result cell arrived in NTT form; the last node of the chain must finish it")
        if self._decryptor.invariant_noise_budget(ciphertext) <= 0:
            raise Fault("an encrypted result ran out of noise budget and cannot be decrypted; report this as a bug")
        plain = sealapi.Plaintext()
        self._decryptor.decrypt(ciphertext, plain)
        t = self.params.plain_modulus
        total = sum(self._encoder.decode_uint64(plain)) % t
        return total - t if total > t // 2 else total

    def noise_budget(self, blob: bytes) -> int:
        """Bits of noise budget a ciphertext has left (tests check the parameters with it)."""
        from tenseal import sealapi

        ciphertext = _load(sealapi.Ciphertext(), self.params.context(), blob)
        if ciphertext.is_ntt_form():
            sealapi.Evaluator(self.params.context()).transform_from_ntt_inplace(ciphertext)
        return int(self._decryptor.invariant_noise_budget(ciphertext))

    def secret_key_bytes(self) -> bytes:
        """The serialised secret key: kept on the analyst's own disk to collect a stored result later,
        and used by tests that prove it never crosses the wire."""
        return _save(self._keygen.secret_key())


class ChainEvaluator:
    """What nodes and the coordinator do with ciphertexts of one linked query (they hold no secret key).

    The vector methods (:meth:`encrypt`, :meth:`multiply`, :meth:`union`, :meth:`finish`) split their
    chunks across the worker pool (:mod:`fedlink.pets.pool`) when there are several; the ``_chunks_*``
    methods do the work on a run of chunks, in this process or in a worker.
    """

    def __init__(self, params: ChainParams, public_key: str) -> None:
        from tenseal import sealapi

        self.params = params
        self.public_key = public_key
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
        from tenseal import sealapi

        padded = np.zeros(self.params.slots, dtype=np.int64)
        padded[: len(values)] = values
        plain = sealapi.Plaintext()
        self._encoder.encode((padded % self._t).astype(np.uint64).tolist(), plain)
        return plain

    def _encrypted(self, values: np.ndarray | None) -> Any:
        """A fresh encryption of ``values`` (of zero when None)."""
        from tenseal import sealapi

        ciphertext = sealapi.Ciphertext()
        if values is None:
            self._encryptor.encrypt_zero(ciphertext)
        else:
            self._encryptor.encrypt(self._plain(values), ciphertext)
        return ciphertext

    def load(self, blob: bytes) -> Any:
        """A ciphertext of this query's parameters (raises :class:`Fault` for anything else)."""
        from tenseal import sealapi

        return _load(sealapi.Ciphertext(), self.context, blob)

    def _ntt(self, blob: bytes) -> Any:
        ciphertext = self.load(blob)
        if not ciphertext.is_ntt_form():
            self._evaluator.transform_to_ntt_inplace(ciphertext)
        return ciphertext

    def _coefficients(self, blob: bytes) -> Any:
        ciphertext = self.load(blob)
        if ciphertext.is_ntt_form():
            self._evaluator.transform_from_ntt_inplace(ciphertext)
        return ciphertext

    def _times(self, ciphertext: Any, values: np.ndarray) -> Any:
        """ciphertext (NTT form) times a non-zero plaintext chunk, as a new NTT-form ciphertext."""
        from tenseal import sealapi

        plain = self._plain(values)
        self._evaluator.transform_to_ntt_inplace(plain, ciphertext.parms_id())
        out = sealapi.Ciphertext()
        self._evaluator.multiply_plain(ciphertext, plain, out)
        return out

    def _split(self, count: int) -> list[tuple[int, int]]:
        return pool.split(count)

    def _slice(self, vector: np.ndarray | None, start: int, stop: int) -> np.ndarray | None:
        if vector is None:
            return None
        return vector[start * self.params.slots : stop * self.params.slots]

    def _spread(self, method: str, jobs: list[tuple[Any, ...]]) -> list[Any]:
        """Run ``method`` on each job's arguments, in the worker pool when there are several jobs."""
        if len(jobs) <= 1:
            return [getattr(self, method)(*job) for job in jobs]
        return pool.spread(_run, [(self.params, self.public_key, method, job) for job in jobs])

    def _check(self, chunks: Sequence[bytes], length: int) -> None:
        if len(chunks) != self.chunks(length):
            raise Fault(
                f"{len(chunks)} ciphertexts arrived for {length} slots; the nodes hold different link "
                "spines: rebuild it with `fedlink link`"
            )

    # --- chain steps -------------------------------------------------------------------------------
    def encrypt(self, vector: np.ndarray) -> list[bytes]:
        """The first node: its vector over all slots, as ceil(slots / N) ciphertexts."""
        jobs = [(self._slice(vector, a, b),) for a, b in self._split(self.chunks(len(vector)))]
        return [blob for part in self._spread("_chunks_encrypt", jobs) for blob in part]

    def multiply(self, chunks: Sequence[bytes], vector: np.ndarray) -> list[bytes]:
        """A middle node: slot-wise product with its plaintext vector, re-randomised, in NTT form."""
        self._check(chunks, len(vector))
        jobs = [(list(chunks[a:b]), self._slice(vector, a, b)) for a, b in self._split(len(chunks))]
        return [blob for part in self._spread("_chunks_multiply", jobs) for blob in part]

    def union(self, chunks: Sequence[bytes], indicator: np.ndarray) -> list[bytes]:
        """A node holding the same table as the first: x OR b = x * (1 - b) + Enc(b), slot-wise, for 0/1
        x and b; the fresh encryption of b re-randomises the result."""
        self._check(chunks, len(indicator))
        jobs = [(list(chunks[a:b]), self._slice(indicator, a, b)) for a, b in self._split(len(chunks))]
        return [blob for part in self._spread("_chunks_union", jobs) for blob in part]

    def finish(
        self,
        chunks: Sequence[bytes],
        base: np.ndarray,
        cell_of_slot: np.ndarray | None,
        cells: int,
        noise: Sequence[int],
    ) -> list[bytes]:
        """The last node: for each cell ``c``, the sum over slots of ciphertext x base x [cell_of_slot == c]
        (one cell of all slots when ``cell_of_slot`` is None), as one ciphertext per cell whose slots are
        uniformly random except for their sum, which is the total plus ``noise[c]``."""
        if len(noise) != cells:
            raise Fault("one noise value per result cell is needed")
        sums = self.products(chunks, base, cell_of_slot, cells)
        return self.seal([[p] if p is not None else [] for p in sums], noise)

    def products(
        self, chunks: Sequence[bytes], base: np.ndarray, cell_of_slot: np.ndarray | None, cells: int
    ) -> list[bytes | None]:
        """The last node, over a window of the spine: per cell, the sum over these slots of ciphertext x
        base x [cell_of_slot == c], not yet sealed (None where no slot counts). Windows' sums add up with
        :meth:`combine`; :meth:`seal` finishes them."""
        self._check(chunks, len(base))
        if cell_of_slot is not None and len(cell_of_slot) != len(base):
            raise Fault("the group of every slot is needed")
        jobs = [
            (list(chunks[a:b]), self._slice(base, a, b), self._slice(cell_of_slot, a, b), cells)
            for a, b in self._split(len(chunks))
        ]
        partials = self._spread("_chunks_products", jobs)
        return [self.combine([part[c] for part in partials if part[c] is not None]) for c in range(cells)]

    def combine(self, sums: Sequence[bytes | None]) -> bytes | None:
        """Sums of :meth:`products` (of the same cell) added into one; None when there are none."""
        present = [s for s in sums if s is not None]
        if len(present) <= 1:
            return present[0] if present else None
        total = self._ntt(present[0])
        for other in present[1:]:
            self._evaluator.add_inplace(total, self._ntt(other))
        return _save(total)

    def seal(self, per_cell: Sequence[Sequence[bytes]], noise: Sequence[int]) -> list[bytes]:
        """One ciphertext per cell: its sums (from :meth:`products`) added, plus a fresh encryption of a
        zero-sum mask and the cell's noise."""
        if len(noise) != len(per_cell):
            raise Fault("one noise value per result cell is needed")
        spans = self._split(len(per_cell))
        sealed = self._spread(
            "_cells_seal", [([list(p) for p in per_cell[a:b]], [int(n) for n in noise[a:b]]) for a, b in spans]
        )
        return [blob for part in sealed for blob in part]

    # --- work on a run of chunks (here or in a worker) ---------------------------------------------
    def _chunks_encrypt(self, vector: np.ndarray) -> list[bytes]:
        n = self.params.slots
        return [_save(self._encrypted(vector[i : i + n])) for i in range(0, max(len(vector), 1), n)]

    def _chunks_multiply(self, chunks: list[bytes], vector: np.ndarray) -> list[bytes]:
        n = self.params.slots
        out = []
        for i, blob in enumerate(chunks):
            part = vector[i * n : (i + 1) * n]
            fresh = self._encrypted(None)
            self._evaluator.transform_to_ntt_inplace(fresh)
            if part.any():
                product = self._times(self._ntt(blob), part)
                self._evaluator.add_inplace(product, fresh)
            else:  # a zero plaintext would make a transparent ciphertext: zero is a fresh encryption of 0
                self.load(blob)
                product = fresh
            out.append(_save(product))
        return out

    def _chunks_union(self, chunks: list[bytes], indicator: np.ndarray) -> list[bytes]:
        n = self.params.slots
        out = []
        for i, blob in enumerate(chunks):
            part = indicator[i * n : (i + 1) * n]
            fresh = self._encrypted(part)
            ciphertext = self._coefficients(blob)
            keep = 1 - part
            if keep.any():
                self._evaluator.multiply_plain_inplace(ciphertext, self._plain(keep))
                self._evaluator.add_inplace(ciphertext, fresh)
            else:  # everyone here is in b: x * 0 would be transparent, and the OR is b itself
                ciphertext = fresh
            out.append(_save(ciphertext))
        return out

    def _chunks_products(
        self, chunks: list[bytes], base: np.ndarray, cell_of_slot: np.ndarray | None, cells: int
    ) -> list[bytes | None]:
        """Per cell, the sum over these chunks of ciphertext x factor (NTT form), None where no slot counts."""
        n = self.params.slots
        totals: list[Any] = [None] * cells
        for i, blob in enumerate(chunks):
            ciphertext = self._ntt(blob)
            part = base[i * n : (i + 1) * n]
            where = cell_of_slot[i * n : (i + 1) * n] if cell_of_slot is not None else None
            for cell in range(cells):
                factor = part if where is None else part * (where == cell)
                if not factor.any():
                    continue
                product = self._times(ciphertext, factor)
                if totals[cell] is None:
                    totals[cell] = product
                else:
                    self._evaluator.add_inplace(totals[cell], product)
        return [None if total is None else _save(total) for total in totals]

    def _cells_seal(self, partials: list[list[bytes]], noise: list[int]) -> list[bytes]:
        """Each cell's partial sums added, then a fresh encryption of a zero-sum mask plus the noise."""
        out = []
        for parts, draw in zip(partials, noise, strict=True):
            mask = self._mask()
            mask[0] = (mask[0] + draw) % self._t
            sealed = self._encrypted(mask)
            if parts:
                total = self._ntt(parts[0])
                for other in parts[1:]:
                    self._evaluator.add_inplace(total, self._ntt(other))
                self._evaluator.transform_from_ntt_inplace(total)
                self._evaluator.add_inplace(sealed, total)
            out.append(_save(sealed))
        return out

    def _mask(self) -> np.ndarray:
        """Uniformly random slots modulo t that sum to zero modulo t."""
        rng = np.random.default_rng(int.from_bytes(secrets.token_bytes(32), "big"))
        mask = rng.integers(0, self._t, size=self.params.slots, dtype=np.int64)
        mask[-1] = (-int(mask[:-1].sum())) % self._t
        return mask


# --- work in the pool ------------------------------------------------------------------------------
@lru_cache(maxsize=2)
def _worker_evaluator(params: ChainParams, public_key: str) -> ChainEvaluator:
    return ChainEvaluator(params, public_key)


def _run(params: ChainParams, public_key: str, method: str, job: tuple[Any, ...]) -> Any:
    work: Callable[..., Any] = getattr(_worker_evaluator(params, public_key), method)
    return work(*job)
