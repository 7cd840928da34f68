"""Frames, PKI identities and config path expansion."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedlink import pki
from fedlink.config import expand, load_model, resolve_path
from fedlink.errors import BadInput, ConfigError
from fedlink.node.config import NodeConfig, load_node_config
from fedlink.protocol.transport import CHUNK, MAX_GRPC_MESSAGE, Message, Reassembler, frames

BASE = '[node]\nname = "dfe"\ncoordinator = "x"\n[tls]\ncert="a"\nkey="b"\nca="c"\n[privacy]\nledger="l"\n'
BASE += 'transparency_register="r"\n'


@given(st.binary(max_size=4096))
def test_frames_round_trip(body: bytes) -> None:
    message = Message("c1", "kind", body)
    reassembler = Reassembler()
    assert [m for f in frames(message) if (m := reassembler.feed(f)) is not None] == [message]


def test_large_messages_are_chunked_below_the_grpc_limit_and_interleave() -> None:
    big = bytes(range(256)) * (CHUNK // 256 * 5 + 3)  # a little over 5 MiB
    a, b = Message("a", "blob", big), Message("b", "blob", big[::-1])
    fa, fb = list(frames(a)), list(frames(b))
    assert len(fa) == 6 and all(len(f.SerializeToString()) < MAX_GRPC_MESSAGE for f in fa)
    reassembler, done = Reassembler(), []
    for x, y in zip(fa, fb, strict=True):
        for frame in (x, y):
            if (m := reassembler.feed(frame)) is not None:
                done.append(m)
    assert done == [a, b]


def test_certificates_carry_role_and_name(tmp_path: Path) -> None:
    pki.init_ca(tmp_path)
    issued = pki.issue(tmp_path, "node", "dfe")
    assert pki.identity_from_pem(issued.cert_path.read_bytes()) == issued.identity
    assert issued.identity.role == "node" and issued.identity.name == "dfe"
    assert issued.key_path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(BadInput, match="already exists"):
        pki.issue(tmp_path, "node", "dfe")
    with pytest.raises(BadInput, match="unknown role"):
        pki.issue(tmp_path, "admin", "x")
    with pytest.raises(BadInput, match="invalid party name"):
        pki.issue(tmp_path, "node", "Bad Name")
    with pytest.raises(BadInput, match="a CA already exists"):
        pki.init_ca(tmp_path)
    revoked = pki.revoke(tmp_path, issued.cert_path)
    assert revoked.serial in pki.revoked_serials(tmp_path / pki.REVOKED)


def test_issue_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fedlink pki init"):
        pki.issue(tmp_path, "node", "dfe")


def test_expand_uses_environment_defaults_and_config_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "nodes" / "x" / "node.toml"
    monkeypatch.delenv("FEDLINK_TEST_DIR", raising=False)
    assert resolve_path("${FEDLINK_TEST_DIR:-../data}/t.parquet", source) == (tmp_path / "nodes" / "data" / "t.parquet")
    monkeypatch.setenv("FEDLINK_TEST_DIR", str(tmp_path / "w"))
    assert resolve_path("${FEDLINK_TEST_DIR:-../data}/t.parquet", source) == tmp_path / "w" / "t.parquet"
    monkeypatch.delenv("FEDLINK_TEST_DIR")
    with pytest.raises(ConfigError, match="FEDLINK_TEST_DIR is not set"):
        expand("${FEDLINK_TEST_DIR}", source)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[node\nname=", "is not valid TOML"),
        (
            BASE,
            "tables: Field required",
        ),
        (
            BASE + '[[tables]]\nname="t"\nsource="t.csv"\ncolumns=[{name="age", kind="numeric"}]\n',
            "needs 'bounds = [low, high]'",
        ),
        (
            BASE.replace('coordinator = "x"', 'coordinator = "x"\nport = 3') + "tables=[]\n",
            "node.port: Extra inputs are not permitted",
        ),
    ],
)
def test_bad_node_configs_give_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_node_config(path)
    assert message in info.value.message and "\n" not in info.value.message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(tmp_path / "nope.toml", NodeConfig, "node")
