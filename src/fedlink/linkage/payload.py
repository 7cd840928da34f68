"""Keyed encodings on the wire: an :class:`EncodedRecords` as compact binary (NumPy ``.npz``).

What crosses: per record, its match-key digests, its Bloom filter and the filter's popcount (a "clk"
spec) or its field-level filters, popcounts and keyed digests (a probabilistic spec), its keyed
blocking hashes and its keyed subgroup codes; in the order of the node's own person list. Never a
record id, a name or any other identifier: the node keeps the mapping from its records to that order.
"""

from __future__ import annotations

import io

import numpy as np

from fedlink.errors import Fault
from fedlink.linkage.encode import EncodedRecords


def to_bytes(encoded: EncodedRecords) -> bytes:
    arrays: dict[str, np.ndarray] = {"blooms": encoded.blooms, "popcounts": encoded.popcounts}
    for tier, digests in encoded.match_keys.items():
        arrays[f"key:{tier}"] = digests
    for name, hashes in encoded.block_keys.items():
        arrays[f"block:{name}"] = hashes
    for name, values in encoded.fields.items():
        arrays[f"field:{name}"] = values
    for name, codes in encoded.subgroups.items():
        arrays[f"subgroup:{name}"] = codes
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
    return buffer.getvalue()


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
