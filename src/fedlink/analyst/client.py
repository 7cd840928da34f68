"""The analyst's Python API: connect to a federation, read its catalogue, run aggregate queries.

The ``fedlink`` CLI is a thin layer over this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import numpy as np
from pydantic import ValidationError
from sqlglot import exp

from fedlink.analyst.profile import AnalystProfile, find_profile, load_profile
from fedlink.analyst.result import Budget, Catalogue, RegisterView, Result
from fedlink.errors import BadInput, ConfigError, Fault, QueryError
from fedlink.linkage.messages import LinkCall, LinkMode, LinkReport
from fedlink.pets.chain import ChainKeys
from fedlink.pets.he import AnalystKeys, Scheme
from fedlink.query.catalogue import FederationCatalogue
from fedlink.query.linked import is_linked, plan_linked
from fedlink.query.model import Family
from fedlink.query.results import EncryptedResult, LinkedEncryptedResult, QueryResult, build_result, scheme_of
from fedlink.query.sql import check_name, check_query_text, parse_sql
from fedlink.query.tasks import BudgetReport, ModelRequest, ModelResult, Pet, QueryRequest, declared_loss
from fedlink.wire import rpc
from fedlink.wire.blobs import unpack
from fedlink.wire.transport import (
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
    """A connection to a federation's coordinator as one analyst (identified by certificate)."""

    address: str
    tls: TlsFiles
    server_name: str | None = None
    project: str | None = None
    timeout_s: float = 120.0

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
            raise BadInput(f"unknown --pet '{pet}'; use he+dp (default: encrypted aggregation) or dp")
        loss = declared_loss(epsilon, rho)
        try:
            request = QueryRequest(sql=sql, project=project or self.project or "", loss=loss, noiseless=noiseless)
        except ValidationError as exc:
            raise BadInput(f"invalid query request ({exc.errors()[0]['msg']})") from exc
        if not request.project:
            raise BadInput("every query belongs to a project: pass --project P (or set project in your profile)")
        if is_linked(sql):
            return self._linked_query(request.model_copy(update={"pet": pet}))
        keys = None
        if pet == "he+dp":
            # A fresh key pair per query; only the public contexts leave this process.
            keys = AnalystKeys(_schemes_for(sql))
            request = request.model_copy(update={"pet": pet, "contexts": keys.public_contexts()})
        else:
            request = request.model_copy(update={"pet": pet})
        reply = self._call(rpc.QUERY, request.model_dump_json().encode())
        if reply.kind == rpc.ENCRYPTED_RESULT:
            if keys is None:
                raise Fault("the coordinator sent an encrypted result for a query that asked for none")
            return Result(decrypt_result(EncryptedResult.model_validate_json(reply.body), keys))
        return Result(QueryResult.model_validate_json(reply.body))

    def _linked_query(self, request: QueryRequest) -> Result:
        """A LINK query: planned here first (so a bad query costs nothing and the key fits the chain),
        then run by the encrypted chain; only this process can decrypt the masked cells."""
        if request.pet != "he+dp":
            raise BadInput("linked queries always run encrypted (he+dp); drop --pet dp")
        catalogue = FederationCatalogue.model_validate_json(self._call(rpc.CATALOGUE).body)
        plan = plan_linked(request.sql, catalogue)
        keys = ChainKeys(plan.params)
        reply = self._call(
            rpc.QUERY, request.model_copy(update={"link_key": keys.public_key()}).model_dump_json().encode()
        )
        if reply.kind != rpc.LINKED_RESULT:
            raise Fault("the coordinator did not answer a linked query with a linked result; upgrade it")
        header, cells = unpack(reply.body)
        return Result(decrypt_linked(LinkedEncryptedResult.model_validate_json(header), cells, keys))

    def register(self) -> RegisterView:
        """The coordinator's transparency register: every project and query on the public record,
        and whether its hash chain verifies.

        >>> reg = fed.register()
        >>> reg.verified, reg.entries("project")[0]["fields"]["id"]
        (True, 'deprivation-mental-health')
        """
        reply = self._call(rpc.REGISTER)
        return RegisterView(json.loads(reply.body))

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
        (0.1, 6, 1.0)
        """
        chosen = project or self.project
        if not chosen:
            raise BadInput("linkage belongs to a project: pass --project P (or set project in your profile)")
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
        read. Coefficients come back on the columns' own scale, with standard errors (sampling error;
        the DP noise comes on top: ``noise_sd`` says how much each node added per statistic):

        >>> fit = fed.fit("outcome = 'housed' ~ episode_type = 'rough_sleeping' + duration_days",
        ...               table="support_episodes", project="homelessness-outcomes", rho=1.5, iterations=2)
        >>> fit.labels
        ('(intercept)', "episode_type = 'rough_sleeping'", 'duration_days')
        >>> fit.pet, fit.privacy_loss["charity_north"].rho, sorted(fit.noise_sd)
        ('secagg+dp', 1.5, ['charity_north', 'charity_south'])
        >>> [row["term"] for row in fit.table_rows()][1], sorted(fit.table_rows()[1])
        ("episode_type = 'rough_sleeping'", ['estimate', 'lower', 'std_error', 'term', 'upper', 'z'])

        Logistic fits take ``iterations`` Newton steps (default 8; each costs rho / iterations), a
        gaussian (linear) fit one. Bad formulas are refused before any budget is spent:

        >>> fed.fit("outcome ~ duration_days", table="support_episodes", project="homelessness-outcomes", rho=1)
        Traceback (most recent call last):
        fedlink.errors.QueryError: 'outcome' is a category of text; use an indicator such as outcome = 'housed'
        """
        request = model_request(formula, table, project or self.project, family, rho, iterations, noiseless)
        reply = self._call(rpc.MODEL, request.model_dump_json().encode())
        return ModelResult.model_validate_json(reply.body)

    def budget(self) -> Budget:
        """Privacy budget per node, project and dataset, for the projects you are registered on.

        >>> line = next(r for r in fed.budget().rows() if r["dataset"] == "charity_south.support_episodes")
        >>> line["epsilon_cap"], line["epsilon_spent"] + line["epsilon_remaining"] == line["epsilon_cap"]
        (10.0, True)
        """
        reply = self._call(rpc.BUDGET)
        return Budget(BudgetReport.model_validate_json(reply.body))


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
        raise BadInput("every model belongs to a project: pass --project P (or set project in your profile)")
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


def _schemes_for(sql: str) -> list[Scheme]:
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
) -> Federation:
    """Connect to a federation, either with explicit certificate files or with an analyst profile.

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
            )
        )
    missing = [name for name, value in (("cert", cert), ("key", key), ("ca", ca)) if value is None]
    if missing:
        raise ConfigError(
            f"connecting to {coordinator} needs {', '.join(missing)}: an analyst certificate from "
            "`fedlink pki issue --role analyst --name NAME` and the federation CA"
        )
    tls = TlsFiles(Path(str(cert)), Path(str(key)), Path(str(ca)))
    return _checked(Federation(coordinator, tls, server_name, project, timeout_s or 120.0))


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
