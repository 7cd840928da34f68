"""Each future of `fedlink futures` as the configuration its federation is started with, read back by
the coordinator's own loaders."""

from __future__ import annotations

from pathlib import Path

from fedlink.coordinator.config import load_coordinator_config
from fedlink.coordinator.projects import load_projects
from fedlink_tools.futures import FUTURES, PERSONAS, write_profile
from fedlink_tools.scenarios import SCENARIOS


def _profile(key: str, tmp_path: Path) -> tuple[list[str], Path]:
    future = next(f for f in FUTURES if f.key == key)
    return write_profile(future, tmp_path / key, tmp_path / "revoked.txt"), tmp_path / key


def test_public_good_federates_every_node_and_registers_each_persona_on_its_project(tmp_path: Path) -> None:
    nodes, root = _profile("public-good", tmp_path)
    config = load_coordinator_config(root / "coordinator" / "coordinator.toml")
    assert sorted(nodes) == sorted(n.name for n in config.nodes) == sorted(p.name for p in (root / "nodes").iterdir())
    assert len(nodes) == 7 and config.coordinator.linkage_service
    assert config.revoked_path() == tmp_path / "revoked.txt"
    projects = load_projects(config.projects_path())
    for persona in PERSONAS:
        assert projects.get(SCENARIOS[persona.scenario].project).analysts == (persona.analyst,)


def test_in_silos_leaves_nhs_and_pnc_out_of_the_nodes_and_the_projects(tmp_path: Path) -> None:
    nodes, root = _profile("silos", tmp_path)
    config = load_coordinator_config(root / "coordinator" / "coordinator.toml")
    assert {"nhs", "pnc"}.isdisjoint(nodes) and len(nodes) == 5
    projects = load_projects(config.projects_path())
    datasets = {d for p in projects.projects for d in p.datasets}
    assert "dfe.pupils" in datasets and not any(d.startswith(("nhs.", "pnc.")) for d in datasets)


def test_deprioritised_switches_the_linkage_service_off(tmp_path: Path) -> None:
    _, root = _profile("deprioritised", tmp_path)
    assert not load_coordinator_config(root / "coordinator" / "coordinator.toml").coordinator.linkage_service


def test_for_government_refuses_the_external_analysts_and_publishes_nothing() -> None:
    government = next(f for f in FUTURES if f.key == "government")
    assert set(government.refused) == {"academic", "charity"} and not government.publish
    assert {p.analyst for p in PERSONAS if not p.external} == {"moj-researcher"}
