"""The analyst's Python API: connect to a federation, read its catalogue, run aggregate queries.

The ``fedlink`` CLI is a thin layer over this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
from pydantic import ValidationError
from sqlglot import exp

from fedlink.analyst.keystore import KeyStore, QueryKeys
from fedlink.analyst.profile import AnalystProfile, find_profile, load_profile
from fedlink.analyst.result import Budget, Catalogue, RegisterView, Result
from fedlink.errors import BadInput, ConfigError, Fault, QueryError
from fedlink.language.linked_query import is_linked, plan_linked
from fedlink.language.sql import check_name, check_query_text, parse_sql
from fedlink.pets.chain import MAX_MULTIPLICATIONS, ChainKeys, ChainParams
from fedlink.pets.he import AnalystKeys, Scheme
from fedlink.pets.sealed import new_key as new_result_key
from fedlink.pets.sealed import open_sealed
from fedlink.plan.catalogue import FederationCatalogue
from fedlink.plan.model import Family
from fedlink.protocol import rpc
from fedlink.protocol.blobs import unpack
from fedlink.protocol.linkage import LinkCall, LinkMode, LinkReport
from fedlink.protocol.projects import ProjectApplication, ProjectList, ProjectRecord, ProjectRef
from fedlink.protocol.publication import MAX_OUTPUTS, CatalogueRecord, Publication, PublishRequest, check_summary
from fedlink.protocol.results import EncryptedResult, LinkedEncryptedResult, QueryResult, build_result, scheme_of
from fedlink.protocol.tasks import BudgetReport, ModelRequest, ModelResult, Pet, QueryRequest, TaskRef, declared_loss
from fedlink.protocol.transport import (
    ANALYST,
    Message,
    TlsFiles,
    connection_error,
    frames,
    messages,
    new_call_id,
    secure_channel,
    stream_method,
)


@dataclass(frozen=True)
class Federation:
    """A connection to a federation's coordinator as one analyst (identified by certificate).

    Every query's own keys are written to ``results_dir`` before the query leaves (default: a
    ``results`` folder beside the analyst's private key, or ``$FEDLINK_RESULTS``), so that its result,
    which the coordinator keeps sealed to the analyst once any budget is committed, can be collected
    later with :meth:`result` whatever happens to the call."""

    address: str
    tls: TlsFiles
    server_name: str | None = None
    project: str | None = None
    timeout_s: float = 120.0
    results_dir: Path | None = None

    @property
    def keystore(self) -> KeyStore:
        default = os.environ.get("FEDLINK_RESULTS") or self.tls.key.parent / "results"
        return KeyStore(self.results_dir or Path(default))

    def _run(self, stored: QueryKeys, kind: str, body: bytes) -> Message:
        """Send a query whose keys are kept; a refusal (bad input: nothing was reserved, so there will be
        no result to collect) forgets them again."""
        self.keystore.save(stored)
        try:
            return self._call(kind, body)
        except BadInput:
            self.keystore.drop(stored.query_id)
            raise

    def _call(
        self, kind: str, body: bytes = b"", on_progress: Callable[[str, int, int], None] | None = None
    ) -> Message:
        channel = secure_channel(self.address, self.tls, self.server_name)
        try:
            request = Message(new_call_id(), kind, body)
            replies = stream_method(channel, ANALYST)(frames(request), timeout=self.timeout_s)
            reply = None
            for message in messages(replies):
                if message.kind != rpc.PROGRESS:
                    reply = message
                    break
                if on_progress is not None:
                    update = json.loads(message.body)
                    on_progress(str(update["stage"]), int(update["done"]), int(update["total"]))
        except grpc.RpcError as exc:
            raise connection_error(exc, self.address, self.tls, self.timeout_s) from exc
        finally:
            channel.close()
        if reply is None:
            raise Fault(f"the coordinator at {self.address} closed the call without an answer; see its log")
        return rpc.raise_if_error(reply)

    def catalog(self) -> Catalogue:
        """What data exists where: every registered node, whether it is live, and its tables.

        >>> cat = fed.catalog()
        >>> cat.tables()["support_episodes"]
        ['charity_north', 'charity_south']
        >>> pupils = cat.node("dfe").table("pupils")
        >>> pupils.column("fsm").categories, pupils.column("first_name").kind
        ((0, 1), 'identifier')
        """
        reply = self._call(rpc.CATALOGUE)
        return Catalogue(FederationCatalogue.model_validate_json(reply.body))

    def query(
        self,
        sql: str,
        *,
        project: str | None = None,
        epsilon: float | None = None,
        rho: float | None = None,
        noiseless: bool = False,
        pet: Pet = "he+dp",
    ) -> Result:
        """Run an aggregate query for a project, spending ``epsilon`` (pure DP) or ``rho`` (zCDP) at
        every node whose data it reads. Every number comes back with its 95% interval.

        >>> res = fed.query("SELECT outcome, COUNT(*) AS n FROM support_episodes GROUP BY outcome",
        ...                 project="homelessness-outcomes", epsilon=1.0)
        >>> [row["outcome"] for row in res.rows()]
        ['housed', 'not_housed', 'lost_contact']
        >>> res.privacy_loss["charity_south"]
        {'epsilon': 1.0, 'rho': 0.0}
        >>> all(r["n_lower"] <= r["n"] <= r["n_upper"] for r in res.rows() if r["n"] is not None)
        True
        >>> fed.query("SELECT first_name, COUNT(*) FROM pupils GROUP BY first_name",
        ...           project="deprivation-mental-health", epsilon=1.0)
        Traceback (most recent call last):
        fedlink.errors.QueryError: column 'first_name' is an identifier and can never be queried; ...
        """
        check_query_text(sql)  # before anything is parsed, keyed or sent
        if pet not in ("dp", "he+dp"):
            raise BadInput(f"unknown `pet` '{pet}'; use he+dp (default: encrypted aggregation) or dp")
        loss = declared_loss(epsilon, rho)
        try:
            request = QueryRequest(sql=sql, project=project or self.project or "", loss=loss, noiseless=noiseless)
        except ValidationError as exc:
            raise BadInput(f"invalid query request ({exc.errors()[0]['msg']})") from exc
        if not request.project:
            raise BadInput("every query belongs to a project: pass `project=P` (or set project in your profile)")
        result_key, public_result_key = new_result_key()
        request = request.model_copy(update={"pet": pet, "query_id": new_call_id(), "result_key": public_result_key})
        if is_linked(sql):
            return self._linked_query(request, result_key)
        he = None
        if pet == "he+dp":
            # A fresh key pair per query; only the public contexts leave this process.
            he = AnalystKeys(schemes_for(sql))
            request = request.model_copy(update={"contexts": he.public_contexts()})
        stored = QueryKeys(
            request.query_id, "query", self.address, result_key, he=he.secret_contexts() if he is not None else {}
        )
        reply = self._run(stored, rpc.QUERY, request.model_dump_json().encode())
        opened = _open(stored, reply, he=he)
        if not isinstance(opened, Result):
            raise Fault("the coordinator answered a query with a model; upgrade it")
        return opened

    def _linked_query(self, request: QueryRequest, result_key: bytes) -> Result:
        """A LINK query: planned here first (so a bad query costs nothing and the key fits the chain),
        then run by the encrypted chain; only this process can decrypt the masked cells."""
        if request.pet != "he+dp":
            raise BadInput("linked queries always run encrypted (he+dp); drop `pet=dp`")
        catalogue = FederationCatalogue.model_validate_json(self._call(rpc.CATALOGUE).body)
        plan = plan_linked(request.sql, catalogue, MAX_MULTIPLICATIONS)
        chain = ChainKeys(ChainParams.for_chain(plan.multiplications, sums=plan.sums))
        stored = QueryKeys(request.query_id, "linked", self.address, result_key, chain=chain.secret_key_bytes())
        request = request.model_copy(update={"link_key": chain.public_key()})
        reply = self._run(stored, rpc.QUERY, request.model_dump_json().encode())
        opened = _open(stored, reply, chain=chain)
        if not isinstance(opened, Result):
            raise Fault("the coordinator did not answer a linked query with a linked result; upgrade it")
        return opened

    def result(self, query_id: str) -> Result | ModelResult:
        """The result of a query or model you ran earlier, by its id: kept by the coordinator, sealed to
        you, from the moment any node committed budget for it (a call that failed after that says the
        result is pending, with its id). Completes it first if a node owed its answer and is back.
        Raises :class:`ResultPending` while a node still owes its answer, and a one-line error for a
        query that failed (then nothing was spent). ``fedlink result list`` shows the ids kept here."""
        stored = self.keystore.load(query_id)
        reply = self._call(rpc.RESULT_GET, TaskRef(query_id=query_id).model_dump_json().encode())
        return _open(stored, reply)

    def results(self) -> list[dict[str, str]]:
        """The queries whose keys this client keeps (id, kind, coordinator, when), oldest first."""
        return self.keystore.queries()

    def register(self) -> RegisterView:
        """The coordinator's transparency register: every project and query on the public record,
        and whether its hash chain verifies.

        >>> reg = fed.register()
        >>> reg.verified, reg.entries("project")[0]["fields"]["id"]
        (True, 'deprivation-mental-health')
        """
        reply = self._call(rpc.REGISTER)
        return RegisterView(json.loads(reply.body))

    def publish(
        self,
        summary: str,
        *,
        project: str | None = None,
        results: Sequence[str | Result | ModelResult] = (),
    ) -> Publication:
        """Publish a plain-language ``summary`` of released outputs of a project (``results``: their
        query ids or the results themselves; none: every output of the project released so far). The
        coordinator checks you are on the project and each output is one of its released results, then
        stores the publication and records it on its register, whose public page shows the summary
        beside the outputs and the privacy loss that produced them. Publishing again about any of the
        same outputs supersedes the earlier publication; both stay on the register.

        >>> res = fed.query("SELECT outcome, COUNT(*) AS n FROM support_episodes GROUP BY outcome",
        ...                 project="homelessness-outcomes", epsilon=0.5)
        >>> pub = fed.publish("About half of the people supported were housed.",
        ...                   project="homelessness-outcomes", results=[res])
        >>> pub.query_ids == (res.query_id,), pub.outputs[0].datasets
        (True, ('charity_north.support_episodes', 'charity_south.support_episodes'))
        >>> fed.publish("  ", project="homelessness-outcomes")
        Traceback (most recent call last):
        fedlink.errors.BadInput: the `summary` is empty; say in plain language what the outputs show
        """
        chosen = project or self.project
        if not chosen:
            raise BadInput("a publication belongs to a project: pass `project=P` (or set project in your profile)")
        check_name(chosen, "project name")
        text = check_summary(summary)
        if isinstance(results, str | Result | ModelResult):
            results = [results]  # one output given on its own
        ids = [r if isinstance(r, str) else r.query_id for r in results]
        if len(ids) > MAX_OUTPUTS:
            raise BadInput(f"a publication names at most {MAX_OUTPUTS} `results`; split it into several")
        try:
            request = PublishRequest(project=chosen, summary=text, results=tuple(ids))
        except ValidationError as exc:
            problem = exc.errors()[0]["msg"]
            raise BadInput(f"invalid `results` ({problem}); give the ids `fedlink result list` shows") from exc
        reply = self._call(rpc.PUBLISH, request.model_dump_json().encode())
        return Publication.model_validate_json(reply.body)

    def record_catalogue(self, record: CatalogueRecord) -> int:
        """Record a public catalogue export (its files' SHA-256 digests and the datasets it lists) on the
        coordinator's transparency register, so that anyone holding a copy can check it is the one the
        federation published; the register entry's sequence number. ``fedlink catalogue export`` does
        this after writing the files (:func:`fedlink.governance.catalogue.catalogue_record`)."""
        reply = self._call(rpc.CATALOGUE_PUBLISHED, record.model_dump_json().encode())
        return int(json.loads(reply.body)["seq"])

    def link(
        self,
        project: str | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
        mode: LinkMode = "secret",
    ) -> LinkReport:
        """Build the project's link spine: nodes agree a link secret among themselves, send keyed
        encodings to the coordinator's linkage unit, and each receives the slots of its own people.
        Returns which nodes took part, how long each stage took, and the spine's match rates per node
        pair released with DP (``quality``). ``on_progress(stage, done, total)`` is called as stages
        complete. ``mode="psi"`` links on exact match keys through ECDH private set intersection, with
        no secret shared among the nodes (no fuzzy matching). Then LINK queries run over the spine, and
        every result carries its linkage quality:

        >>> report = fed.link("homelessness-outcomes")
        >>> report.nodes
        ('charity_north', 'charity_south', 'dwp', 'nhs')
        >>> res = fed.query("SELECT dwp.claims.employment, COUNT(*) AS n FROM support_episodes LINK dwp.claims "
        ...                 "GROUP BY dwp.claims.employment", project="homelessness-outcomes", epsilon=1.0)
        >>> [row["employment"] for row in res.rows()]
        ['employed', 'unemployed', 'inactive']
        >>> res.linkage.epsilon, len(res.linkage.pairs), res.privacy_loss["dwp"]["epsilon"]
        (1.0, 6, 1.0)
        """
        chosen = project or self.project
        if not chosen:
            raise BadInput("linkage belongs to a project: pass `project=P` (or set project in your profile)")
        check_name(chosen, "project name")
        if mode not in ("secret", "psi"):
            raise BadInput(f"unknown linkage mode '{mode}'; use 'secret' (the default) or 'psi'")
        call = LinkCall(project=chosen, analyst="", mode=mode)
        reply = self._call(rpc.LINK, call.model_dump_json().encode(), on_progress)
        return LinkReport.model_validate_json(reply.body)

    def fit(
        self,
        formula: str,
        *,
        table: str,
        project: str | None = None,
        family: Family = "logistic",
        rho: float | None = None,
        iterations: int | None = None,
        noiseless: bool = False,
    ) -> ModelResult:
        """Fit a logistic (or, ``family="gaussian"``, linear) regression over ``table`` at every node
        holding it, by Newton-Raphson on the nodes' summed statistics: each node adds Gaussian noise for
        ``rho`` (zCDP, split over the iterations) and masks its statistics so that only their sum can be
        read. Coefficients come back on the columns' own scale, with standard errors that include the
        sampling error and the DP noise (``noise_errors``: the noise's part; ``noise_sd``: how much each
        node added per statistic), or none, with ``errors_withheld`` saying why, when the noise swamps
        the rows (as it does on the demo's few hundred episodes):

        >>> fit = fed.fit("outcome = 'housed' ~ episode_type = 'rough_sleeping' + duration_days",
        ...               table="support_episodes", project="homelessness-outcomes", rho=1.5, iterations=2)
        >>> fit.labels
        ('(intercept)', "episode_type = 'rough_sleeping'", 'duration_days')
        >>> fit.pet, fit.privacy_loss["charity_north"].rho, sorted(fit.noise_sd)
        ('secagg+dp', 1.5, ['charity_north', 'charity_south'])
        >>> [row["term"] for row in fit.table_rows()][1], sorted(fit.table_rows()[1])
        ("episode_type = 'rough_sleeping'", ['estimate', 'lower', 'noise_error', 'std_error', 'term', 'upper', 'z'])
        >>> fit.std_errors, fit.errors_withheld.split(";")[0]
        (None, "the DP noise swamps the rows' information (smallest eigenvalue ...)")

        Logistic fits take ``iterations`` Newton steps (default 8; each costs rho / iterations), a
        gaussian (linear) fit one. Bad formulas are refused before any budget is spent:

        >>> fed.fit("outcome ~ duration_days", table="support_episodes", project="homelessness-outcomes", rho=1)
        Traceback (most recent call last):
        fedlink.errors.QueryError: 'outcome' is a category of text; use an indicator such as outcome = 'housed'
        """
        request = model_request(formula, table, project or self.project, family, rho, iterations, noiseless)
        result_key, public_result_key = new_result_key()
        request = request.model_copy(update={"query_id": new_call_id(), "result_key": public_result_key})
        stored = QueryKeys(request.query_id, "model", self.address, result_key)
        opened = _open(stored, self._run(stored, rpc.MODEL, request.model_dump_json().encode()))
        if not isinstance(opened, ModelResult):
            raise Fault("the coordinator answered a model with a query result; upgrade it")
        return opened

    def budget(self) -> Budget:
        """Privacy budget per node, project and dataset, for the projects you are registered on, in one
        currency, zCDP's rho (a query declared as epsilon-DP is charged rho = epsilon^2 / 2), reservations
        included:

        >>> line = next(r for r in fed.budget().rows() if r["dataset"] == "charity_south.support_episodes")
        >>> line["rho_cap"], line["rho_spent"] + line["rho_reserved"] + line["rho_remaining"] == line["rho_cap"]
        (5.0, True)
        >>> round(line["max_epsilon"] ** 2 / 2, 9) == round(line["rho_remaining"], 9)
        True
        """
        reply = self._call(rpc.BUDGET)
        return Budget(BudgetReport.model_validate_json(reply.body))

    # --- projects as a workflow -------------------------------------------------------------------
    def apply(
        self,
        id: str,
        *,
        title: str,
        purposes: Sequence[str],
        public_benefit: str,
        datasets: Mapping[str, str],
        outputs: Sequence[str],
        end_date: date | str,
        identifiers: Sequence[str] = (),
        rho: float = 0.0,
        analysts: Sequence[str] = (),
        spine_of: str | None = None,
    ) -> ProjectRecord:
        """Apply for a project: ``datasets`` maps each ``node.table`` to the legal gateway claimed for
        it (one its node declares). Every node named must be connected: each checks its own datasets.
        The answer is the stored application, pending until every node has approved it."""
        application = project_application(
            id=id,
            title=title,
            purposes=tuple(purposes),
            public_benefit=public_benefit,
            datasets=tuple({"dataset": d, "legal_gateway": g} for d, g in datasets.items()),
            outputs=tuple(outputs),
            end_date=end_date,
            identifiers=tuple(identifiers),
            rho=rho,
            analysts=tuple(analysts),
            spine_of=spine_of,
        )
        reply = self._call(rpc.PROJECT_APPLY, application.model_dump_json().encode())
        return ProjectRecord.model_validate_json(reply.body)

    def projects(self) -> list[ProjectRecord]:
        """Every project applied for at this coordinator, with its state and each node's decision."""
        reply = self._call(rpc.PROJECT_STATUS, ProjectRef(project="").model_dump_json().encode())
        return list(ProjectList.model_validate_json(reply.body).projects)

    def project_status(self, project: str) -> ProjectRecord:
        """One application's state and each node's decision, as the nodes report it now."""
        reply = self._call(rpc.PROJECT_STATUS, ProjectRef(project=project).model_dump_json().encode())
        found = ProjectList.model_validate_json(reply.body).projects
        if not found:
            raise BadInput(f"no application '{project}' at this coordinator")
        return found[0]


def project_application(**fields: Any) -> ProjectApplication:
    """A :class:`ProjectApplication` from keyword arguments; a bad value is one BadInput naming it."""
    try:
        return ProjectApplication.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = str(first["loc"][0]) if first["loc"] else "application"
        raise BadInput(f"`{where}`: {first['msg']}") from None


def model_request(
    formula: str,
    table: str,
    project: str | None,
    family: str,
    rho: float | None,
    iterations: int | None,
    noiseless: bool,
) -> ModelRequest:
    """An analyst's model request, checked here so that a mistake costs no round trip."""
    if not isinstance(formula, str) or "~" not in formula:
        raise BadInput("a model formula is a string: response ~ term + term")
    check_query_text(formula, "formula")
    if family not in ("logistic", "gaussian"):
        raise BadInput(f"unknown family '{family}'; use logistic or gaussian")
    if not project:
        raise BadInput("every model belongs to a project: pass `project=P` (or set project in your profile)")
    loss = declared_loss(rho=rho)
    if iterations is not None and not 1 <= iterations <= 50:
        raise BadInput("iterations must be between 1 and 50")
    return ModelRequest(
        formula=formula,
        table=table,
        project=project,
        family=cast(Family, family),
        iterations=iterations,
        loss=loss,
        noiseless=noiseless,
    )


def _open(
    stored: QueryKeys, reply: Message, he: AnalystKeys | None = None, chain: ChainKeys | None = None
) -> Result | ModelResult:
    """Unseal a stored or returned result with this query's keys and decrypt it (``he``/``chain``: the
    keys still in memory, else restored from ``stored``)."""
    body = open_sealed(stored.result_key, stored.query_id, reply.body)
    if reply.kind == rpc.ENCRYPTED_RESULT:
        keys = he or AnalystKeys([], restored=stored.he)
        return Result(decrypt_result(EncryptedResult.model_validate_json(body), keys))
    if reply.kind == rpc.LINKED_RESULT:
        header, cells = unpack(body)
        encrypted = LinkedEncryptedResult.model_validate_json(header)
        if chain is None:
            if stored.chain is None:
                raise Fault(f"no chain key was kept for query {stored.query_id[:8]}; its result cannot be opened")
            chain = ChainKeys(
                ChainParams.for_chain(encrypted.plan.multiplications, sums=encrypted.plan.sums), stored.chain
            )
        return Result(decrypt_linked(encrypted, cells, chain))
    if reply.kind == rpc.RESULT and stored.kind == "model":
        return ModelResult.model_validate_json(body)
    if reply.kind == rpc.RESULT:
        return Result(QueryResult.model_validate_json(body))
    raise Fault(f"the coordinator answered with '{reply.kind}', not a result; upgrade it")


def schemes_for(sql: str) -> list[Scheme]:
    """Counts need BFV; a SUM or AVG also needs CKKS (a malformed query is left to the coordinator)."""
    schemes: list[Scheme] = ["bfv"]
    try:
        tree = parse_sql(sql)
    except QueryError:
        return schemes
    if any(True for _ in tree.find_all(exp.Sum, exp.Avg)):
        schemes.append("ckks")
    return schemes


def decrypt_result(encrypted: EncryptedResult, keys: AnalystKeys) -> QueryResult:
    """Decrypt the summed ciphertexts and build the table, with the same disclosure control the
    coordinator applies to ``dp`` results (here it runs in the only process that sees the values)."""
    plan = encrypted.plan
    totals = {}
    for component in plan.components:
        values = keys.decrypt(scheme_of(component), encrypted.ciphertexts[component.key], plan.cells)
        totals[component.key] = np.round(values) if scheme_of(component) == "bfv" else values
    return build_result(
        plan,
        totals,
        query_id=encrypted.query_id,
        project=encrypted.project,
        pet=encrypted.pet,
        noise=encrypted.noise,
        noiseless=encrypted.noiseless,
        privacy_loss=encrypted.privacy_loss,
        policy=encrypted.policy,
    )


def decrypt_linked(encrypted: LinkedEncryptedResult, cells: list[bytes], keys: ChainKeys) -> QueryResult:
    """Decrypt each masked cell (the sum of its slots is the noisy aggregate) and build the table."""
    plan = encrypted.plan
    components = plan.components
    if len(cells) != len(components) * plan.cells:
        raise Fault("the linked result has the wrong number of cells; nothing to decrypt")
    totals = {}
    for i, component in enumerate(components):
        blobs = cells[i * plan.cells : (i + 1) * plan.cells]
        unit = encrypted.units.get(component.key, 1.0)
        totals[component.key] = np.array([keys.total(blob) for blob in blobs], dtype=float) * unit
    result = build_result(
        plan,
        totals,
        query_id=encrypted.query_id,
        project=encrypted.project,
        pet=encrypted.pet,
        noise=encrypted.noise,
        noiseless=encrypted.noiseless,
        privacy_loss=encrypted.privacy_loss,
        policy=encrypted.policy,
    )
    notes = [*result.notes, "linked: one row per person in the link spine; linkage error is not in the intervals"]
    if encrypted.linkage is None:
        notes.append(encrypted.linkage_note or "linkage quality: not released")
    return result.model_copy(update={"linkage": encrypted.linkage, "notes": tuple(notes)})


def connect(
    coordinator: str | None = None,
    *,
    cert: str | Path | None = None,
    key: str | Path | None = None,
    ca: str | Path | None = None,
    profile: str | Path | None = None,
    project: str | None = None,
    server_name: str | None = None,
    timeout_s: float | None = None,
    results_dir: str | Path | None = None,
) -> Federation:
    """Connect to a federation, either with explicit certificate files or with an analyst profile.
    ``results_dir``: where each query's keys are kept (see :class:`Federation`).

    >>> fed = fedlink.connect(address, cert=pki / "analyst-demo-analyst.crt",
    ...                       key=pki / "analyst-demo-analyst.key", ca=pki / "ca.crt")
    >>> fed.tls.identity().name
    'demo-analyst'
    >>> fedlink.connect(address, cert=pki / "node-dfe.crt", key=pki / "node-dfe.key", ca=pki / "ca.crt")
    Traceback (most recent call last):
    fedlink.errors.ConfigError: ...node-dfe.crt is a certificate for node 'dfe'; analysts need one from ...

    With a profile (``fedlink demo`` writes one to ``.fedlink/analyst.toml``):
    ``fed = fedlink.connect(profile=".fedlink/analyst.toml")``.
    """
    if coordinator is None:
        loaded: AnalystProfile = load_profile(find_profile(Path(profile) if profile else None))
        return _checked(
            Federation(
                address=loaded.address,
                tls=loaded.tls_files(),
                server_name=server_name or loaded.coordinator_name,
                project=project or loaded.project,
                timeout_s=timeout_s or loaded.timeout_s,
                results_dir=Path(results_dir) if results_dir else None,
            )
        )
    missing = [name for name, value in (("cert", cert), ("key", key), ("ca", ca)) if value is None]
    if missing:
        raise ConfigError(
            f"connecting to {coordinator} needs {', '.join(missing)}: an analyst certificate from "
            "`fedlink pki issue --role analyst --name NAME` and the federation CA"
        )
    tls = TlsFiles(Path(str(cert)), Path(str(key)), Path(str(ca)))
    return _checked(
        Federation(
            coordinator, tls, server_name, project, timeout_s or 120.0, Path(results_dir) if results_dir else None
        )
    )


def _checked(federation: Federation) -> Federation:
    timeout = federation.timeout_s
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 604_800:
        raise BadInput(f"timeout_s must be a number of seconds above 0 and at most a week (604800), not {timeout!r}")
    identity = federation.tls.checked()  # expired, another CA's, a wrong key: refused here, by name
    if identity.role != "analyst":
        raise ConfigError(
            f"{federation.tls.cert} is a certificate for {identity}; analysts need one from "
            "`fedlink pki issue --role analyst --name NAME`"
        )
    return federation
