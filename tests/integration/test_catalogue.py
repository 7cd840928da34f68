"""The public catalogue exported from a running federation (a real coordinator and the demo's seven
nodes, in process): what each node declares reaches it through the coordinator, it equals the node
operators' local preview, the Data Package is valid, and no identifier value is in any file."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import frictionless
import pytest

from fedlink.errors import BadInput
from fedlink.governance.catalogue import export_catalogue, local_catalogue
from fedlink.node.config import load_node_config
from fedlink.protocol.publication import CatalogueRecord

from ..conftest import ANALYST, NODES, ROOT, InProcessFederation, connect_analyst, find_leaks, identifier_values


@pytest.fixture(scope="module")
def site(federation: InProcessFederation, workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("catalogue") / "site"
    export_catalogue(connect_analyst(federation.address, workdir).catalog(), out)
    yield out


def _package(folder: Path) -> dict:
    package = json.loads((folder / "datapackage.json").read_text())
    package.pop("created")
    return package


def test_each_dataset_shows_what_its_node_declares(site: Path) -> None:
    package = _package(site)
    document = json.loads((site / "catalogue.jsonld").read_text())
    resources = {r["name"]: r for r in package["resources"]}
    datasets = {d["dct:identifier"]: d for d in document["dcat:dataset"]}
    for name in NODES:
        config = load_node_config(ROOT / "nodes" / name / "node.toml")
        for table in config.tables:
            resource, dataset = resources[f"{name}.{table.name}"], datasets[f"{name}.{table.name}"]
            assert resource["fedlink:inbox"] == config.contacts.inbox != ""
            assert resource["fedlink:howToApply"] == config.contacts.how_to_apply
            assert resource["fedlink:legalGateways"] == list(table.legal_gateways) != []
            assert resource["fedlink:updateFrequency"]["word"] == table.update_frequency
            assert [f["name"] for f in resource["schema"]["fields"]] == [c.name for c in table.columns]
            assert dataset["dcat:contactPoint"]["vcard:hasEmail"] == {"@id": f"mailto:{config.contacts.inbox}"}
            policy = config.privacy.disclosure
            for readiness in resource["fedlink:linkageReadiness"]:
                for count in (readiness["records"], readiness["validRecords"]):
                    assert count is None or (count % policy.round_to == 0 and count >= policy.suppress_below)
    assert len(resources) == sum(len(load_node_config(ROOT / "nodes" / n / "node.toml").tables) for n in NODES)


def test_the_federation_publishes_what_the_nodes_local_preview_shows(site: Path, tmp_path: Path) -> None:
    configs = [ROOT / "nodes" / name / "node.toml" for name in NODES]
    export_catalogue(local_catalogue(configs), tmp_path / "preview")
    assert _package(tmp_path / "preview") == _package(site)
    shares = [
        r["validShare"] for r in _package(site)["resources"] for r in r["fedlink:linkageReadiness"] if r["validShare"]
    ]
    assert shares and all(0 < share <= 1 for share in shares)


def test_the_data_package_is_valid(site: Path) -> None:
    report = frictionless.validate(str(site / "datapackage.json"))
    assert report.valid, report.flatten(["type", "note"])


def test_no_identifier_value_is_in_any_file(site: Path, workdir: Path) -> None:
    files = [path.read_bytes() for path in sorted(site.iterdir())]
    identifiers = identifier_values(workdir)
    assert len(files) == 4
    assert find_leaks(files, identifiers) == []
    # The scan finds a value that is there: one surname, put in a copy of the page.
    surname = next(v for v in sorted(identifiers) if v.isalpha() and len(v) > 5)
    assert find_leaks([*files, files[-1] + f"<td>{surname}</td>".encode()], identifiers) == [surname]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedlink", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_command_line_shows_and_exports_the_catalogue(
    federation: InProcessFederation, workdir: Path, tmp_path: Path
) -> None:
    pki = workdir / "pki"
    analyst = ("--coordinator", federation.address, "--ca", str(pki / "ca.crt"),
               "--cert", str(pki / f"analyst-{ANALYST}.crt"), "--key", str(pki / f"analyst-{ANALYST}.key"))  # fmt: skip
    shown = _cli("catalogue", "show", *analyst, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    nodes = {n["node"]: n["catalogue"] for n in json.loads(shown.stdout)["nodes"]}
    assert nodes["dwp"]["contacts"]["inbox"] == "data-requests@dwp.example"
    alias = _cli("catalog", *analyst, "--format", "json")  # the older spelling stays
    assert alias.returncode == 0 and json.loads(alias.stdout)["nodes"] == json.loads(shown.stdout)["nodes"]

    exported = _cli("catalogue", "export", "--out", str(tmp_path / "site"), *analyst)
    assert exported.returncode == 0, exported.stderr
    assert "datapackage.json" in exported.stdout
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == [
        ".fedlink-catalogue-export", "catalogue.jsonld", "datapackage.json", "index.html",
    ]  # fmt: skip
    # the export is on the coordinator's register: each file's SHA-256, so a copy can be checked against it
    entries = [
        json.loads(line) for line in (federation.state / "coordinator" / "register.jsonl").read_text().splitlines()
    ]
    recorded = [e["fields"] for e in entries if e["kind"] == "catalogue_published"][-1]
    assert recorded["analyst"] == ANALYST and f"entry {entries[-1]['seq']}" in exported.stdout
    assert recorded["files"] == {
        name: hashlib.sha256((tmp_path / "site" / name).read_bytes()).hexdigest()
        for name in ("index.html", "catalogue.jsonld", "datapackage.json")
    }
    assert set(recorded["datasets"]) == {f"{n}.{t['name']}" for n, c in nodes.items() if c for t in c["tables"]}
    forged = CatalogueRecord.model_validate({"files": recorded["files"], "datasets": ["nowhere.people"]})
    with pytest.raises(BadInput, match=r"nowhere\.people, which no live node declares"):
        connect_analyst(federation.address, workdir).record_catalogue(forged)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    refused = _cli(
        "catalogue", "export", "--out", str(tmp_path / "other"), "--node", str(ROOT / "nodes" / "dwp" / "node.toml")
    )
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"error: {tmp_path / 'other'} is not empty and is not a previous catalogue export; choose an empty or new "
        "folder (--out)"
    )
