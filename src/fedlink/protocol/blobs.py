"""A binary body for messages that carry many opaque blobs (ciphertexts): a JSON header, then the blobs.

Layout: ``FLB1``, the header's length (4 bytes, big-endian) and the header, the blob count (4 bytes),
then each blob as its length (8 bytes) and its bytes. No base64: a linked query moves tens of MB.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Sequence
from pathlib import Path

from fedlink.errors import Fault

_MAGIC = b"FLB1"


def pack(header: bytes, blobs: Sequence[bytes]) -> bytes:
    parts = [_MAGIC, struct.pack(">I", len(header)), header, struct.pack(">I", len(blobs))]
    for blob in blobs:
        parts.append(struct.pack(">Q", len(blob)))
        parts.append(blob)
    return b"".join(parts)


def unpack(body: bytes) -> tuple[bytes, list[bytes]]:
    view = memoryview(body)
    try:
        if bytes(view[:4]) != _MAGIC:
            raise ValueError("bad magic")
        (size,) = struct.unpack(">I", view[4:8])
        header = bytes(view[8 : 8 + size])
        at = 8 + size
        (count,) = struct.unpack(">I", view[at : at + 4])
        at += 4
        blobs = []
        for _ in range(count):
            (length,) = struct.unpack(">Q", view[at : at + 8])
            at += 8
            if at + length > len(body):
                raise ValueError("truncated")
            blobs.append(bytes(view[at : at + length]))
            at += length
    except (ValueError, struct.error) as exc:
        raise Fault("a message with ciphertexts arrived malformed; check both parties run the same fedlink") from exc
    return header, blobs


def pack_file(path: Path, header: bytes, blob_paths: Sequence[Path]) -> None:
    """:func:`pack`'s layout written to ``path`` from blobs that are files, copied a few MiB at a time."""
    with path.open("wb") as out:
        out.write(_MAGIC + struct.pack(">I", len(header)) + header + struct.pack(">I", len(blob_paths)))
        for blob in blob_paths:
            out.write(struct.pack(">Q", blob.stat().st_size))
            with blob.open("rb") as source:
                shutil.copyfileobj(source, out, 1 << 22)


def unpack_file(path: Path) -> tuple[bytes, list[tuple[int, int]]]:
    """The header of a body written to ``path`` (a reply streamed to disk) and where each blob lies in
    the file, as (offset, length): the blobs stay on disk."""
    try:
        with path.open("rb") as file:
            if file.read(4) != _MAGIC:
                raise ValueError("bad magic")
            (size,) = struct.unpack(">I", file.read(4))
            header = file.read(size)
            (count,) = struct.unpack(">I", file.read(4))
            total = path.stat().st_size
            places = []
            for _ in range(count):
                (length,) = struct.unpack(">Q", file.read(8))
                at = file.tell()
                if len(header) != size or at + length > total:
                    raise ValueError("truncated")
                places.append((at, length))
                file.seek(at + length)
    except (ValueError, struct.error) as exc:
        raise Fault("a message with ciphertexts arrived malformed; check both parties run the same fedlink") from exc
    return header, places
