"""State is never destroyed by a command: a node's ledger and register are bound to its federation
and to each other, so a node whose state does not match refuses to start with a one-line error
(instead of serving with its budgets at zero, or retrying forever), and the demo never deletes or
remakes a folder that holds a CA, ledgers or registers."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fedlink import pki
from fedlink.coordinator.config import load_coordinator_config
from fedlink.coordinator.server import Coordinator
from fedlink.errors import BadInput, ConfigError, FedlinkError
from fedlink.node.agent import NodeAgent
from fedlink.node.config import NodeConfig
from fedlink.node.data import NodeData
from fedlink.node.runtime import NodeRuntime
from fedlink.transparency.register import verify_register
from fedlink_tools.demo import LOCK, prepare_demo, run_demo

from ..conftest import ROOT, connect_analyst, node_config, start_federation

pytestmark = pytest.mark.usefixtures("workdir")
CHARITIES = ["charity_north", "charity_south"]
PROJECT = "homelessness-outcomes"
SQL = "SELECT region, COUNT(*) AS n FROM support_episodes GROUP BY region"
#: A bound on waits for events that happen within a second or two; generous for a loaded machine.
WAIT_S = 60


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another federation's CA, with a node and a coordinator certificate of its own."""
    folder = tmp_path_factory.mktemp("other-federation") / "pki"
    pki.init_ca(folder, name="another federation")
    pki.issue(folder, "node", "charity_south")
    pki.issue(folder, "coordinator", "coordinator")
    return folder


def under(config: NodeConfig, folder: Path, cert: str = "node-charity_south", ca: Path | None = None) -> NodeConfig:
    """``config`` with the certificate ``cert`` of ``folder`` and the CA ``ca`` (default: the folder's)."""
    tls = config.tls.model_copy(
        update={
            "cert": str(folder / f"{cert}.crt"),
            "key": str(folder / f"{cert}.key"),
            "ca": str(ca or folder / pki.CA_CERT),
        }
    )
    return config.model_copy(update={"tls": tls})


@pytest.fixture(scope="module")
def spent_state(tmp_path_factory: pytest.TempPathFactory, workdir: Path) -> Path:
    """The state of a federation whose charity nodes each spent on one query (left untouched: copy it)."""
    state = tmp_path_factory.mktemp("spent") / "state"
    fed = start_federation(CHARITIES, state=state)
    try:
        connect_analyst(fed.address, workdir).query(SQL, project=PROJECT, epsilon=0.5)
    finally:
        fed.stop()
    return state


def copy_of(state: Path, tmp_path: Path) -> Path:
    target = tmp_path / "state"
    shutil.copytree(state, target)
    return target


def start(name: str, state: Path) -> NodeRuntime:
    return NodeRuntime(node_config(name, "127.0.0.1:1", state))


def test_a_node_refuses_state_made_in_another_federation(other_ca: Path, tmp_path: Path) -> None:
    start("charity_south", tmp_path).close()  # binds the state to this federation's CA
    binding = json.loads((tmp_path / "charity_south" / "ledger.sqlite.federation.json").read_text())
    assert binding["node"] == "charity_south" and len(binding["ca_sha256"]) == 64
    with pytest.raises(ConfigError, match=r"of node 'charity_south' .* were made in the federation whose CA has"):
        NodeRuntime(under(node_config("charity_south", "127.0.0.1:1", tmp_path), other_ca))
    with pytest.raises(ConfigError, match="belongs to node 'charity_south', not 'charity_north'"):
        NodeRuntime(
            node_config("charity_north", "127.0.0.1:1", tmp_path).model_copy(
                update={"privacy": node_config("charity_south", "127.0.0.1:1", tmp_path).privacy}
            )
        )
    start("charity_south", tmp_path).close()  # its own federation's CA: it starts


def test_a_node_refuses_a_certificate_its_ca_did_not_issue(other_ca: Path, workdir: Path, tmp_path: Path) -> None:
    config = under(node_config("charity_south", "127.0.0.1:1", tmp_path), other_ca, ca=workdir / "pki" / pki.CA_CERT)
    with pytest.raises(ConfigError, match=r"node-charity_south\.crt was not issued by the federation CA"):
        NodeRuntime(config)
    assert not (tmp_path / "charity_south").exists()  # refused before anything was made


def test_a_missing_ledger_whose_register_records_spending_is_refused(spent_state: Path, tmp_path: Path) -> None:
    state = copy_of(spent_state, tmp_path)
    ledger = state / "charity_south" / "ledger.sqlite"
    kept = tmp_path / "ledger.backup"
    shutil.move(ledger, kept)
    env = {**os.environ, "FEDLINK_STATE": str(state), "FEDLINK_COORDINATOR": "127.0.0.1:1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fedlink", "node", "serve", "--config", str(ROOT / "nodes/charity_south/node.toml")],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env=env,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: the budget ledger of node 'charity_south' ({ledger}) is missing, but its ")
    assert "restore the ledger from a backup" in lines[0]
    assert not ledger.exists()  # no fresh ledger was made
    shutil.move(kept, ledger)  # restored, the node starts with its spending intact
    runtime = start("charity_south", state)
    try:
        assert [line.queries for line in runtime.ledger.lines()] == [1]
    finally:
        runtime.close()


def test_a_missing_register_whose_ledger_records_spending_is_refused(spent_state: Path, tmp_path: Path) -> None:
    state = copy_of(spent_state, tmp_path)
    register = state / "charity_north" / "register.jsonl"
    register.unlink()
    register.with_name("register.jsonl.head").unlink()
    with pytest.raises(ConfigError, match=r"register of node 'charity_north' .* is missing, but its budget ledger "):
        start("charity_north", state)
    assert not register.exists()


def test_a_node_whose_ledger_and_register_are_both_gone_is_refused(spent_state: Path, tmp_path: Path) -> None:
    state = copy_of(spent_state, tmp_path)
    for path in (state / "charity_north").iterdir():
        if path.name.startswith(("ledger.sqlite", "register.jsonl")) and not path.name.endswith(".federation.json"):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    with pytest.raises(ConfigError, match=r"are gone .*restore them from a backup"):
        start("charity_north", state)


def test_the_binding_is_on_the_register(spent_state: Path) -> None:
    entries = [
        e for e in fedlink_register(spent_state / "charity_north" / "register.jsonl") if e["kind"] == "federation"
    ]
    assert len(entries) == 1 and entries[0]["fields"]["state_found"] is False
    assert verify_register(spent_state / "charity_north" / "register.jsonl").ok


def fedlink_register(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_node_stops_on_a_coordinator_of_another_federation(other_ca: Path, tmp_path: Path) -> None:
    config = load_coordinator_config(ROOT / "coordinator" / "coordinator.toml")
    section = config.coordinator.model_copy(
        update={"listen": "127.0.0.1:0", "transparency_register": str(tmp_path / "coordinator" / "register.jsonl")}
    )
    tls = config.tls.model_copy(
        update={
            "cert": str(other_ca / "coordinator-coordinator.crt"),
            "key": str(other_ca / "coordinator-coordinator.key"),
            "ca": str(other_ca / pki.CA_CERT),
        }
    )
    coordinator = Coordinator(config.model_copy(update={"coordinator": section, "tls": tls}))
    port = coordinator.start()
    node_cfg = node_config("charity_north", f"127.0.0.1:{port}", tmp_path)
    agent = NodeAgent(node_cfg, NodeData(node_cfg))
    errors: list[FedlinkError] = []

    def serve() -> None:
        try:
            agent.serve(retry_s=0.05)
        except FedlinkError as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    try:
        thread.start()
        thread.join(WAIT_S)
        assert not thread.is_alive(), "the node kept retrying a coordinator it cannot trust"
        (error,) = errors
        assert isinstance(error, ConfigError)
        assert error.message.startswith(f"node 'charity_north' cannot trust the coordinator at 127.0.0.1:{port}: ")
        assert "its certificate failed verification against this node's federation CA" in error.message
    finally:
        agent.stop()
        coordinator.stop(grace=0.1)


# --- the demo's folder ---------------------------------------------------------------------------------
def test_the_demo_never_remakes_a_folder_holding_a_federation(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    profile = prepare_demo(folder, people=300, seed=3)
    ca = (folder / "pki" / pki.CA_CERT).read_bytes()
    state = folder / "state" / "dfe" / "register.jsonl"  # as a federation run from the folder leaves it
    state.parent.mkdir(parents=True)
    state.write_text("kept\n")

    assert prepare_demo(folder, people=300, seed=3) == profile  # the same demo: kept as it is
    with pytest.raises(BadInput) as refused:
        prepare_demo(folder, people=400, seed=3)
    assert refused.value.message == (
        f"{folder} holds another demo federation's CA, budgets and registers, which fedlink never deletes (made by "
        "`fedlink demo --prepare-only --people 300 --seed 3 --coordinator-host localhost --coordinator-port 7443`); "
        f"run that to use it, choose another `workdir`, or delete {folder} yourself to start over"
    )
    with pytest.raises(BadInput, match="holds another demo federation's CA"):
        run_demo(folder, people=300, seed=3)  # prepared for parties elsewhere: not run here
    assert (folder / "pki" / pki.CA_CERT).read_bytes() == ca and state.read_text() == "kept\n"

    with (folder / LOCK).open("a+b") as held:  # a federation running from the folder holds this lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate(0)
        held.write(b"4242")
        held.flush()
        with pytest.raises(BadInput, match=r"the demo federation in .* is in use \(process 4242\); query it with "):
            prepare_demo(folder, people=300, seed=3)

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a demo")
    with pytest.raises(BadInput, match="was not made by `fedlink demo`"):
        prepare_demo(tmp_path / "mine", people=300, seed=3)
