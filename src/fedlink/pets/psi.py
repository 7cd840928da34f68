"""Elliptic-curve Diffie-Hellman private set intersection: equal inputs meet, nothing else does.

Every node draws a fresh secret scalar ``k`` per linkage run. A node hashes each of its values to a
point of the group and multiplies it by its own ``k`` (:func:`hash_and_blind`); every other node then
multiplies those points by *its* ``k`` (:func:`reblind`), the last one hashing the result to 16 bytes
(:func:`finish`). Multiplication commutes, so two nodes' equal values end as equal digests, whatever
the order, while a digest is a pseudorandom function of the value under the product of all scalars:
without every node's scalar nobody (the coordinator included) can test a guessed value, and no node
sees another's values, only points that are uniformly random to it (DDH on secp256k1).

**Group and binding, chosen by measurement** (``benchmarks/test_bench_psi.py::test_group``, one core
of this project's machine, scalar multiplications per second through each binding): X25519 through
libsodium (PyNaCl) 25,100; secp256k1 through libsecp256k1 (coincurve's cffi binding) 19,200
variable-time and 13,800 constant-time; X25519 through OpenSSL 17,100; P-256 through OpenSSL 12,200;
ristretto255 through libsodium (pysodium) 10,300. The hash to the group decides: about 15 us for
secp256k1's ElligatorSwift decoding in C, against about 190 us for a random-oracle hash to Curve25519
through libsodium (two Elligator 2 maps, an addition, a conversion) and none in C for OpenSSL's curves;
per value and party (hash, blind, re-blind) secp256k1 costs about 160 us, X25519 about 270 us.

**Hash to group**: ``H(m) = ElligatorSwift-decode(SHA-512(DST || m))`` with libsecp256k1's
``secp256k1_ellswift_decode`` (BIP 324): it maps *every* 64-byte string to a curve point, in constant
time, and a uniform input gives a point statistically close to uniform (SwiftEC, Chavez-Saab et al.,
2022), so with SHA-512 as a random oracle ``H`` is a random oracle into the group and nobody knows the
discrete log of ``H(m)``. It costs about 15 us in C; RFC 9380's SSWU for secp256k1 would need a
square root and a 3-isogeny in Python big integers (about 40 us with gmpy2, 200 us without). The
domain-separation tag binds the project and the match-key tier, so digests of one tier or project
never meet another's.

Points travel uncompressed (64 bytes: x || y, parsed without a square root); final digests are
SHA-256 of the x-coordinate, truncated to 16 bytes. Work on many points is spread over the worker
pool (:mod:`fedlink.pets.pool`: libsecp256k1's binding holds the GIL).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from fedlink.errors import BadInput, Fault
from fedlink.pets import pool

POINT_BYTES = 64  #: x || y, big-endian
DIGEST_BYTES = 16
_DST = b"fedlink psi v1 secp256k1 ellswift sha512\x00"


@lru_cache(maxsize=1)
def _lib() -> tuple[Any, Any, Any]:
    try:
        from coincurve._libsecp256k1 import ffi, lib
        from coincurve.context import GLOBAL_CONTEXT
    except ImportError as exc:  # pragma: no cover - coincurve is a dependency
        raise Fault("PSI needs coincurve (libsecp256k1): pip install coincurve") from exc
    return ffi, lib, GLOBAL_CONTEXT.ctx


def new_scalar() -> bytes:
    """A fresh secret scalar in [1, n - 1] of secp256k1's group order n."""
    _ffi, lib, ctx = _lib()
    while True:
        scalar = secrets.token_bytes(32)
        if lib.secp256k1_ec_seckey_verify(ctx, scalar):
            return scalar


def domain(project: str, tier: str) -> bytes:
    """The domain-separation tag of one project's match-key tier."""
    return _DST + project.encode() + b"\x00" + tier.encode() + b"\x00"


def _check_scalar(scalar: bytes) -> None:
    _ffi, lib, ctx = _lib()
    if len(scalar) != 32 or not lib.secp256k1_ec_seckey_verify(ctx, scalar):
        raise BadInput("a PSI scalar must be 32 bytes in [1, n - 1]")


@lru_cache(maxsize=1)
def _copy_point() -> Any:
    """An ECDH 'hash function' for libsecp256k1 that returns the shared point itself (x || y)."""
    ffi = _lib()[0]

    @ffi.callback("int(unsigned char *, const unsigned char *, const unsigned char *, void *)")
    def copy(output: Any, x: Any, y: Any, _data: Any) -> int:
        ffi.memmove(output, x, 32)
        ffi.memmove(output + 32, y, 32)
        return 1

    return copy


class _Points:
    """cffi scratch for one run of points. Multiplication is ``secp256k1_ecdh`` (constant time in the
    scalar, which is secret) returning the point through :func:`_copy_point`; the library's
    ``tweak_mul`` is a third faster but variable-time, which could leak the scalar through timing."""

    def __init__(self) -> None:
        self.ffi, self.lib, self.ctx = _lib()
        self.point = self.ffi.new("secp256k1_pubkey *")
        self.out = self.ffi.new("unsigned char[64]")
        self.copy = _copy_point()

    def multiply(self, scalar: bytes) -> bytes:
        """This point times ``scalar``, as 64 bytes x || y."""
        if not self.lib.secp256k1_ecdh(self.ctx, self.out, self.point, scalar, self.copy, self.ffi.NULL):
            raise Fault("a PSI scalar multiplication failed; report this as a bug")
        return bytes(self.ffi.buffer(self.out, POINT_BYTES))

    def hash_to_point(self, dst: bytes, message: bytes) -> None:
        self.lib.secp256k1_ellswift_decode(self.ctx, self.point, hashlib.sha512(dst + message).digest())

    def parse(self, raw: bytes) -> None:
        if not self.lib.secp256k1_ec_pubkey_parse(self.ctx, self.point, b"\x04" + raw, 65):
            raise Fault("a PSI message holds a value that is not a point of secp256k1; nothing was linked")


def _hash_and_blind(messages: Sequence[bytes], dst: bytes, scalar: bytes) -> bytes:
    points = _Points()
    out = []
    for message in messages:
        points.hash_to_point(dst, message)
        out.append(points.multiply(scalar))
    return b"".join(out)


def _reblind(blob: bytes, scalar: bytes, final: bool) -> bytes:
    points = _Points()
    out = []
    for start in range(0, len(blob), POINT_BYTES):
        points.parse(blob[start : start + POINT_BYTES])
        raw = points.multiply(scalar)
        out.append(hashlib.sha256(raw[:32]).digest()[:DIGEST_BYTES] if final else raw)
    return b"".join(out)


def _count(blob: bytes) -> int:
    if len(blob) % POINT_BYTES:
        raise Fault(f"a PSI message is {len(blob)} bytes, not a whole number of {POINT_BYTES}-byte points")
    return len(blob) // POINT_BYTES


def hash_and_blind(messages: Sequence[bytes], dst: bytes, scalar: bytes) -> bytes:
    """``k * H(dst || m)`` for each message, as concatenated 64-byte points, in order."""
    _check_scalar(scalar)
    runs = pool.split(len(messages))
    parts = pool.spread(_hash_and_blind, [(list(messages[a:b]), dst, scalar) for a, b in runs])
    return b"".join(parts)


def reblind(blob: bytes, scalar: bytes, final: bool = False) -> bytes:
    """Each 64-byte point of ``blob`` times ``scalar``, in order; with ``final`` each result as its
    16-byte digest instead (the last node of the ring)."""
    _check_scalar(scalar)
    count = _count(blob)
    runs = pool.split(count)
    jobs = [(blob[a * POINT_BYTES : b * POINT_BYTES], scalar, final) for a, b in runs]
    return b"".join(pool.spread(_reblind, jobs))


def digests(blob: bytes) -> list[bytes]:
    """The 16-byte digests of a finished blob."""
    if len(blob) % DIGEST_BYTES:
        raise Fault("a finished PSI message is not a whole number of digests")
    return [blob[i : i + DIGEST_BYTES] for i in range(0, len(blob), DIGEST_BYTES)]
