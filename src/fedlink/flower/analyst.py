"""The analyst's side of fedlink on Flower: :class:`FlowerFederation` makes fresh HE keys for a query,
hands the request (public contexts only) to ``flwr run`` for fedlink's ServerApp, reads the encrypted
answer from the run's streamed log (or, when the stream closed first, its stored log) and decrypts it
here, exactly as :class:`fedlink.Federation` does over fedlink's own transport."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from fedlink.analyst.client import decrypt_result, model_request, schemes_for
from fedlink.analyst.result import Result
from fedlink.errors import BadInput, ConfigError, Fault, Timeout, error_from_code
from fedlink.language.sql import check_query_text
from fedlink.pets.he import AnalystKeys
from fedlink.plan.model import Family
from fedlink.protocol.results import EncryptedResult, QueryResult
from fedlink.protocol.tasks import ModelResult, QueryRequest, declared_loss

#: Flower's telemetry and update checks off, for every Flower process fedlink starts.
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
_MARK = "FEDLINK-RESULT "
#: How ``flwr run`` names the run it started (in its streamed output), and ANSI colour codes to strip first.
_RUN_ID = re.compile(r"run(?:_id| ID)?\s*`?(\d+)`?")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LOG_TRIES = 6
_LOG_PAUSE_S = 0.5
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def bundle_dir() -> Path:
    """The Flower App folder (``flwr run`` builds it into a FAB)."""
    return Path(__file__).parent / "bundle"


def write_flower_config(path: Path, superlink: str, insecure: bool, root_certificates: Path | None) -> None:
    """Flower's ``config.toml`` naming one SuperLink connection, ``fedlink``, as the default."""
    connection: dict[str, object] = {"address": superlink}
    if insecure:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(root_certificates)
    document = {"superlink": {"default": "fedlink", "fedlink": connection}}
    path.write_text(tomli_w.dumps(document), encoding="utf-8")


def write_run_config(path: Path, packed_request: str, projects: Path, register: Path, test_mode: bool) -> None:
    """The ``--run-config`` file handing a request and the coordinator's files to fedlink's ServerApp."""
    document = {
        "fedlink-request": packed_request,
        "fedlink-projects": str(projects),
        "fedlink-register": str(register),
        "fedlink-test-mode": test_mode,
    }
    path.write_text(tomli_w.dumps(document), encoding="utf-8")


class FlowerFederation:
    """An analyst's connection to fedlink running on a Flower SuperLink.

    ``superlink`` is the SuperLink's Control API address (``host:port``); ``insecure`` only for tests
    on loopback, otherwise ``root_certificates`` names the CA that signed the SuperLink's certificate.
    ``projects`` and ``register`` are the coordinator's project registry and transparency register on
    the SuperLink's machine (the ServerApp reads and appends them there).
    """

    def __init__(
        self,
        superlink: str,
        *,
        analyst: str,
        projects: Path,
        register: Path,
        insecure: bool = False,
        root_certificates: Path | None = None,
        test_mode: bool = False,
        timeout_s: float = 600.0,
        flwr: str | None = None,
    ) -> None:
        if not insecure and root_certificates is None:
            raise BadInput("connect to a SuperLink over TLS (root_certificates=...) or, in tests only, insecure=True")
        host = superlink.rsplit(":", 1)[0].strip("[]")
        if insecure and host not in _LOOPBACK:
            raise BadInput(
                f"insecure (no TLS) is only for tests on loopback, not {host}; give the SuperLink's CA as "
                "`root_certificates`"
            )
        self.superlink, self.analyst = superlink, analyst
        self.projects, self.register = Path(projects), Path(register)
        self.insecure, self.root_certificates = insecure, root_certificates
        self.test_mode, self.timeout_s = test_mode, timeout_s
        self.flwr = flwr or shutil.which("flwr") or str(Path(sys.executable).parent / "flwr")
        if not Path(self.flwr).exists():
            raise ConfigError("the flwr command is not installed: pip install 'fedlink[flower]'")

    def query(
        self,
        sql: str,
        *,
        project: str,
        epsilon: float | None = None,
        rho: float | None = None,
        noiseless: bool = False,
        pet: str = "he+dp",
    ) -> Result:
        """An encrypted (he+dp) aggregate query run by fedlink's ServerApp on the Flower federation; ``pet``
        is accepted for the same call shape as :meth:`fedlink.Federation.query`, and only he+dp runs."""
        if pet != "he+dp":
            raise BadInput("over Flower, queries run encrypted: drop `pet` or pass `pet=he+dp`")
        check_query_text(sql)
        loss = declared_loss(epsilon, rho)
        try:
            request = QueryRequest(sql=sql, project=project, loss=loss, noiseless=noiseless, pet="he+dp")
        except ValidationError as exc:
            raise BadInput(f"invalid query request ({exc.errors()[0]['msg']})") from exc
        keys = AnalystKeys(schemes_for(sql))  # fresh per query; only the public contexts leave
        request = request.model_copy(update={"contexts": keys.public_contexts()})
        answer = self.run({"analyst": self.analyst, "query": request.model_dump(mode="json")})
        if answer.get("kind") == "encrypted":
            return Result(decrypt_result(EncryptedResult.model_validate(answer["result"]), keys))
        return Result(QueryResult.model_validate(answer["result"]))

    def fit(
        self,
        formula: str,
        *,
        table: str,
        project: str,
        family: Family = "logistic",
        rho: float | None = None,
        iterations: int | None = None,
        noiseless: bool = False,
    ) -> ModelResult:
        """A federated logistic or linear regression fitted by fedlink's ServerApp over the SuperNodes
        (see :meth:`fedlink.Federation.fit`): Newton-Raphson rounds over Flower's Grid on the nodes'
        noisy statistics under pairwise masks."""
        request = model_request(formula, table, project, family, rho, iterations, noiseless)
        answer = self.run({"analyst": self.analyst, "model": request.model_dump(mode="json")})
        if answer.get("kind") != "model":
            raise Fault("the Flower run did not answer the model request with a model; check both run one fedlink")
        return ModelResult.model_validate(answer["result"])

    def _stored_log(self, streamed: str, env: dict[str, str], deadline: float) -> str:
        """The run's log as the SuperLink stored it, read with ``flwr log RUN --show`` when the stream closed
        without fedlink's answer. Flower ends a stream once the run is marked finished, and a ServerApp under
        load may upload its last lines (the answer) just after that; they are stored, only not streamed.
        Tries a few times, half a second apart, within the run's deadline; empty when the run id is unknown."""
        found = _RUN_ID.search(_ANSI.sub("", streamed))
        if found is None:
            return ""
        command = [self.flwr, "log", found.group(1), "--show"]
        for attempt in range(_LOG_TRIES):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            shown = subprocess.run(command, capture_output=True, text=True, env=env, timeout=left)
            if _MARK in shown.stdout:
                return shown.stdout
            if attempt + 1 < _LOG_TRIES:
                time.sleep(min(_LOG_PAUSE_S, max(0.0, deadline - time.monotonic())))
        return ""

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """One ``flwr run`` of fedlink's ServerApp with ``request``; its answer, or its error raised."""
        from fedlink.flower.apps import pack_json, unpack_json

        with tempfile.TemporaryDirectory(prefix="fedlink-flwr-") as folder:
            home = Path(folder) / "flwr"
            home.mkdir()
            write_flower_config(home / "config.toml", self.superlink, self.insecure, self.root_certificates)
            run_config = Path(folder) / "run.toml"
            write_run_config(run_config, pack_json(request), self.projects, self.register, self.test_mode)
            env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(home)}
            command = [self.flwr, "run", str(bundle_dir()), "fedlink", "--stream", "--run-config", str(run_config)]
            deadline = time.monotonic() + self.timeout_s
            try:
                done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=self.timeout_s)
                output = done.stdout
                if _MARK not in output:
                    output += self._stored_log(output, env, deadline)
            except subprocess.TimeoutExpired as exc:
                raise Timeout(f"the Flower run did not finish within {self.timeout_s:g} s; see `flwr log`") from exc
        lines = [line for line in output.splitlines() if _MARK in line]
        if not lines:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise Fault(f"the Flower run gave no fedlink answer ({tail[0][:200]}); check the SuperLink and its nodes")
        answer = unpack_json(lines[-1].split(_MARK, 1)[1].strip())
        if not answer.get("ok"):
            raise error_from_code(str(answer.get("code")), str(answer.get("message")))
        return answer
