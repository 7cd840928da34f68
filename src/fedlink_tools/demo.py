"""The demo federation on one machine: PKI, synthetic departments, a coordinator and every node as
separate processes talking mTLS gRPC on loopback, example queries, then a clean stop.

A demo folder is never deleted or remade: it holds a CA, ledgers and registers, and remaking it would
start every budget at zero again. An empty or new folder is prepared; a folder this module prepared
with the same population (and coordinator) is used again as it is, its spent budgets included; any
other folder, or one whose federation is running, is refused in one line. Starting over is the
user's deliberate act: another ``--workdir``, or deleting the folder by hand.

:class:`LocalFederation` is also what end-to-end tests use to run a whole federation.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import tomli_w

from fedlink import pki
from fedlink.analyst.profile import DEFAULT_PROFILE, PROFILE_ENV
from fedlink.errors import BadInput, Fault

MARKER = ".fedlink-demo"
#: What a demo folder was prepared for (population, seed, coordinator), written once it is complete.
RECORD = "prepared.json"
#: Held (flock) by the process that prepares a demo folder or runs its federation.
LOCK = "demo.lock"
#: The coordinator of a folder prepared by :func:`run_demo` (its parties run here, on any free port).
LOCAL = "local"
ANALYST = "demo-analyst"
#: (project, epsilon per node, SQL) of the queries the demo runs.
EXAMPLE_QUERIES: tuple[tuple[str, float, str], ...] = (
    (
        "homelessness-outcomes",
        1.0,
        "SELECT region, COUNT(*) AS episodes FROM support_episodes GROUP BY region",
    ),
    (
        "homelessness-outcomes",
        0.5,
        "SELECT outcome, COUNT(*) AS episodes FROM support_episodes WHERE start_year BETWEEN 2015 AND 2025 "
        "GROUP BY outcome",
    ),
    (
        "deprivation-mental-health",
        1.0,
        "SELECT fsm, COUNT(*) AS pupils, AVG(attainment8) AS mean_attainment8 FROM dfe.pupils GROUP BY fsm",
    ),
    ("justice-attainment", 0.5, "SELECT HISTOGRAM(sentence_months) FROM hmps.sentences"),
)


#: (project, epsilon, SQL) the demo's --serve banner offers for a second shell: a question whose every
#: group holds sixty episodes or more at the default 20,000 people, so none is suppressed.
SECOND_SHELL_QUERY = (
    "homelessness-outcomes",
    1.0,
    "SELECT outcome, COUNT(*) AS episodes FROM support_episodes GROUP BY outcome",
)


def second_shell(profile: Path, cwd: Path, prefix: Path, base_prefix: Path) -> list[str]:
    """The commands that query the running demo from a second shell opened in ``cwd``: activate the
    virtual environment at ``prefix`` (when fedlink runs in one, not at ``base_prefix``), name the
    profile unless ``fedlink`` finds it there by itself, then a query."""
    commands = [f"cd {shlex.quote(str(cwd))}"]
    if prefix != base_prefix:
        activate = prefix / "bin" / "activate"
        shown = activate.relative_to(cwd) if activate.is_relative_to(cwd) else activate
        commands.append(f"source {shlex.quote(str(shown))}")
    if profile.resolve() != (cwd / DEFAULT_PROFILE).resolve():
        commands.append(f"export {PROFILE_ENV}={shlex.quote(str(profile))}")
    project, epsilon, sql = SECOND_SHELL_QUERY
    commands.append(f'fedlink query "{sql}" --project {project} --epsilon {epsilon:g}')
    return commands


def federation_dir() -> Path:
    """The demo federation's configs: packaged in a wheel, or the repository's own folders."""
    packaged = Path(__file__).parent / "_federation"
    if (packaged / "coordinator").is_dir():
        return packaged
    repo = Path(__file__).resolve().parents[2] / "examples" / "federation"
    if (repo / "coordinator" / "coordinator.toml").exists():
        return repo
    raise Fault("the demo federation configs are missing from this installation; reinstall fedlink")


def node_names(root: Path) -> list[str]:
    return sorted(p.parent.name for p in (root / "nodes").glob("*/node.toml"))


def prepare_pki(
    workdir: Path, nodes: list[str], coordinator_hosts: tuple[str, ...] = (), node_hosts: dict[str, str] | None = None
) -> Path:
    """A fresh CA with certificates for the coordinator (also valid for ``coordinator_hosts``), every
    node (each also for its host in ``node_hosts``) and the demo analyst."""
    pki_dir = workdir / "pki"
    pki.init_ca(pki_dir, name="fedlink demo federation CA")
    pki.issue(pki_dir, "coordinator", "coordinator", hosts=tuple(h for h in coordinator_hosts if h != "localhost"))
    for name in nodes:
        host = (node_hosts or {}).get(name)
        pki.issue(pki_dir, "node", name, hosts=(host,) if host else ())
    pki.issue(pki_dir, "analyst", ANALYST)
    return pki_dir


def prepare_demo(
    workdir: Path,
    people: int = 20_000,
    seed: int = 7,
    coordinator_host: str = "localhost",
    coordinator_port: int = 7443,
    progress: Callable[[str], None] = lambda _: None,
    parties: Path | None = None,
) -> Path:
    """PKI, synthetic departments and an analyst profile in ``workdir``, for a federation whose parties
    run elsewhere (containers, namespaces). Idempotent: a folder this function already prepared with
    the same population and coordinator is kept as it is (its parties' spines stay valid); any other
    folder that is not empty is refused, never replaced. Returns the profile's path.

    With ``parties``, each party also gets a folder ``parties/<party>`` (a volume of its own, say) laid
    out like ``workdir`` but holding only what that party may hold: the CA certificate, its own
    certificate and key, and for a node its own tables (never the ground truth or another's key)."""
    workdir = workdir.resolve()
    wanted = {"people": people, "seed": seed, "coordinator": f"{coordinator_host}:{coordinator_port}"}
    with _open_workdir(workdir, wanted) as folder:
        if folder.reused:
            progress(f"{workdir} already holds this federation's PKI and data; keeping them")
        else:
            nodes = node_names(federation_dir())
            progress(
                f"PKI: a federation CA and certificates for the coordinator ({coordinator_host}) and {len(nodes)} nodes"
            )
            prepare_pki(workdir, nodes, coordinator_hosts=(coordinator_host,))
            _synthesize(workdir, people, seed, progress)
            write_profile(workdir, f"{coordinator_host}:{coordinator_port}")
            folder.complete()
    if parties is not None:
        export_parties(workdir, parties)
    return workdir / "analyst.toml"


def export_parties(workdir: Path, parties: Path) -> list[Path]:
    """Copy each party's share of a prepared ``workdir`` into ``parties/<party>`` (replacing what an
    earlier export put there): see :func:`prepare_demo`."""
    shares: dict[str, list[str]] = {
        "coordinator": ["pki/coordinator-coordinator.crt", "pki/coordinator-coordinator.key", "pki/revoked.txt"],
        "analyst": [f"pki/analyst-{ANALYST}.crt", f"pki/analyst-{ANALYST}.key", "analyst.toml"],
    }
    for node in node_names(federation_dir()):
        shares[node] = [f"pki/node-{node}.crt", f"pki/node-{node}.key", f"data/{node}"]
    out = []
    for party, paths in shares.items():
        folder = parties / party
        folder.mkdir(parents=True, exist_ok=True)
        for stale in ("pki", "data", "analyst.toml"):
            target = folder / stale
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        for relative in ("pki/ca.crt", *paths):
            source = workdir / relative
            if not source.exists():
                continue  # e.g. no revocation list yet
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)
        out.append(folder)
    return out


def write_profile(workdir: Path, address: str) -> Path:
    path = workdir / "analyst.toml"
    profile = {
        "coordinator": address,
        "cert": f"pki/analyst-{ANALYST}.crt",
        "key": f"pki/analyst-{ANALYST}.key",
        "ca": "pki/ca.crt",
    }
    path.write_text(tomli_w.dumps(profile), encoding="utf-8")
    return path


def _wait_for(path: Path, process: subprocess.Popen[bytes], log: Path, what: str, deadline: float) -> dict[str, object]:
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_text(encoding="utf-8")))
        if process.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise Fault(f"{what} exited during start-up ({tail[0] if tail else 'no output'}); see {log}")
        time.sleep(0.05)
    raise Fault(f"{what} did not become ready in time; see {log}")


@dataclass
class LocalFederation:
    """A coordinator and nodes as subprocesses, configured by ``root`` (coordinator/ and nodes/)."""

    workdir: Path
    root: Path
    nodes: list[str]
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    address: str = ""
    #: Where the coordinator listens (port 0: any free port).
    listen: str = "127.0.0.1:0"
    #: Per party, a command prefix to start it with (e.g. ``ip netns exec <ns>``) and extra environment.
    launcher: Callable[[str], tuple[list[str], dict[str, str]]] = field(default=lambda _: ([], {}))
    #: The demo folder's lock, held while this federation runs (released by :meth:`stop`).
    lock: BinaryIO | None = None

    @property
    def state(self) -> Path:
        """Where ledgers and registers live (they survive restarts of the parties)."""
        return self.workdir / "state"

    def registers(self) -> list[tuple[str, Path]]:
        """(party, path) of the coordinator's and every node's transparency register."""
        return [(p.parent.name, p) for p in sorted(self.state.glob("*/register.jsonl"))]

    def _spawn(
        self, name: str, args: list[str], extra_env: dict[str, str]
    ) -> tuple[subprocess.Popen[bytes], Path, Path]:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / "run" / f"{name}.ready"
        ready.unlink(missing_ok=True)
        log = logs / f"{name}.log"
        prefix, party_env = self.launcher(name)
        env = {
            **os.environ,
            "FEDLINK_WORKDIR": str(self.workdir),
            "FEDLINK_STATE": str(self.state),
            **self.env,
            **extra_env,
            **party_env,
        }
        with log.open("ab") as handle:  # a restarted party appends to its log
            process = subprocess.Popen(
                [*prefix, sys.executable, "-m", "fedlink", *args, "--ready-file", str(ready)],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.processes[name] = process
        return process, ready, log

    def start_coordinator(self, timeout_s: float = 60.0) -> str:
        config = self.root / "coordinator" / "coordinator.toml"
        process, ready, log = self._spawn(
            "coordinator",
            ["coordinator", "serve", "--config", str(config)],
            {"FEDLINK_COORDINATOR_LISTEN": self.listen},
        )
        info = _wait_for(ready, process, log, "the coordinator", time.monotonic() + timeout_s)
        self.address = str(info["address"])
        return self.address

    def _spawn_node(self, name: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
        config = self.root / "nodes" / name / "node.toml"
        return self._spawn(name, ["node", "serve", "--config", str(config)], {"FEDLINK_COORDINATOR": self.address})

    def start_node(self, name: str, timeout_s: float = 60.0) -> None:
        process, ready, log = self._spawn_node(name)
        _wait_for(ready, process, log, f"node '{name}'", time.monotonic() + timeout_s)

    def start(self, on_ready: Callable[[str], None] | None = None, timeout_s: float = 120.0) -> None:
        self.start_coordinator()
        if on_ready:
            on_ready("coordinator")
        # Nodes dial out to the coordinator and need nothing of each other: started together, their
        # start-ups (mostly imports) overlap instead of adding up.
        deadline = time.monotonic() + timeout_s
        spawned = [(name, *self._spawn_node(name)) for name in self.nodes]
        for name, process, ready, log in spawned:
            _wait_for(ready, process, log, f"node '{name}'", deadline)
            if on_ready:
                on_ready(name)

    def stop_party(self, name: str, timeout_s: float = 10.0) -> None:
        self._stop_parties([name], timeout_s)

    def _stop_parties(self, names: list[str], timeout_s: float) -> None:
        """Ask every party in ``names`` to stop at once, then wait for each (killing one that hangs)."""
        stopping = [p for p in (self.processes.pop(n, None) for n in names) if p is not None and p.poll() is None]
        for process in stopping:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in stopping:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop(self) -> None:
        self._stop_parties([n for n in self.processes if n != "coordinator"], 10.0)
        self.stop_party("coordinator")
        if self.lock is not None:
            self.lock.close()

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass
class _DemoFolder:
    """A demo folder held (locked) by this process: ``reused`` when it holds the wanted demo already."""

    path: Path
    wanted: dict[str, object]
    lock: BinaryIO
    reused: bool

    def complete(self) -> None:
        """Record that the folder is fully prepared (so that it is used again, never prepared again)."""
        (self.path / RECORD).write_text(json.dumps(self.wanted), encoding="utf-8")

    def __enter__(self) -> _DemoFolder:
        return self

    def __exit__(self, *_: object) -> None:
        self.lock.close()


def _open_workdir(workdir: Path, wanted: dict[str, object]) -> _DemoFolder:
    """Hold ``workdir`` for a demo with these settings: a new or empty folder is claimed (to be
    prepared), a folder prepared with the same settings is reused; anything else is refused."""
    if workdir.exists() and not workdir.is_dir():
        raise BadInput(f"{workdir} is a file; choose a folder for `workdir`")
    if workdir.exists() and any(workdir.iterdir()) and not (workdir / MARKER).exists():
        raise BadInput(f"{workdir} exists and was not made by `fedlink demo`; choose another `workdir`")
    workdir.mkdir(parents=True, exist_ok=True)
    handle = (workdir / LOCK).open("a+b")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().decode(errors="replace").strip() or "another process"
        handle.close()
        raise BadInput(
            f"the demo federation in {workdir} is in use (process {holder}); query it with "
            f"`profile={workdir / 'analyst.toml'}`, stop it first, or choose another `workdir`"
        ) from None
    handle.truncate(0)
    handle.write(str(os.getpid()).encode())
    handle.flush()
    try:
        reused = _holds(workdir, wanted)
        if not reused:
            (workdir / MARKER).write_text("made by fedlink demo; holds a federation's CA, budgets and registers\n")
    except BaseException:
        handle.close()
        raise
    return _DemoFolder(workdir, wanted, handle, reused)


def _holds(workdir: Path, wanted: dict[str, object]) -> bool:
    """Whether the demo folder holds the wanted demo already (False: it is empty); refuses otherwise."""
    if not {p.name for p in workdir.iterdir()} - {MARKER, LOCK}:
        return False
    try:
        done = json.loads((workdir / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        done = None
    if done == wanted:
        return True
    keep = f"{workdir} holds another demo federation's CA, budgets and registers, which fedlink never deletes"
    if not isinstance(done, dict):
        raise BadInput(
            f"{keep} (made by an earlier fedlink, or its preparation was interrupted); choose another `workdir`, "
            f"or delete {workdir} yourself to start over"
        )
    made = ["fedlink", "demo", "--people", str(done.get("people")), "--seed", str(done.get("seed"))]
    if done.get("coordinator") != LOCAL:
        host, _, port = str(done.get("coordinator")).rpartition(":")
        made[2:2] = ["--prepare-only"]
        made += ["--coordinator-host", host, "--coordinator-port", port]
    raise BadInput(
        f"{keep} (made by `{' '.join(made)}`); run that to use it, choose another `workdir`, or delete {workdir} "
        "yourself to start over"
    )


def _synthesize(workdir: Path, people: int, seed: int, progress: Callable[[str], None]) -> None:
    from fedlink_tools.synth import synthesize

    progress(f"synthetic population of {people:,} people (seed {seed}) and its departments")
    synthesize(people, seed, workdir / "data", progress=False)


@dataclass(frozen=True)
class DemoSetup:
    workdir: Path
    federation: LocalFederation
    profile: Path


def run_demo(
    workdir: Path,
    people: int = 20_000,
    seed: int = 7,
    progress: Callable[[str], None] = lambda _: None,
) -> DemoSetup:
    """Prepare PKI and data (or use those ``workdir`` holds from an earlier run with the same
    population, its ledgers and registers included) and start the federation; the caller queries it
    and stops it. Refuses a folder holding anything else, or whose federation is running."""
    workdir = workdir.resolve()
    root = federation_dir()
    nodes = node_names(root)
    folder = _open_workdir(workdir, {"people": people, "seed": seed, "coordinator": LOCAL})
    try:
        if folder.reused:
            progress(f"using the demo federation in {workdir} again: its CA, data, ledgers and registers are kept")
        else:
            progress(f"PKI: a federation CA and certificates for the coordinator, {len(nodes)} nodes and an analyst")
            prepare_pki(workdir, nodes)
            _synthesize(workdir, people, seed, progress)
            folder.complete()
        federation = LocalFederation(workdir=workdir, root=root, nodes=nodes, lock=folder.lock)
    except BaseException:
        folder.lock.close()
        raise
    try:
        federation.start(on_ready=lambda name: progress(f"started {name}"))
    except BaseException:
        federation.stop()
        raise
    return DemoSetup(workdir, federation, write_profile(workdir, federation.address))
