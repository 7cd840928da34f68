"""The ``fedlink`` command: parses arguments, calls the public API, renders the answer.

It imports nothing of fedlink but the public facade (``fedlink``) and its errors, so everything it
does is also possible from Python.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

import fedlink
from fedlink.cli import (
    project_publish,  # noqa: F401  (adds `fedlink project publish` to the group)
    render,
)
from fedlink.cli.catalogue import catalogue_app
from fedlink.cli.common import (
    Ca,
    Cert,
    Coordinator,
    Format,
    FormatOpt,
    Key,
    Profile,
    connect,
    err,
    handles_errors,
    out,
    progress_lines,
    state,
)
from fedlink.cli.futures import futures
from fedlink.cli.project import project_app

app = typer.Typer(
    help="fedlink: linked statistics across departments, without raw data leaving source.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
pki_app = typer.Typer(help="The federation's CA and certificates.", no_args_is_help=True)
node_app = typer.Typer(help="Run a department's node.", no_args_is_help=True)
coordinator_app = typer.Typer(help="Run the coordinator.", no_args_is_help=True)
app.add_typer(pki_app, name="pki")
app.add_typer(node_app, name="node")
app.add_typer(coordinator_app, name="coordinator")
linkage_app = typer.Typer(
    help="Link files locally and see the linkage quality (a data owner's tool).", no_args_is_help=True
)
app.add_typer(linkage_app, name="linkage")
register_app = typer.Typer(help="The transparency registers: verify them, publish them.", no_args_is_help=True)
app.add_typer(register_app, name="register")
bench_app = typer.Typer(help="Benchmarks: run the suites, write the report.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
model_app = typer.Typer(help="Federated models (logistic and linear regression) over horizontally split tables.")
app.add_typer(model_app, name="model")
result_app = typer.Typer(
    help="Results the coordinator keeps for you (sealed to your key) once budget is committed.", no_args_is_help=True
)
app.add_typer(result_app, name="result")
app.add_typer(catalogue_app, name="catalogue")
app.add_typer(project_app, name="project")


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    state["debug"] = debug
    if not debug:
        # gRPC's core logs a failed TLS handshake at INFO on stderr, beside our one-line error: keep its
        # errors only (set before gRPC starts; an explicit GRPC_VERBOSITY wins).
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --- data and PKI ---------------------------------------------------------------------------------
@app.command()
@handles_errors
def synth(
    people: Annotated[int, typer.Option(help="Size of the synthetic population.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = 1,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder (must be new or empty).")] = Path("synth"),
    corruption: Annotated[
        Path | None, typer.Option(help="TOML file of identifier corruption rates (defaults are built in).")
    ] = None,
) -> None:
    """Generate a synthetic population, six departments' tables and a ground-truth file."""
    from fedlink_tools.synth import load_corruption_config, synthesize

    rates = load_corruption_config(corruption) if corruption else None
    summary = synthesize(people, seed, out_dir, rates=rates)
    out.print(
        f"wrote {summary.people:,} people to {summary.out} in {summary.elapsed_seconds:.1f}s (ground truth in "
        f"{summary.out / 'truth'}: give it to no node)"
    )


@pki_app.command("init")
@handles_errors
def pki_init(
    directory: Annotated[Path, typer.Option("--dir", help="Folder for the CA.")] = Path(".fedlink/pki"),
) -> None:
    """Create the federation CA."""
    from fedlink.pki import init_ca

    path = init_ca(directory)
    out.print(f"federation CA written to {path} (keep {directory / 'ca.key'} offline)")


@pki_app.command("issue")
@handles_errors
def pki_issue(
    role: Annotated[str, typer.Option(help="coordinator, node or analyst.")],
    name: Annotated[str, typer.Option(help="The party's name, e.g. the node name.")],
    directory: Annotated[Path, typer.Option("--dir", help="Folder of the CA.")] = Path(".fedlink/pki"),
    host: Annotated[list[str] | None, typer.Option(help="Extra DNS name or IP the party serves on.")] = None,
) -> None:
    """Issue a certificate signed by the federation CA."""
    from fedlink.pki import issue

    issued = issue(directory, role, name, tuple(host or ()))
    out.print(f"issued {issued.identity}: {issued.cert_path} and {issued.key_path}")


@pki_app.command("revoke")
@handles_errors
def pki_revoke(
    cert: Annotated[Path, typer.Option(help="The certificate to revoke.")],
    directory: Annotated[Path, typer.Option("--dir", help="Folder of the CA.")] = Path(".fedlink/pki"),
) -> None:
    """Revoke a certificate: the coordinator ends its live sessions within seconds and refuses it after."""
    from fedlink.pki import revoke

    identity = revoke(directory, cert)
    out.print(f"revoked {identity}")


# --- parties --------------------------------------------------------------------------------------
ReadyFile = Annotated[Path | None, typer.Option(help="Write this file once ready (for scripts).")]


@node_app.command("serve")
@handles_errors
def node_serve(
    config: Annotated[Path, typer.Option(help="The node's node.toml.")],
    ready_file: ReadyFile = None,
) -> None:
    """Load the node's tables, dial out to the coordinator and serve aggregate operators."""
    from fedlink.services import serve_node

    serve_node(config, ready_file)


@coordinator_app.command("serve")
@handles_errors
def coordinator_serve(
    config: Annotated[Path, typer.Option(help="The coordinator.toml.")],
    ready_file: ReadyFile = None,
) -> None:
    """Accept nodes and analysts over mTLS gRPC, plan and route queries."""
    from fedlink.services import serve_coordinator

    serve_coordinator(config, ready_file)


# Over Flower: fedlink's ServerApp runs on the SuperLink's machine with the coordinator's project registry
# and register there; the analyst names themselves (Flower authenticates the SuperLink, not the analyst).
Superlink = Annotated[
    str | None, typer.Option(help="Run over Flower: the SuperLink's Control API address (host:port).")
]
RootCertificates = Annotated[Path | None, typer.Option(help="Flower: the CA certificate of the SuperLink's TLS.")]
Insecure = Annotated[bool, typer.Option("--insecure", help="Flower: no TLS (tests on loopback only).")]
Projects = Annotated[
    Path | None, typer.Option(help="Flower: the coordinator's projects.toml on the SuperLink's machine.")
]
Register = Annotated[
    Path | None, typer.Option(help="Flower: the coordinator's transparency register on the SuperLink's machine.")
]
AnalystName = Annotated[str | None, typer.Option(help="Flower: your analyst name in the project registry.")]
TestMode = Annotated[bool, typer.Option("--test-mode", help="Flower: run the ServerApp in test mode.")]


def _federation(
    profile: Path | None,
    coordinator: str | None,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    project: str | None,
    superlink: str | None,
    root_certificates: Path | None,
    insecure: bool,
    projects: Path | None,
    register: Path | None,
    analyst: str | None,
    test_mode: bool,
) -> Any:
    """fedlink's own transport, or with ``superlink`` fedlink's ServerApp on a Flower SuperLink."""
    if not superlink:
        return connect(profile, coordinator, cert, key, ca)
    if projects is None or register is None or not analyst:
        raise fedlink.BadInput("over Flower, give --projects, --register and --analyst as well as --superlink")
    if not project:
        raise fedlink.BadInput("over Flower, name the project: pass --project P")
    return fedlink.FlowerFederation(
        superlink,
        analyst=analyst,
        projects=projects,
        register=register,
        insecure=insecure,
        root_certificates=root_certificates,
        test_mode=test_mode,
    )


@app.command()
@handles_errors
def catalog(
    profile: Profile = None,
    coordinator: Coordinator = None,
    cert: Cert = None,
    key: Key = None,
    ca: Ca = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """What data exists where (the same as `fedlink catalogue show`)."""
    render.catalogue(out, connect(profile, coordinator, cert, key, ca).catalog(), fmt.value)


@app.command()
@handles_errors
def query(
    sql: Annotated[
        str, typer.Argument(help='An aggregate SQL query, e.g. "SELECT region, COUNT(*) FROM t GROUP BY region".')
    ],
    project: Annotated[str | None, typer.Option(help="The registered project this query is for.")] = None,
    epsilon: Annotated[float | None, typer.Option(help="Privacy loss to spend at each node (pure DP).")] = None,
    rho: Annotated[
        float | None, typer.Option(help="Privacy loss to spend at each node (zCDP), instead of epsilon.")
    ] = None,
    noiseless: Annotated[
        bool, typer.Option("--noiseless", help="Exact answers: only in a federation running in test mode.")
    ] = False,
    pet: Annotated[
        str,
        typer.Option(
            help="he+dp: nodes encrypt under your fresh key and only you see numbers; dp: noisy vectors in the clear."
        ),
    ] = "he+dp",
    profile: Profile = None,
    coordinator: Coordinator = None,
    cert: Cert = None,
    key: Key = None,
    ca: Ca = None,
    fmt: FormatOpt = Format.table,
    superlink: Superlink = None,
    root_certificates: RootCertificates = None,
    insecure: Insecure = False,
    projects: Projects = None,
    register: Register = None,
    analyst: AnalystName = None,
    test_mode: TestMode = False,
) -> None:
    """Run an aggregate query over every node that holds the table; every number has a 95% interval
    (over fedlink's transport, or over Flower with --superlink)."""
    fed = _federation(
        profile, coordinator, cert, key, ca, project, superlink, root_certificates, insecure, projects, register,
        analyst, test_mode,
    )  # fmt: skip
    res = fed.query(sql, project=project, epsilon=epsilon, rho=rho, noiseless=noiseless, pet=pet)
    render.result(out, res, fmt.value)


@app.command()
@handles_errors
def budget(
    profile: Profile = None,
    coordinator: Coordinator = None,
    cert: Cert = None,
    key: Key = None,
    ca: Ca = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Remaining privacy budget per node, project and dataset (from each node's own ledger)."""
    render.budget(out, connect(profile, coordinator, cert, key, ca).budget(), fmt.value)


class FamilyOpt(StrEnum):
    logistic = "logistic"
    gaussian = "gaussian"


@model_app.command("fit")
@handles_errors
def model_fit(
    formula: Annotated[
        str,
        typer.Argument(
            help="response ~ term + term, e.g. \"outcome = 'housed' ~ duration_days + episode_type = 'hostel'\"."
        ),
    ],
    table: Annotated[str, typer.Option(help="The table, held at two or more nodes, to fit the model on.")],
    project: Annotated[str | None, typer.Option(help="The registered project this model is for.")] = None,
    rho: Annotated[
        float | None, typer.Option(help="Privacy loss to spend at each node (zCDP), over all iterations.")
    ] = None,
    family: Annotated[
        FamilyOpt, typer.Option(help="logistic (a 0/1 response) or gaussian (linear).")
    ] = FamilyOpt.logistic,
    iterations: Annotated[
        int | None,
        typer.Option(help="Newton-Raphson iterations (logistic default 8, gaussian 1); each costs rho/iterations."),
    ] = None,
    noiseless: Annotated[
        bool, typer.Option("--noiseless", help="Exact coefficients: only in a federation running in test mode.")
    ] = False,
    superlink: Superlink = None,
    root_certificates: RootCertificates = None,
    insecure: Insecure = False,
    projects: Projects = None,
    register: Register = None,
    analyst: AnalystName = None,
    test_mode: TestMode = False,
    profile: Profile = None,
    coordinator: Coordinator = None,
    cert: Cert = None,
    key: Key = None,
    ca: Ca = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Fit a logistic or linear regression over every node holding the table, by Newton-Raphson on the
    nodes' noisy, masked statistics (over fedlink's transport, or over Flower with --superlink)."""
    fed = _federation(
        profile, coordinator, cert, key, ca, project, superlink, root_certificates, insecure, projects, register,
        analyst, test_mode,
    )  # fmt: skip
    with render.waiting(err, f"fitting {family.value} model on {table}"):
        fit = fed.fit(
            formula,
            table=table,
            project=project,
            family=family.value,
            rho=rho,
            iterations=iterations,
            noiseless=noiseless,
        )
    render.model(out, fit, fmt.value)


@result_app.command("get")
@handles_errors
def result_get(
    query_id: Annotated[str, typer.Argument(help="The query's id (printed when a result is pending; `result list`).")],
    profile: Profile = None,
    coordinator: Coordinator = None,
    cert: Cert = None,
    key: Key = None,
    ca: Ca = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Collect the result of a query or model you ran (completing it if a node that owed its answer is back)."""
    res = connect(profile, coordinator, cert, key, ca).result(query_id)
    if isinstance(res, fedlink.ModelResult):
        render.model(out, res, fmt.value)
    else:
        render.result(out, res, fmt.value)


@result_app.command("list")
@handles_errors
def result_list(
    profile: Profile = None,
    coordinator: Coordinator = None,
    cert: Cert = None,
    key: Key = None,
    ca: Ca = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """The queries whose keys this client keeps, so whose results `fedlink result get` can open."""
    render.stored_results(out, connect(profile, coordinator, cert, key, ca).results(), fmt.value)


class LinkModeOpt(StrEnum):
    secret = "secret"
    psi = "psi"


@app.command()
@handles_errors
def link(
    project: Annotated[str | None, typer.Option(help="The project whose nodes to link.")] = None,
    mode: Annotated[
        LinkModeOpt,
        typer.Option(
            help="secret: nodes agree a link secret and send keyed match keys and Bloom encodings (exact and "
            "fuzzy); psi: no shared secret, exact match keys through elliptic-curve Diffie-Hellman PSI."
        ),
    ] = LinkModeOpt.secret,
    profile: Profile = None,
    coordinator: Coordinator = None,
    cert: Cert = None,
    key: Key = None,
    ca: Ca = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Build a project's link spine: nodes send keyed encodings (or PSI-blinded keys), receive their slots."""
    fed = connect(profile, coordinator, cert, key, ca)
    with render.stage_progress(err) as advance:
        report = fed.link(project, on_progress=advance, mode=mode.value)
    render.link_report(out, report, fmt.value)


@linkage_app.command("run")
@handles_errors
def linkage_run(
    inputs: Annotated[list[Path], typer.Option("--input", help="A CSV or Parquet file of records (two or more).")],
    mapping: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="CONCEPT=COLUMN (address=a,b for several), CONCEPT.OPTION=VALUE (dob.format=%d/%m/%Y, "
            "sex.coding=1/2, postcode.country=au) or record_id=COLUMN; default: columns named like concepts.",
        ),
    ] = None,
    spec: Annotated[Path | None, typer.Option(help="Linkage spec (default: the shipped one).")] = None,
    truth: Annotated[
        Path | None, typer.Option(help="input,row,entity CSV, or fedlink synth's truth/records.parquet.")
    ] = None,
    links: Annotated[Path | None, typer.Option("--out", help="Write input,row,entity for every row here.")] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Link files with the federation's code and print the estimated quality (no labels needed);
    with --truth also the measured quality."""
    from fedlink.linkage.run import run_files

    with render.stage_progress(err) as advance:
        report = run_files(inputs, tuple(mapping or ()), spec, truth, links, progress=advance)
    render.linkage_run(out, report, fmt.value)


@linkage_app.command("evaluate")
@handles_errors
def linkage_evaluate(
    inputs: Annotated[list[Path], typer.Option("--input", help="A CSV or Parquet file of records (two or more).")],
    truth: Annotated[Path, typer.Option(help="CSV of input,row,entity: the true entity of each row.")],
    schema: Annotated[Path | None, typer.Option(help="Linkage schema (default: the built-in one).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Dice threshold (default: the tuned one).")] = None,
    subgroup: Annotated[
        list[str] | None, typer.Option(help="Column to break error rates down by (e.g. age_band).")
    ] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Encode and link files locally against a ground truth: precision, recall, F1, error rates by subgroup."""
    from fedlink.linkage.evaluate import evaluate_files

    report = evaluate_files(schema, inputs, truth, threshold=threshold, subgroup_columns=tuple(subgroup or ()))
    render.linkage_quality(out, report, fmt.value)


Registers = Annotated[
    list[Path],
    typer.Argument(help="register.jsonl files, or state folders holding <party>/register.jsonl (e.g. .fedlink/state)."),
]


@register_app.command("verify")
@handles_errors
def register_verify(
    paths: Registers,
    config: Annotated[
        Path | None,
        typer.Option(help="The coordinator config: expect registers from the coordinator and every node it registers."),
    ] = None,
    published: Annotated[
        Path | None,
        typer.Option(help="A published register.json: expect its parties, each chain passing through its head."),
    ] = None,
) -> None:
    """Check every register's chain and head, that none expected is missing, and that the coordinator's
    and the nodes' registers agree on every query's outcome (exit 1 otherwise)."""
    from fedlink.governance.federation import verify_federation
    from fedlink.transparency.register import find_registers

    report = verify_federation(find_registers(paths), config=config, published=published)
    for party in report.parties:
        if party.ok:
            line = f"       {party.party}: {party.entries} entries, chain intact ({party.path})"
            out.print(render.styled("ok", "green", line))
            continue
        out.print(render.styled("TAMPERED", "bold red", f" {party.party}: {party.path}"))
        for problem in party.problems:
            out.print(f"         {problem}", highlight=False)
    for line in report.missing:
        out.print(render.styled("MISSING", "bold red", f"  {line}"))
    for line in report.crosscheck.disagreements:
        out.print(render.styled("DISAGREE", "bold red", f" {line}"))
    for line in report.notes:
        out.print(f"note:    {line}", highlight=False)
    out.print(f"cross-check: {report.crosscheck.summary()}", highlight=False)
    if not report.ok:
        raise fedlink.Fault(f"{report.problem_summary()}; see the lines above, and compare with the published copies")


@register_app.command("export")
@handles_errors
def register_export(
    paths: Registers,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for index.html and register.json.")],
) -> None:
    """Write the public transparency page (static HTML) and its JSON from the registers."""
    from fedlink.governance.export import export_register
    from fedlink.transparency.register import find_registers

    html_path, json_path = export_register(find_registers(paths), out_dir)
    out.print(f"wrote {html_path} and {json_path}")


# --- benchmarks -----------------------------------------------------------------------------------
@bench_app.command("run")
@handles_errors
def bench_run(
    quick: Annotated[
        bool, typer.Option("--quick", help="Default sizes only (a few minutes); else FEDLINK_BENCH_LARGE=1.")
    ] = False,
    smoke: Annotated[
        bool,
        typer.Option(
            "--smoke",
            help="Check the benchmarks still run (CI): default sizes, each benchmark once and untimed, "
            "two suites at a time; writes only the log, no results.",
        ),
    ] = False,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for the results JSON and log (default benchmarks/results).")
    ] = None,
    suite: Annotated[
        list[str] | None, typer.Option(help="Only this suite (test_bench_<suite>.py: psi, flower...); repeatable.")
    ] = None,
) -> None:
    """Run the pytest-benchmark suites under benchmarks/ and record the machine with their results."""
    from fedlink_tools.bench.runner import run as run_benchmarks

    progress = progress_lines("bench:") if err.is_terminal else None
    result = run_benchmarks(out_dir, quick=quick, smoke=smoke, progress=progress, only=tuple(suite or ()))
    if result.json_path is None:
        out.print(
            f"smoke run: {len(result.suites)} suite(s) ok, {result.benchmarks} benchmarks ran once, untimed, in "
            f"{result.seconds:.0f} s (nothing recorded as a measurement); pytest's output: {result.log_path}",
            highlight=False,
        )
        return
    out.print(
        f"wrote {result.json_path} ({result.benchmarks} benchmarks, {result.mode} run, {result.seconds:.0f} s); "
        f"pytest's output: {result.log_path}; next: fedlink bench report",
        highlight=False,
    )


@bench_app.command("report")
@handles_errors
def bench_report(
    source: Annotated[
        list[Path] | None,
        typer.Option(
            "--from",
            help="pytest-benchmark JSON file, or a folder (its newest *.json); default benchmarks/results. "
            "Repeatable: a case in several files is taken from the last.",
        ),
    ] = None,
    report: Annotated[Path, typer.Option("--out", help="The Markdown report; plots go to plots/ beside it.")] = Path(
        "benchmarks/REPORT.md"
    ),
) -> None:
    """Write the benchmark report: machine, overhead ratios, medians and spreads, log-log plots."""
    from fedlink_tools.bench.report import write_report

    result = write_report(source or None, report)
    out.print(f"wrote {result.path} ({result.benchmarks} benchmarks) and {len(result.plots)} plot(s)", highlight=False)
    for line in result.headlines:
        out.print(f"  {line}", highlight=False)


@app.command()
@handles_errors
def demo(
    workdir: Annotated[
        Path,
        typer.Option(
            help="Working folder for PKI, data, state, logs and the analyst profile: made if new or empty, used "
            "again (budgets spent there stay spent) if it holds a demo of the same --people and --seed, else refused."
        ),
    ] = Path(".fedlink"),
    people: Annotated[int, typer.Option(help="Synthetic population size.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    serve: Annotated[bool, typer.Option("--serve", help="Keep the federation running after the examples.")] = False,
    prepare_only: Annotated[
        bool,
        typer.Option(
            "--prepare-only",
            help="Only write the PKI, the synthetic data and an analyst profile into --workdir (kept if already "
            "prepared the same way), for parties that run elsewhere (containers, namespaces); start nothing.",
        ),
    ] = False,
    coordinator_host: Annotated[
        str, typer.Option(help="With --prepare-only: the coordinator's host name (in its certificate and the profile).")
    ] = "localhost",
    coordinator_port: Annotated[int, typer.Option(help="With --prepare-only: the coordinator's port.")] = 7443,
    parties: Annotated[
        Path | None,
        typer.Option(
            help="With --prepare-only: also give each party a folder PARTIES/<party> with only its own key, "
            "certificate and tables (one volume per party)."
        ),
    ] = None,
) -> None:
    """Run the whole demo: PKI, synthetic departments, a local federation, example queries, stop.

    The working folder is never deleted or remade; to start over, choose another --workdir or delete
    it yourself.
    """
    from fedlink.governance.export import export_register
    from fedlink.governance.federation import verify_federation
    from fedlink_tools.demo import EXAMPLE_QUERIES, prepare_demo, run_demo, second_shell

    if prepare_only:
        profile = prepare_demo(
            workdir,
            people,
            seed,
            coordinator_host,
            coordinator_port,
            progress=lambda m: err.print(f"demo: {m}"),
            parties=parties,
        )
        err.print(f"demo: prepared; analyst profile {profile}")
        return
    setup = run_demo(workdir, people, seed, progress=progress_lines("demo:"))
    try:
        fed = fedlink.connect(profile=setup.profile)
        render.catalogue(out, fed.catalog(), "table")
        try:
            for project, epsilon, sql in EXAMPLE_QUERIES:
                render.result(out, fed.query(sql, project=project, epsilon=epsilon), "table")
        except fedlink.BudgetExhausted as exc:
            raise fedlink.BudgetExhausted(
                f"{exc.message}; the demo federation in {setup.workdir} spent it in earlier runs: run the demo in "
                f"another --workdir, or delete {setup.workdir} yourself to start over"
            ) from exc
        render.budget(out, fed.budget(), "table")
        with render.stage_progress(err) as advance:
            render.link_report(out, fed.link("homelessness-outcomes", on_progress=advance), "table")
        registers = setup.federation.registers()
        verified = verify_federation(registers)
        if not verified.ok:
            state = setup.federation.state
            raise fedlink.Fault(
                f"the registers failed ({verified.problem_summary()}); see `fedlink register verify {state}`"
            )
        page, _ = export_register(registers, setup.workdir / "register-site")
        err.print(f"demo: {len(registers)} transparency registers verified; public page: {page}")
        if serve:
            commands = second_shell(setup.profile, Path.cwd(), Path(sys.prefix), Path(sys.base_prefix))
            err.print("federation running; Ctrl-C here stops it. To query it, open a second shell and run:")
            for command in commands:
                err.print(f"    {command}", highlight=False)
            stopped = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stopped.set())
            with contextlib.suppress(KeyboardInterrupt):
                stopped.wait()
    finally:
        setup.federation.stop()
    err.print("demo: federation stopped")


class ScenarioName(StrEnum):
    deprivation = "deprivation"
    justice = "justice"
    homelessness = "homelessness"
    all = "all"


@app.command()
@handles_errors
def scenario(
    name: Annotated[ScenarioName, typer.Argument(help="deprivation, justice, homelessness, or all three.")],
    epsilon: Annotated[
        float | None, typer.Option(help="Privacy loss per query at each node it reads (default: the scenario's).")
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the chart (PNG) and published table (CSV).")
    ] = Path("scenarios"),
    people: Annotated[int, typer.Option(help="Synthetic population of the demo federation.")] = 50_000,
    seed: Annotated[int, typer.Option(help="Random seed of the demo federation.")] = 7,
    workdir: Annotated[
        Path,
        typer.Option(
            help="Working folder of the scenarios' demo federation (not the demo's own): made if new, used again "
            "if it holds one of the same --people and --seed, else refused."
        ),
    ] = Path(".fedlink-scenario"),
    profile: Annotated[
        Path | None, typer.Option(help="Run on this running federation instead of starting the demo one.")
    ] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Run a research scenario end to end: linked DP queries, a table with intervals, a PNG chart.

    Without --profile it starts a demo federation of its own in --workdir (PKI, synthetic departments,
    seven nodes), runs the scenario and stops it, and also shows the error against the synthetic ground
    truth (demo only).
    """
    from fedlink.extras import require
    from fedlink_tools.demo import run_demo
    from fedlink_tools.scenarios import DemoTruth, run_scenario

    require("charts", "fedlink scenario")  # before the demo starts or a query is sent
    say = progress_lines("scenario:") if err.is_terminal else None
    names = [s.value for s in ScenarioName if s is not ScenarioName.all] if name is ScenarioName.all else [name.value]

    def run_all(fed: Any, truth: Any = None) -> None:
        reports = [run_scenario(fed, one, out_dir, epsilon, truth=truth, progress=say) for one in names]
        render.scenarios(out, reports, fmt.value)

    if profile is not None:
        run_all(fedlink.connect(profile=profile))
        return
    setup = run_demo(workdir, people, seed, progress=say or (lambda _: None))
    try:
        run_all(fedlink.connect(profile=setup.profile), DemoTruth(setup.workdir))
    finally:
        setup.federation.stop()


app.command()(futures)


def run() -> None:
    """Console-script entry point. A mistyped command line (unknown option, bad choice, missing
    argument) gets the same one-line ``error:`` as any other bad input, and exit code 2."""
    try:
        code = app(standalone_mode=False)  # click returns the exit code of a typer.Exit here
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("error: interrupted", highlight=False, markup=False)
        sys.exit(130)
    except Exception as exc:
        # click's usage and parameter errors (typer may vendor click, so they are matched by shape)
        show, code = getattr(exc, "format_message", None), getattr(exc, "exit_code", None)
        if not callable(show) or not isinstance(code, int):
            raise
        context = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and context is not None:
            err.print(context.get_help(), highlight=False, markup=False)
            sys.exit(code)
        where = f"`{context.command_path} --help`" if context is not None else "`fedlink --help`"
        err.print(f"error: {str(show()).rstrip('.')}; see {where}", highlight=False, markup=False)
        sys.exit(code)
