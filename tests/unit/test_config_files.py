"""Config files: environment references (``${VAR}``, ``${VAR:-default}``, ``$VAR``, ``$$``) and relative
paths are handled once, by the config base, for every file (node, coordinator, projects, analyst
profile), with one TLS model; an unset variable is a one-line error naming the entry and the variable."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fedlink.analyst.profile import load_profile
from fedlink.config import TlsSection
from fedlink.coordinator.config import CoordinatorConfig, load_coordinator_config
from fedlink.coordinator.projects import load_projects
from fedlink.errors import ConfigError
from fedlink.node.config import NodeConfig, load_node_config

NODE = """
tables = []
[node]
name = "dfe"
coordinator = "{coordinator}"
[tls]
cert = "{cert}"
key = "pki/node.key"
ca = "~/ca.crt"
[privacy]
ledger = "{ledger}"
transparency_register = "/srv/state/register.jsonl"
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def node_toml(folder: Path, coordinator: str = "c:1", cert: str = "c.crt", ledger: str = "l.sqlite") -> Path:
    return write(folder / "node.toml", NODE.format(coordinator=coordinator, cert=cert, ledger=ledger))


def test_relative_paths_are_relative_to_the_config_folder_wherever_fedlink_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node_toml(tmp_path / "nodes" / "dfe", cert="../../pki/node.crt", ledger="state/ledger.sqlite")
    monkeypatch.chdir(tmp_path / "nodes")  # not the config's folder
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load_node_config(Path("dfe/node.toml"))
    assert config.source == tmp_path / "nodes" / "dfe" / "node.toml"
    assert config.tls_files().cert == tmp_path / "pki" / "node.crt"
    assert config.tls_files().key == tmp_path / "nodes" / "dfe" / "pki" / "node.key"
    assert config.tls_files().ca == tmp_path / "home" / "ca.crt"
    assert config.ledger_path() == tmp_path / "nodes" / "dfe" / "state" / "ledger.sqlite"
    assert config.register_path() == Path("/srv/state/register.jsonl")


def test_a_config_built_in_code_resolves_against_the_source_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dict that names its ``source`` file (a benchmark's or an embedding program's) resolves its
    relative paths against that file's folder, not the current folder, as if read from there."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "nodes" / "dfe"
    config = NodeConfig.model_validate(
        {
            "node": {"name": "dfe", "coordinator": "c:1"},
            "tls": {"cert": "c.crt", "key": "c.key", "ca": "/pki/ca.crt"},
            "privacy": {"ledger": "state/ledger.sqlite", "transparency_register": "state/register.jsonl"},
            "tables": [],
            "source": str(folder / "node.toml"),
        }
    )
    assert config.ledger_path() == folder / "state" / "ledger.sqlite"
    assert config.tls_files().cert == folder / "c.crt"


def test_environment_references_in_paths_and_addresses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDLINK_TEST_HOST", "10.0.0.7")
    monkeypatch.setenv("FEDLINK_TEST_PKI", str(tmp_path / "pki"))
    monkeypatch.delenv("FEDLINK_TEST_STATE", raising=False)
    path = node_toml(
        tmp_path / "node",
        coordinator="$FEDLINK_TEST_HOST:7443",
        cert="${FEDLINK_TEST_PKI}/node.crt",
        ledger="${FEDLINK_TEST_STATE:-../state}/ledger$$1.sqlite",
    )
    config = load_node_config(path)
    assert config.coordinator_address == "10.0.0.7:7443"
    assert config.tls_files().cert == tmp_path / "pki" / "node.crt"
    # the default applies when the variable is unset, is relative to the file, and $$ is a literal $
    assert config.ledger_path() == tmp_path / "state" / "ledger$1.sqlite"

    # a relative value of a variable is relative to the current folder (where it was set)
    monkeypatch.setenv("FEDLINK_TEST_STATE", "./here")
    monkeypatch.chdir(tmp_path)
    assert load_node_config(path).ledger_path() == tmp_path / "here" / "ledger$1.sqlite"


@pytest.mark.parametrize(
    ("entry", "text", "where"),
    [
        ("coordinator", "${FEDLINK_TEST_UNSET}:1", "node.coordinator"),
        ("cert", "$FEDLINK_TEST_UNSET/node.crt", "tls.cert"),
        ("ledger", "/x/${FEDLINK_TEST_UNSET}/l.sqlite", "privacy.ledger"),
    ],
)
def test_an_unset_variable_is_one_line_naming_the_entry_and_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str, text: str, where: str
) -> None:
    monkeypatch.delenv("FEDLINK_TEST_UNSET", raising=False)
    path = node_toml(tmp_path, **{entry: text})
    with pytest.raises(ConfigError) as caught:
        load_node_config(path)
    message = caught.value.message
    assert message == (
        f"{path}: {where}: environment variable FEDLINK_TEST_UNSET is not set; set it or write "
        "${FEDLINK_TEST_UNSET:-default}; fix that entry"
    )


def test_one_tls_model_for_coordinator_nodes_and_analysts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert NodeConfig.model_fields["tls"].annotation is TlsSection
    assert CoordinatorConfig.model_fields["tls"].annotation is TlsSection
    monkeypatch.setenv("FEDLINK_TEST_PKI", "/pki")
    coordinator = write(
        tmp_path / "coordinator" / "coordinator.toml",
        """
        nodes = []
        [coordinator]
        listen = "${FEDLINK_TEST_LISTEN:-127.0.0.1:9}"
        transparency_register = "state/register.jsonl"
        [tls]
        cert = "$FEDLINK_TEST_PKI/c.crt"
        key = "c.key"
        ca = "ca.crt"
        revoked = "revoked.txt"
        """,
    )
    config = load_coordinator_config(coordinator)
    assert config.listen == "127.0.0.1:9"
    assert config.tls_files().cert == Path("/pki/c.crt")
    assert config.revoked_path() == tmp_path / "coordinator" / "revoked.txt"
    assert config.projects_path() == tmp_path / "coordinator" / "projects.toml"  # the default, beside the file

    # a node has no revocation list of its own: the key is refused rather than ignored
    node = node_toml(tmp_path / "node")
    node.write_text(node.read_text().replace('ca = "~/ca.crt"', 'ca = "a"\nrevoked = "r"'), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"tls\.revoked is read by the coordinator only"):
        load_node_config(node)

    profile = write(
        tmp_path / "analyst" / "analyst.toml",
        'coordinator = "$FEDLINK_TEST_PKI:1"\ncert = "a.crt"\nkey = "$FEDLINK_TEST_PKI/a.key"\nca = "../ca.crt"\n',
    )
    loaded = load_profile(profile)
    assert loaded.address == "/pki:1"
    assert (
        loaded.tls_files()
        == TlsSection(cert=tmp_path / "analyst" / "a.crt", key="/pki/a.key", ca=tmp_path / "ca.crt").files()
    )


def test_free_text_is_taken_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOUSING", raising=False)
    path = write(
        tmp_path / "projects.toml",
        """
        [[projects]]
        id = "p"
        title = "Cost of $HOUSING"
        purpose = "Is ${HOUSING} support worth $5 a day?"
        analysts = ["a"]
        datasets = ["dfe.pupils"]
        """,
    )
    project = load_projects(path).get("p")
    assert (project.title, project.purpose) == ("Cost of $HOUSING", "Is ${HOUSING} support worth $5 a day?")
