"""ECDH PSI (``fedlink link --mode psi``): the candidate groups' scalar multiplication through their
Python bindings (how :mod:`fedlink.pets.psi` chose secp256k1), two-party PSI of N x N items (half in
common, both parties in this one process sharing its cores, as on one 2-core machine) next to a
plaintext set intersection, and openmined-psi on the same sizes in its own Python (its protobuf pin
clashes with flwr's; ``FEDLINK_PEERS_PYTHON``, default ``/tmp/peers-venv/bin/python``; see
``benchmarks/peers/openmined_psi.py``). Sizes 1e3-1e4 by default, 1e5 and 1e6 with
``FEDLINK_BENCH_LARGE=1`` (the goal: 1e6 under 60 s)::

    pytest benchmarks/test_bench_psi.py --benchmark-only
    FEDLINK_BENCH_LARGE=1 pytest benchmarks/test_bench_psi.py --benchmark-only -k 1000000
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from timing import timed

from fedlink.pets import psi
from fedlink.pets.pool import workers

LARGE = os.environ.get("FEDLINK_BENCH_LARGE") == "1"
PEERS_PYTHON = Path(os.environ.get("FEDLINK_PEERS_PYTHON", "/tmp/peers-venv/bin/python"))
PEER_SCRIPT = Path(__file__).parent / "peers" / "openmined_psi.py"
GOAL_ITEMS, GOAL_SECONDS = 1_000_000, 60.0
MULTIPLICATIONS = 2_000


def _sizes() -> list[Any]:
    large = pytest.mark.skipif(not LARGE, reason="1e5 and 1e6 items take minutes: set FEDLINK_BENCH_LARGE=1")
    return [1_000, 10_000, pytest.param(100_000, marks=large), pytest.param(1_000_000, marks=large)]


def _sets(n: int) -> tuple[list[bytes], list[bytes]]:
    return [b"person-%d" % i for i in range(n)], [b"person-%d" % i for i in range(n // 2, n // 2 + n)]


# --- the candidate groups ------------------------------------------------------------------------------
def _repeat(operation: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        for _ in range(MULTIPLICATIONS):
            operation()

    return run


def _secp256k1(constant_time: bool) -> Callable[[], None]:
    points = psi._Points()
    points.hash_to_point(b"bench", b"x")
    scalar = psi.new_scalar()
    if constant_time:
        return _repeat(lambda: points.multiply(scalar))
    lib, ctx, point = points.lib, points.ctx, points.point
    return _repeat(lambda: lib.secp256k1_ec_pubkey_tweak_mul(ctx, point, scalar))


def _x25519_openssl() -> Callable[[], None]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    key = X25519PrivateKey.generate()
    peer = X25519PrivateKey.generate().public_key().public_bytes_raw()
    return _repeat(lambda: key.exchange(X25519PublicKey.from_public_bytes(peer)))


def _p256_openssl() -> Callable[[], None]:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    peer = ec.generate_private_key(ec.SECP256R1()).public_key()
    return _repeat(lambda: key.exchange(ec.ECDH(), peer))


def _x25519_libsodium() -> Callable[[], None]:
    bindings = pytest.importorskip("nacl.bindings", reason="PyNaCl is not installed (it has no ristretto255)")
    scalar, point = os.urandom(32), bindings.crypto_scalarmult_base(os.urandom(32))
    return _repeat(lambda: bindings.crypto_scalarmult(scalar, point))


def _ristretto255_libsodium() -> Callable[[], None]:
    try:
        import pysodium
    except (ImportError, ValueError, OSError) as exc:
        pytest.skip(f"pysodium (libsodium's ristretto255) is not usable here: {exc}")
    scalar = pysodium.crypto_core_ristretto255_scalar_random()
    point = pysodium.crypto_core_ristretto255_from_hash(hashlib.sha512(b"x").digest())
    return _repeat(lambda: pysodium.crypto_scalarmult_ristretto255(scalar, point))


GROUPS: dict[str, Callable[[], Callable[[], None]]] = {
    "secp256k1 libsecp256k1 constant-time (fedlink)": lambda: _secp256k1(True),
    "secp256k1 libsecp256k1 variable-time tweak_mul": lambda: _secp256k1(False),
    "X25519 OpenSSL (cryptography)": _x25519_openssl,
    "X25519 libsodium (PyNaCl)": _x25519_libsodium,
    "P-256 OpenSSL (cryptography)": _p256_openssl,
    "ristretto255 libsodium (pysodium)": _ristretto255_libsodium,
}


@pytest.mark.parametrize("group", list(GROUPS))
def test_group(benchmark: Any, group: str) -> None:
    run = GROUPS[group]()
    benchmark.group = "PSI group: scalar multiplications through the Python binding, one core"
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    if (stats := timed(benchmark)) is not None:
        rate = MULTIPLICATIONS / float(stats.median)
        benchmark.extra_info.update({"psi_group": group, "multiplications_per_s": round(rate)})


# --- two-party PSI ---------------------------------------------------------------------------------------
def _two_party(a: list[bytes], b: list[bytes]) -> int:
    dst = psi.domain("bench", "tier")
    ka, kb = psi.new_scalar(), psi.new_scalar()
    da = set(psi.digests(psi.reblind(psi.hash_and_blind(a, dst, ka), kb, final=True)))
    db = psi.digests(psi.reblind(psi.hash_and_blind(b, dst, kb), ka, final=True))
    return sum(d in da for d in db)


def _plaintext(a: list[bytes], b: list[bytes]) -> int:
    return len(set(a).intersection(b))


@pytest.mark.parametrize("path", ["psi", "plain"])
@pytest.mark.parametrize("items", _sizes())
def test_two_party_psi(benchmark: Any, items: int, path: str) -> None:
    a, b = _sets(items)
    benchmark.group = f"two-party PSI, {items:,} x {items:,} items"
    benchmark.extra_info.update({"psi": True, "path": path, "items": items, "workers": workers()})
    run = _two_party if path == "psi" else _plaintext
    rounds = 1 if (items >= 100_000 and path == "psi") else 3
    common = benchmark.pedantic(run, args=(a, b), rounds=rounds, iterations=1)
    assert common == items - items // 2, "half the items are in common"
    if path == "psi" and items >= GOAL_ITEMS and (stats := timed(benchmark)) is not None:
        seconds = float(stats.median)
        benchmark.extra_info["goal"] = f"under {GOAL_SECONDS:g} s: {'met' if seconds < GOAL_SECONDS else 'NOT met'}"


@pytest.mark.parametrize("items", _sizes())
def test_openmined_psi_peer(benchmark: Any, items: int) -> None:
    """openmined-psi in its own Python: the time it reports for the protocol (not its start-up)."""
    if not PEERS_PYTHON.exists():
        pytest.skip(f"no peers Python at {PEERS_PYTHON}: see benchmarks/peers/openmined_psi.py")
    probe = subprocess.run([str(PEERS_PYTHON), "-c", "import private_set_intersection"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"openmined-psi is not installed in {PEERS_PYTHON}")
    seconds: list[float] = []

    def peer() -> None:
        out = subprocess.run([str(PEERS_PYTHON), str(PEER_SCRIPT), str(items)], capture_output=True, check=True)
        report = json.loads(out.stdout)
        assert report["intersection"] == items // 2
        seconds.append(float(report["seconds"]))

    benchmark.group = f"two-party PSI, {items:,} x {items:,} items"
    benchmark.pedantic(peer, rounds=1, iterations=1)
    benchmark.extra_info.update({"psi": True, "path": "openmined-psi", "items": items, "peer_seconds": seconds[0]})
