"""``fedlink project``: safe projects as a workflow. An analyst applies and follows the application;
each node's operator reviews what names its data and approves (with conditions) or rejects; anyone on
the project renders its checklist. Every step is recorded on the registers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

import fedlink
from fedlink.cli.common import Ca, Cert, Coordinator, Key, Profile, connect, handles_errors, out

project_app = typer.Typer(
    help="Safe projects: apply, follow, review and approve at a node, and the checklist of whom to consult.",
    no_args_is_help=True,
)
NodeConfigOpt = Annotated[Path, typer.Option("--config", help="The node's node.toml (run at the node).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _records_table(records: list[Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("project", "state", "title", "datasets (legal gateway)", "approvals", "end date"):
        table.add_column(column)
    for record in records:
        app = record.application
        table.add_row(
            app.id,
            record.state + (f": {record.reason}" if record.reason else ""),
            app.title,
            "\n".join(f"{c.dataset} ({c.legal_gateway})" for c in app.datasets),
            "\n".join(f"{n}: {d.decision if (d := record.decision(n)) else 'not reported'}" for n in record.approvers),
            app.end_date.isoformat(),
        )
    return table


def _split_dataset(value: str) -> tuple[str, str]:
    dataset, sep, gateway = value.partition("=")
    if not sep or not dataset.strip() or not gateway.strip():
        raise fedlink.BadInput(f"--dataset {value!r} must be NODE.TABLE=GATEWAY, e.g. 'dfe.pupils=Digital Economy Act'")
    return dataset.strip(), gateway.strip()


@project_app.command("apply")
@handles_errors
def apply(
    project_id: Annotated[str, typer.Option("--id", help="The project's id (lower-case letters, digits, '-').")],
    title: Annotated[str, typer.Option(help="A short title.")],
    purpose: Annotated[list[str], typer.Option(help="A purpose (repeat for several: broader use).")],
    public_benefit: Annotated[str, typer.Option(help="What the public gains.")],
    dataset: Annotated[
        list[str], typer.Option(help="NODE.TABLE=LEGAL GATEWAY: a dataset and the gateway claimed (repeat).")
    ],
    output: Annotated[list[str], typer.Option(help="An output planned (repeat).")],
    end_date: Annotated[str, typer.Option(help="The last day of the project (YYYY-MM-DD).")],
    identifier: Annotated[
        list[str] | None, typer.Option(help="An identifier concept to link on, e.g. dob (repeat).")
    ] = None,
    rho: Annotated[float, typer.Option(help="Budget asked of each dataset, in rho (zCDP).")] = 0.0,
    analyst: Annotated[list[str] | None, typer.Option(help="Another analyst on the project (repeat).")] = None,
    spine_of: Annotated[str | None, typer.Option(help="Reuse the link spine of this project.")] = None,
    profile: Profile = None,
    coordinator: Coordinator = None,
    cert: Cert = None,
    key: Key = None,
    ca: Ca = None,
    as_json: AsJson = False,
) -> None:
    """Apply for a project; it is active once every node holding its datasets has approved it."""
    datasets = dict(_split_dataset(d) for d in dataset)
    record = connect(profile, coordinator, cert, key, ca).apply(
        project_id,
        title=title,
        purposes=purpose,
        public_benefit=public_benefit,
        datasets=datasets,
        outputs=output,
        end_date=end_date,
        identifiers=identifier or (),
        rho=rho,
        analysts=analyst or (),
        spine_of=spine_of,
    )
    if as_json:
        out.print_json(record.model_dump_json())
        return
    out.print(_records_table([record], "application stored; each node's operator now reviews it"))


@project_app.command("status")
@handles_errors
def status(
    project_id: Annotated[str | None, typer.Argument(help="One project (default: every application).")] = None,
    profile: Profile = None,
    coordinator: Coordinator = None,
    cert: Cert = None,
    key: Key = None,
    ca: Ca = None,
    as_json: AsJson = False,
) -> None:
    """Where applications stand: state, and each node's decision as the nodes report it now."""
    fed = connect(profile, coordinator, cert, key, ca)
    records = [fed.project_status(project_id)] if project_id else fed.projects()
    if as_json:
        out.print_json(json.dumps([json.loads(r.model_dump_json()) for r in records]))
        return
    out.print(_records_table(records, "project applications"))


@project_app.command("checklist")
@handles_errors
def checklist(
    project_id: Annotated[str, typer.Argument(help="The project.")],
    fmt: Annotated[str, typer.Option("--format", help="md or html.")] = "md",
    out_file: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of printing.")] = None,
    profile: Profile = None,
    coordinator: Coordinator = None,
    cert: Cert = None,
    key: Key = None,
    ca: Ca = None,
) -> None:
    """Every participating node's contacts and teams to consult, the legal gateway per dataset, the
    identifiers requested and the state of each approval."""
    from fedlink.governance.checklist import render_checklist

    text = render_checklist(connect(profile, coordinator, cert, key, ca).project_status(project_id), fmt)
    if out_file is None:
        out.file.write(text)
        return
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(text, encoding="utf-8")
    out.print(f"wrote {out_file}")


@project_app.command("review")
@handles_errors
def review(
    config: NodeConfigOpt,
    show_all: Annotated[bool, typer.Option("--all", help="Every application, decided ones too.")] = False,
    as_json: AsJson = False,
) -> None:
    """At a node: the applications naming this node's data that await its decision, with what each asks."""
    from fedlink.node import approvals
    from fedlink.node.config import load_node_config

    node = load_node_config(config)
    found = approvals.pending(node, everything=show_all)
    if as_json:
        out.print_json(
            json.dumps([{"application": json.loads(r.model_dump_json()), "decision": d.decision} for r, d in found])
        )
        return
    table = Table(title=f"applications for node '{node.name}'", title_justify="left")
    for column in ("project", "decision here", "asks for", "purposes / public benefit", "identifiers", "rho", "ends"):
        table.add_column(column)
    for record, decision in found:
        app = record.application
        asked = [f"{c.dataset} ({c.legal_gateway})" for c in app.datasets if c.node == node.name]
        if app.spine_of:
            asked.append(f"reuse of the link spine of '{app.spine_of}'")
        table.add_row(
            f"{app.id}: {app.title}",
            decision.decision,
            "\n".join(asked),
            "\n".join([*app.purposes, f"benefit: {app.public_benefit}"]),
            ", ".join(app.identifiers) or "none",
            f"{app.rho:g}",
            app.end_date.isoformat(),
        )
    out.print(table)
    if not found:
        out.print("nothing awaits this node's decision")


@project_app.command("approve")
@handles_errors
def approve(
    project_id: Annotated[str, typer.Argument(help="The project to approve.")],
    config: NodeConfigOpt,
    rho: Annotated[
        float | None, typer.Option(help="Cap on the project's budget here (default: what it asked).")
    ] = None,
    min_cohort: Annotated[int | None, typer.Option(help="Suppress its results whose cohort is smaller.")] = None,
    identifier: Annotated[
        list[str] | None, typer.Option(help="An identifier concept allowed for linkage (repeat; default: asked).")
    ] = None,
    table: Annotated[
        list[str] | None, typer.Option(help="A table the project may use (repeat; default: asked).")
    ] = None,
    reason: Annotated[str, typer.Option(help="A note for the register.")] = "",
) -> None:
    """At a node: approve a project with conditions (recorded on the node's register)."""
    from fedlink.node import approvals
    from fedlink.node.config import load_node_config

    stored = approvals.decide(
        load_node_config(config),
        project_id,
        True,
        rho=rho,
        min_cohort=min_cohort,
        identifiers=tuple(identifier) if identifier else None,
        tables=tuple(table) if table else None,
        reason=reason,
    )
    out.print(
        f"approved project {stored.project} at {stored.decided_at}; the coordinator learns of it when it next asks"
    )


@project_app.command("reject")
@handles_errors
def reject(
    project_id: Annotated[str, typer.Argument(help="The project to reject.")],
    config: NodeConfigOpt,
    reason: Annotated[str, typer.Option(help="Why (recorded on the registers).")] = "",
) -> None:
    """At a node: reject a project (recorded on the node's register; the project is never activated)."""
    from fedlink.node import approvals
    from fedlink.node.config import load_node_config

    stored = approvals.decide(load_node_config(config), project_id, False, reason=reason)
    out.print(f"rejected project {stored.project} at {stored.decided_at}")
