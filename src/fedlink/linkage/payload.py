"""Keyed encodings on the wire: an :class:`EncodedRecords` as compact binary (NumPy ``.npz``).

What crosses: per record, its match-key digests, its Bloom filter and the filter's popcount (a "clk"
spec) or its field-level filters, popcounts and keyed digests (a probabilistic spec), its keyed
blocking hashes and its keyed subgroup codes; in the order of the node's own person list. Never a
record id, a name or any other identifier: the node keeps the mapping from its records to that order.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np

from fedlink.errors import Fault
from fedlink.linkage.encode import EncodedRecords


def _named(encoded: EncodedRecords) -> dict[str, np.ndarray]:
    """Every array of ``encoded`` under its name on the wire."""
    arrays: dict[str, np.ndarray] = {"blooms": encoded.blooms, "popcounts": encoded.popcounts}
    for tier, digests in encoded.match_keys.items():
        arrays[f"key:{tier}"] = digests
    for name, hashes in encoded.block_keys.items():
        arrays[f"block:{name}"] = hashes
    for name, values in encoded.fields.items():
        arrays[f"field:{name}"] = values
    for name, codes in encoded.subgroups.items():
        arrays[f"subgroup:{name}"] = codes
    return arrays


def to_bytes(encoded: EncodedRecords) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **_named(encoded))  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
    return buffer.getvalue()


class Spool:
    """A node's encodings made batch by batch, kept on disk under ``folder`` (one ``.npy`` per array
    and batch), then written as one ``.npz`` equal to :func:`to_bytes` of the batches joined
    (:func:`fedlink.linkage.encode.concatenate`), a slice of rows at a time: memory holds one batch,
    never the whole population's encodings."""

    #: Rows copied at a time when the batches are joined into the archive (unless :meth:`write` is told).
    ROWS = 65536

    def __init__(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.folder = folder
        self.batches = 0
        self.names: list[str] = []

    def add(self, encoded: EncodedRecords) -> None:
        batch = self.folder / f"{self.batches:06d}"
        batch.mkdir()
        arrays = _named(encoded)
        if not self.batches:
            self.names = list(arrays)
        elif set(arrays) != set(self.names):
            raise Fault("a batch of encodings holds other arrays than the first; encode with one spec")
        for index, name in enumerate(self.names):
            np.save(batch / f"{index}.npy", np.ascontiguousarray(arrays[name]), allow_pickle=False)
        self.batches += 1

    def write(self, path: Path, rows: int = ROWS) -> None:
        """The ``.npz`` of every batch joined, at ``path``, ``rows`` rows copied at a time; the batches'
        files are removed."""
        if not self.batches:
            raise Fault("no encodings were made; the node has no people to link")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for index, name in enumerate(self.names):
                parts = [np.load(self.folder / f"{b:06d}" / f"{index}.npy", mmap_mode="r") for b in range(self.batches)]
                dtype = np.result_type(*parts)
                widths = {p.shape[1:] for p in parts}
                rest = max(widths)
                if len(widths) > 1 and (not name.startswith("field:") or widths - {(0,), rest}):
                    raise Fault(f"encodings '{name}' of different widths {sorted(widths)} cannot be joined")
                header = {
                    "descr": np.lib.format.dtype_to_descr(dtype),
                    "fortran_order": False,
                    "shape": (sum(len(p) for p in parts), *rest),
                }
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_2_0(member, header)
                    for part in parts:
                        for start in range(0, len(part), rows):
                            block = part[start : start + rows]
                            if block.shape[1:] != rest:  # a batch without the field: empty filters
                                block = np.zeros((len(block), *rest), dtype)
                            member.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
                del parts
        shutil.rmtree(self.folder, ignore_errors=True)


def from_bytes(blob: bytes) -> EncodedRecords:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (ValueError, OSError) as exc:
        raise Fault("a node sent encodings the linkage unit cannot read; check it runs this fedlink version") from exc
    blooms = arrays.pop("blooms")
    return EncodedRecords(
        count=int(blooms.shape[0]),
        match_keys={k.removeprefix("key:"): v for k, v in arrays.items() if k.startswith("key:")},
        blooms=blooms,
        popcounts=arrays.pop("popcounts"),
        block_keys={k.removeprefix("block:"): v for k, v in arrays.items() if k.startswith("block:")},
        fields={k.removeprefix("field:"): v for k, v in arrays.items() if k.startswith("field:")},
        subgroups={k.removeprefix("subgroup:"): v for k, v in arrays.items() if k.startswith("subgroup:")},
    )


def slots_to_bytes(slots: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, slots.astype(np.int64), allow_pickle=False)
    return buffer.getvalue()


def slots_from_bytes(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)
