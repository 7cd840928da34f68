"""``fedlink catalogue``: the federation's data catalogue, shown to an analyst or published for everyone.

``show`` is what ``fedlink catalog`` has always printed (that spelling stays, as an alias). ``export``
writes the public site with its DCAT and Data Package metadata, from the federation (what the nodes
declared to the coordinator) or, with ``--node``, from node configs read here (a node operator's
preview of what its node would publish). :mod:`fedlink.cli.main` adds the group to ``fedlink``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedlink.cli import render
from fedlink.cli.common import (
    PARAMETER_FLAGS,
    Ca,
    Cert,
    Coordinator,
    Format,
    FormatOpt,
    Key,
    Profile,
    connect,
    handles_errors,
    out,
)
from fedlink.errors import BadInput

catalogue_app = typer.Typer(
    help="The data catalogue: show it, or publish it (a static site, DCAT JSON-LD, a Frictionless Data Package).",
    no_args_is_help=True,
)
PARAMETER_FLAGS.update({"configs": "--node", "base_url": "--base-url"})


@catalogue_app.command("show")
@handles_errors
def show(
    profile: Profile = None,
    coordinator: Coordinator = None,
    cert: Cert = None,
    key: Key = None,
    ca: Ca = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """What data exists where: nodes, tables, columns, categories, bounds and completeness."""
    render.catalogue(out, connect(profile, coordinator, cert, key, ca).catalog(), fmt.value)


@catalogue_app.command("export")
@handles_errors
def export(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the site (new, empty, or a previous catalogue export).")
    ],
    node: Annotated[
        list[Path] | None,
        typer.Option(
            help="A node.toml to read the catalogue from, here and from its own data (a node operator's "
            "preview; repeat for several). Without it, the federation is asked."
        ),
    ] = None,
    title: Annotated[str, typer.Option(help="Title of the catalogue.")] = "fedlink data catalogue",
    publisher: Annotated[
        str, typer.Option(help="Who publishes the catalogue (DCAT's publisher).")
    ] = "fedlink federation",
    base_url: Annotated[
        str | None,
        typer.Option(help="Address the site will be published at: the datasets' DCAT identifiers point into it."),
    ] = None,
    profile: Profile = None,
    coordinator: Coordinator = None,
    cert: Cert = None,
    key: Key = None,
    ca: Ca = None,
) -> None:
    """Write the public catalogue: index.html, catalogue.jsonld (DCAT) and datapackage.json (Frictionless).

    Each dataset shows its description, fields, categories, how to apply, the contact inbox, legal
    gateways, update frequency and linkage readiness (counts rounded by the node's disclosure policy).
    No value of any row is published.
    """
    from fedlink.governance.catalogue import catalogue_record, check_target, export_catalogue, local_catalogue

    if node and (profile or coordinator):
        raise BadInput("give --node (a local preview) or a federation (--profile or --coordinator), not both")
    check_target(out_dir, base_url)  # before the data is read or the federation asked
    fed = None if node else connect(profile, coordinator, cert, key, ca)
    catalogue = fed.catalog() if fed is not None else local_catalogue(node or [])
    written = export_catalogue(catalogue, out_dir, title=title, publisher=publisher, base_url=base_url)
    if fed is not None:  # a federation's catalogue goes on its register; a node's local preview does not
        seq = fed.record_catalogue(catalogue_record(written, catalogue, title))
        out.print(
            f"recorded on the coordinator's transparency register (entry {seq}): each file's SHA-256", highlight=False
        )
    out.print(
        f"catalogue written to {written.page.parent}: {written.page.name} (the site), {written.dcat.name} "
        f"(DCAT), {written.datapackage.name} (Frictionless Data Package)",
        highlight=False,
    )
