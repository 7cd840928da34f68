"""The coordinator writes a large reply (a node's encodings) to a file as its frames arrive, instead of
holding it whole: :meth:`NodeSession.call` with ``sink``, and the linkage unit's reading of that file
(:func:`fedlink.protocol.blobs.unpack_file`, :func:`fedlink.linkage.streaming.spill_npz` at an offset)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedlink.coordinator.sessions import NodeSession
from fedlink.errors import Fault, PolicyRefused, Timeout
from fedlink.linkage import streaming
from fedlink.linkage.encode import EncodedRecords
from fedlink.linkage.payload import to_bytes
from fedlink.plan.catalogue import NodeCatalogue
from fedlink.protocol import rpc
from fedlink.protocol.blobs import pack, pack_file, unpack_file
from fedlink.protocol.fedlink_pb2 import Frame
from fedlink.protocol.transport import CHUNK, Message, frames

_END = object()


class Node:
    """A session whose inbound stream the test writes: the coordinator's calls are read from its
    outbound frames, and replies are fed in frame by frame."""

    def __init__(self) -> None:
        self.session = NodeSession("dwp", NodeCatalogue(node="dwp", tables=()))
        self.inbound: queue.Queue[object] = queue.Queue()
        self.outbound = self.session.outbound_frames()
        self.reader = threading.Thread(target=self.session.read_replies, args=(self._frames(),), daemon=True)
        self.reader.start()

    def _frames(self) -> Iterator[Frame]:
        while (item := self.inbound.get()) is not _END:
            assert isinstance(item, Frame)
            yield item

    def next_call(self) -> Frame:
        return next(self.outbound)

    def reply(self, frames_in: list[Frame]) -> None:
        for frame in frames_in:
            self.inbound.put(frame)


def _call(node: Node, *args: object, **kwargs: object) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["reply"] = node.session.call(*args, **kwargs)  # type: ignore[arg-type]
        except Exception as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_a_reply_of_many_frames_goes_to_the_file_and_a_plain_call_interleaves(tmp_path: Path) -> None:
    node = Node()
    body = np.random.default_rng(1).bytes(3 * CHUNK + 12345)
    sink = tmp_path / "dwp.wire"
    big, big_out = _call(node, rpc.LINK_ENCODE, b"", 10.0, sink=sink)
    big_call = node.next_call()
    small, small_out = _call(node, rpc.LINK_CARD, b"", 10.0)
    small_call = node.next_call()
    big_frames = list(frames(Message(big_call.call_id, rpc.RESULT, body)))
    assert len(big_frames) == 4
    # the plain reply's frame arrives between the big reply's frames
    node.reply(big_frames[:2] + list(frames(Message(small_call.call_id, rpc.RESULT, b"card"))) + big_frames[2:])
    big.join(10)
    small.join(10)
    reply = big_out["reply"]
    assert isinstance(reply, Message) and reply.kind == rpc.RESULT and reply.body == b""
    assert sink.read_bytes() == body
    small_reply = small_out["reply"]
    assert isinstance(small_reply, Message) and small_reply.body == b"card"
    assert not node.session.closed.is_set()


def test_an_error_answered_to_a_call_with_a_file_is_raised_as_the_nodes_error(tmp_path: Path) -> None:
    node = Node()
    thread, out = _call(node, rpc.LINK_ENCODE, b"", 10.0, sink=tmp_path / "dwp.wire")
    call = node.next_call()
    node.reply(list(frames(rpc.error_message(call.call_id, PolicyRefused("no link secret for 'p'")))))
    thread.join(10)
    error = out["error"]
    assert isinstance(error, PolicyRefused) and "no link secret" in error.message


def test_frames_arriving_after_a_call_gave_up_are_dropped_and_the_session_carries_on(tmp_path: Path) -> None:
    node = Node()
    sink = tmp_path / "dwp.wire"
    thread, out = _call(node, rpc.LINK_ENCODE, b"", 0.2, sink=sink)
    call = node.next_call()
    thread.join(10)
    assert isinstance(out["error"], Timeout)
    node.reply(list(frames(Message(call.call_id, rpc.RESULT, b"x" * (2 * CHUNK)))))
    later, later_out = _call(node, rpc.LINK_CARD, b"", 10.0)
    node.reply(list(frames(Message(node.next_call().call_id, rpc.RESULT, b"card"))))
    later.join(10)
    assert isinstance(later_out["reply"], Message) and later_out["reply"].body == b"card"
    assert sink.read_bytes() == b""  # nothing written after the call gave up
    assert not node.session.closed.is_set()


def _party() -> EncodedRecords:
    rng = np.random.default_rng(7)
    count = 1000
    return EncodedRecords(
        count=count,
        match_keys={"t0": np.frombuffer(rng.bytes(16 * count), "S16")},
        blooms=rng.integers(0, 2**63, (count, 4), dtype=np.uint64),
        popcounts=rng.integers(0, 256, count, dtype=np.int32),
        block_keys={"dob": rng.integers(1, 2**63, count, dtype=np.uint64)},
        fields={"first_name/filter": rng.integers(0, 2**63, (count, 2), dtype=np.uint64)},
        subgroups={},
    )


def test_encodings_written_to_disk_unpack_at_their_offset_unchanged(tmp_path: Path) -> None:
    party = _party()
    blob = tmp_path / "dfe.npz"
    blob.write_bytes(to_bytes(party))
    wire = tmp_path / "dfe.wire"
    pack_file(wire, b'{"count": 1000}', [blob])  # as pack() lays it out, from a file
    assert wire.read_bytes() == pack(b'{"count": 1000}', [blob.read_bytes()])
    header, places = unpack_file(wire)
    assert header == b'{"count": 1000}' and len(places) == 1
    streaming.spill_npz(wire, tmp_path / "dfe", *places[0])
    mapped = streaming.open_encodings(tmp_path / "dfe")
    assert np.array_equal(mapped.blooms, party.blooms) and np.array_equal(mapped.popcounts, party.popcounts)
    assert np.array_equal(mapped.match_keys["t0"], party.match_keys["t0"])
    assert np.array_equal(mapped.block_keys["dob"], party.block_keys["dob"])
    assert np.array_equal(mapped.fields["first_name/filter"], party.fields["first_name/filter"])


def test_encodings_that_are_compressed_or_pickled_or_cut_short_are_refused(tmp_path: Path) -> None:
    import io

    compressed = io.BytesIO()
    np.savez_compressed(compressed, blooms=np.zeros((3, 2), np.uint64))
    pickled = io.BytesIO()
    np.savez(pickled, blooms=np.array([{"a": 1}], dtype=object))
    for name, blob in (("compressed", compressed.getvalue()), ("pickled", pickled.getvalue())):
        wire = tmp_path / f"{name}.wire"
        wire.write_bytes(pack(b"{}", [blob]))
        with pytest.raises(Fault, match="cannot read"):
            streaming.spill_npz(wire, tmp_path / name, *unpack_file(wire)[1][0])
    cut = tmp_path / "cut.wire"
    cut.write_bytes(pack(b"{}", [to_bytes(_party())])[:-5000])
    with pytest.raises(Fault, match="malformed"):
        unpack_file(cut)


def test_a_spool_of_batches_writes_the_archive_of_the_batches_joined(tmp_path: Path) -> None:
    """Batches (one without any middle name, one with a small batch size) spooled to disk give the same
    archive contents as the batches joined in memory, and nothing of the spool is left behind."""
    from fedlink.linkage.concepts import normalise_concepts
    from fedlink.linkage.encode import concatenate
    from fedlink.linkage.fields import derive_spec_keys, encode_spec
    from fedlink.linkage.payload import Spool, from_bytes
    from fedlink.linkage.spec import load_spec

    spec = load_spec().resolve({"first_name", "middle_names", "last_name", "dob", "sex", "postcode"})
    keys = derive_spec_keys(b"k" * 32, "p", spec)
    runs = [
        {"first_name": ["Amelia", "Omar"], "middle_names": ["Rose", None], "last_name": ["Khan", "Ng"]},
        {"first_name": ["Ivy", "Sam", "Bo"], "middle_names": [None, None, None], "last_name": ["Lee", "Oduya", "Li"]},
        {"first_name": ["Zoe"], "middle_names": ["Ann"], "last_name": ["Hart"]},
    ]
    for run in runs:
        run.update(dob=["2001-02-03"] * len(run["first_name"]), sex=["F"] * len(run["first_name"]))
        run.update(postcode=["SW1A 1AA"] * len(run["first_name"]))
    parts = [encode_spec(normalise_concepts(run), spec, keys) for run in runs]
    widths = {name: {p.fields[name].shape[1:] for p in parts} for name in parts[0].fields}
    assert any((0,) in shapes and len(shapes) == 2 for shapes in widths.values())  # a batch lacks a field
    spool = Spool(tmp_path / "spool")
    for part in parts:
        spool.add(part)
    spool.write(tmp_path / "out.npz", rows=2)  # several slices per batch
    got, expected = from_bytes((tmp_path / "out.npz").read_bytes()), from_bytes(to_bytes(concatenate(parts)))
    assert not (tmp_path / "spool").exists()
    assert got.count == expected.count == 6
    for attribute in ("match_keys", "block_keys", "fields", "subgroups"):
        mine, theirs = getattr(got, attribute), getattr(expected, attribute)
        assert set(mine) == set(theirs), attribute
        for name in theirs:
            assert mine[name].dtype == theirs[name].dtype, name
            np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
    np.testing.assert_array_equal(got.blooms, expected.blooms)
    np.testing.assert_array_equal(got.popcounts, expected.popcounts)
