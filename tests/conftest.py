"""Shared fixtures: a PKI and synthetic departments made once per run, and federations built on them."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import fedlink
from fedlink import pki
from fedlink.coordinator.config import LinkageEngineSection, load_coordinator_config
from fedlink.coordinator.server import Coordinator
from fedlink.node.agent import NodeAgent
from fedlink.node.config import NodeConfig, load_node_config
from fedlink.node.data import NodeData
from fedlink_tools.demo import federation_dir, node_names, prepare_pki
from fedlink_tools.synth import synthesize

REPO_ROOT = federation_dir()
NODES = node_names(REPO_ROOT)
PEOPLE = 3000
SEED = 11
ANALYST = "demo-analyst"


def _test_mode_configs(target: Path) -> Path:
    """Copies of the demo federation's configs with the explicit, logged test mode switched on
    (coordinator and every node), so tests can compare noiseless answers with plaintext."""
    for folder in ("nodes", "coordinator"):
        shutil.copytree(REPO_ROOT / folder, target / folder)
    for path in target.glob("**/*.toml"):
        text = path.read_text()
        text = text.replace("allow_test_mode = false", "allow_test_mode = true").replace(
            "test_mode = false", "test_mode = true"
        )
        path.write_text(text)
    return target


ROOT = _test_mode_configs(Path(tempfile.mkdtemp(prefix="fedlink-test-configs-")))
atexit.register(shutil.rmtree, ROOT, True)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """PKI for the demo federation plus extra parties, and synthetic data, under FEDLINK_WORKDIR."""
    wd = tmp_path_factory.mktemp("federation")
    prepare_pki(wd, NODES)
    pki.issue(wd / "pki", "node", "intruder")
    pki.init_ca(wd / "other-ca", name="not the federation")
    pki.issue(wd / "other-ca", "analyst", ANALYST)
    synthesize(PEOPLE, SEED, wd / "data", progress=False)
    previous = os.environ.get("FEDLINK_WORKDIR")
    os.environ["FEDLINK_WORKDIR"] = str(wd)
    yield wd
    if previous is None:
        os.environ.pop("FEDLINK_WORKDIR", None)
    else:
        os.environ["FEDLINK_WORKDIR"] = previous


def node_config(name: str, address: str, state: Path | None = None) -> NodeConfig:
    config = load_node_config(ROOT / "nodes" / name / "node.toml")
    update: dict[str, object] = {"node": config.node.model_copy(update={"coordinator": address})}
    if state is not None:
        update["privacy"] = config.privacy.model_copy(
            update={
                "ledger": str(state / name / "ledger.sqlite"),
                "transparency_register": str(state / name / "register.jsonl"),
            }
        )
    return config.model_copy(update=update)


@dataclass
class InProcessFederation:
    """A real coordinator and real nodes, in threads, talking mTLS gRPC on loopback."""

    coordinator: Coordinator
    state: Path
    agents: dict[str, NodeAgent] = field(default_factory=dict)
    threads: dict[str, threading.Thread] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.coordinator.port}"

    def start_node(self, name: str, data: NodeData | None = None, config: NodeConfig | None = None) -> NodeAgent:
        config = config or node_config(name, self.address, self.state)
        agent = NodeAgent(config, data or NodeData(config))
        thread = threading.Thread(target=agent.serve, kwargs={"retry_s": 0.1}, daemon=True, name=f"agent-{name}")
        thread.start()
        assert agent.connected.wait(30), f"node {name} did not connect"
        self.agents[name], self.threads[name] = agent, thread
        return agent

    def stop_node(self, name: str) -> None:
        self.agents.pop(name).stop()
        self.threads.pop(name).join(10)

    def stop(self) -> None:
        for name in list(self.agents):
            self.stop_node(name)
        self.coordinator.stop(grace=0.2)


def start_federation(
    nodes: list[str],
    timeout_s: float = 30.0,
    state: Path | None = None,
    test_mode: bool = True,
    revoked: Path | None = None,
    projects: Path | None = None,
    linkage_service: bool = True,
    linkage: LinkageEngineSection | None = None,
) -> InProcessFederation:
    """A coordinator and ``nodes`` in threads, with ledgers and registers in ``state`` (default: fresh),
    the revocation list ``revoked`` (default: the session PKI's), the project registry ``projects``
    (default: the demo's), ``linkage_service`` and the ``linkage`` engine as in the coordinator's config."""
    state = state or Path(tempfile.mkdtemp(prefix="fedlink-state-"))
    config = load_coordinator_config(ROOT / "coordinator" / "coordinator.toml")
    section = config.coordinator.model_copy(
        update={
            "listen": "127.0.0.1:0",
            "query_timeout_s": timeout_s,
            "transparency_register": str(state / "coordinator" / "register.jsonl"),
            "test_mode": test_mode,
            **({"projects": str(projects)} if projects is not None else {}),
            "linkage_service": linkage_service,
        }
    )
    tls = config.tls if revoked is None else config.tls.model_copy(update={"revoked": str(revoked)})
    engine = {"linkage": linkage} if linkage is not None else {}
    federation = InProcessFederation(
        Coordinator(config.model_copy(update={"coordinator": section, "tls": tls, **engine})), state
    )
    federation.coordinator.start()
    try:
        for name in nodes:
            federation.start_node(name)
    except BaseException:
        federation.stop()
        raise
    return federation


def connect_analyst(address: str, workdir: Path, name: str = ANALYST, pki_dir: str = "pki") -> fedlink.Federation:
    d = workdir / pki_dir
    return fedlink.connect(
        address, cert=d / f"analyst-{name}.crt", key=d / f"analyst-{name}.key", ca=workdir / "pki" / "ca.crt"
    )


@pytest.fixture(scope="module")
def federation(workdir: Path) -> Iterator[InProcessFederation]:
    fed = start_federation(NODES)
    yield fed
    fed.stop()


IDENTIFIER_COLUMNS = ("record_id", "first_name", "last_name", "dob", "postcode")


def identifier_values(workdir: Path) -> set[str]:
    """Every identifier value in every department table (and the ground truth), as text."""
    import duckdb

    values: set[str] = set()
    for path in sorted((workdir / "data").glob("*/*.parquet")):
        columns = [r[0] for r in duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()]
        for column in IDENTIFIER_COLUMNS:
            if column in columns:
                rows = duckdb.sql(
                    f"SELECT DISTINCT CAST(\"{column}\" AS VARCHAR) FROM read_parquet('{path}')"
                ).fetchall()
                values.update(r[0] for r in rows if r[0])
    return values


_OPAQUE = re.compile(r"[A-Za-z0-9+/]{256,}={0,2}")
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_TOKEN = re.compile(r"[A-Za-z0-9]+")


def without_sealed_results(frames: list[bytes]) -> list[bytes]:
    """Recorded wire frames, less those of results sealed to the analyst (a message whose body starts with
    the sealed magic, and its further chunks): AES-GCM output, random bytes in which short names turn up
    by chance. ``tests/integration/test_linked.py`` opens such a result with the analyst's key, so it is
    known to hold only the result the analyst may see."""
    from fedlink.protocol.fedlink_pb2 import Frame

    sealed: set[tuple[str, str]] = set()
    kept = []
    for data in frames:
        try:
            frame = Frame.FromString(data)
        except Exception:  # not a frame: keep it as it is
            kept.append(data)
            continue
        key = (frame.call_id, frame.kind)
        if frame.data[:4] == b"FLS1" or key in sealed:
            sealed.add(key)
            continue
        kept.append(data)
    return kept


def find_leaks(messages: list[bytes], identifiers: set[str], min_length: int = 4) -> list[str]:
    """Identifier values (of at least ``min_length`` characters) found in any message.

    - Names (values made only of letters, apostrophes and hyphens) count when they appear as a whole
      word: "chan" inside "mechanism" is not a disclosure, "Chan" between quotes is.
    - Other values made only of letters and digits (a birth date written ``19641104``, a compact
      postcode ``e82fe``, a record number) count as a whole run of letters and digits: ``"19641104"``
      or ``dob=19641104`` counts, the same characters inside a hex query id, a float's fraction or a
      base64 key do not. Messages carry hundreds of random hex ids and short base64 fields, and the
      test federation thousands of such values, so substring matches there happen by chance in a few
      runs in a thousand (measured), which is chance, not disclosure.
    - Values with separators (``04/11/1964``, ``AB1 2CD``) count anywhere, even inside longer text.
    - Shorter values (``M``, ``F``, three-letter names) would match ordinary text by chance and are not
      checked.
    """
    wanted = {v for v in identifiers if len(v) >= min_length}
    names = {v for v in wanted if _WORD.fullmatch(v)}
    compact = {v for v in wanted - names if _TOKEN.fullmatch(v)}
    others = wanted - names - compact
    lengths = sorted({len(v) for v in others})
    leaks: set[str] = set()
    for message in messages:
        # Ciphertexts and public keys travel as long base64 runs: random letters that match short names
        # by chance. They are masked here; tests/integration/test_he.py proves separately that every
        # such payload a node sends is a ciphertext under the analyst's key.
        text = _OPAQUE.sub(" ", message.decode("utf-8", errors="replace"))
        leaks.update(names.intersection(_WORD.findall(text)))
        leaks.update(compact.intersection(_TOKEN.findall(text)))
        for length in lengths:
            for start in range(len(text) - length + 1):
                piece = text[start : start + length]
                if piece in others:
                    leaks.add(piece)
    return sorted(leaks)
