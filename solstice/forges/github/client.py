"""HTTP calls of the GitHub runner protocol, with ``requests`` (protocol §2-§7).

Three clients, one per credential:

* :class:`RegistrationClient`: the GitHub REST API and the pipelines tenant, authorised by a
  registration (or remove) token (§3);
* :class:`RunnerClient`: the broker and the run service's acquirejob, with the runner's OAuth
  token from a :class:`~solstice.forges.github.auth.TokenSource` (§4-§6.1);
* :class:`JobClient`: renew/complete and the results service, with the job's own token (§6-§7).

Errors (§5.2, §6.1, §12, §13.5; read from the body's ``errorKind``/``statusCode`` first, the HTTP
status is a hint): ``RegistrationGone`` (runner deleted, or a second 401 after renewing the
token once), ``SessionConflict``, ``SessionInvalid``, ``VersionTooOld``, ``JobGone`` (acquire
404/409/422), ``LeaseLost`` (renew/complete 404), ``ForgeUnavailable`` (connection errors,
timeouts, 5xx, 429) and ``ForgeError`` for anything else. Tokens and keys are never logged and
never part of an error message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from solstice.backoff import Backoff
from solstice.forges.core.errors import ForgeError, ForgeUnavailable, RegistrationGone
from solstice.forges.github import auth
from solstice.forges.github import messages as m
from solstice.forges.github.errors import JobGone, LeaseLost, SessionConflict, SessionInvalid, VersionTooOld

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The official release this runner reports (§5.2: the broker refuses versions ~30 days after a
#: newer release). Configurable, because it must follow GitHub's releases.
DEFAULT_RUNNER_VERSION = "2.336.0"
PIPELINES_API = "6.0-preview.2"  # agents (§2 table); pools accept it as well
LONG_POLL_TIMEOUT = 100.0  # R's default HTTP timeout; the server holds a poll ~50-57 s (§5.2)
ACK_TIMEOUT = 5.0  # R: best effort (§5.3)
BLOCK_SIZE = 2 * 1024 * 1024  # R Logging.cs BlockSize (§7.1)
RESULTS_RECEIVER = "twirp/results.services.receiver.Receiver/"
STEPS_UPDATE = "twirp/github.actions.results.api.v1.WorkflowStepUpdateService/WorkflowStepsUpdate"

_GONE_KINDS = {"runnernotfound", "hostedrunnerdeprovisioned"}
#: Calls made with the job's token, not the runner's: a 401 there says nothing about the runner.
_JOB_PROCEDURES = {
    "renewjob",
    "completejob",
    "WorkflowStepsUpdate",
    "GetStepLogsSignedBlobURL",
    "GetJobLogsSignedBlobURL",
    "CreateStepLogsMetadata",
    "CreateJobLogsMetadata",
}


def timestamp(when: datetime | None = None) -> str:
    """The results service's ``yyyy-MM-dd'T'HH:mm:ss.fffK`` in UTC (§7.1)."""
    t = (when or datetime.now(UTC)).astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class ErrorBody:
    """What a broker/run-service/pipelines error body says (any field may be empty)."""

    kind: str = ""  # broker/run service `errorKind`, pipelines `typeKey`
    status: int = 0  # the body's `statusCode`
    message: str = ""
    source: str = ""


def read_error(resp: requests.Response) -> ErrorBody:
    try:
        data = resp.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return ErrorBody(message=resp.text[:200].strip())
    f = m.Fields(data, "error")
    try:
        status = f.integer("statusCode", default=0)
    except m.CodecError:
        status = 0
    return ErrorBody(
        kind=f.text("errorKind", "typeKey", default=""),
        status=status,
        message=f.text("errorMessage", "message", "error_description", default="")[:500],
        source=f.text("source", default=""),
    )


def classify(procedure: str, resp: requests.Response) -> ForgeError:
    """The typed error for a failed call (see the module docstring)."""
    body = read_error(resp)
    status = body.status or resp.status_code
    kind = body.kind.lower()
    text = body.message or f"HTTP {resp.status_code}"
    what = f"{procedure}: {text}" + (
        f" ({body.kind}, HTTP {resp.status_code})" if body.kind else f" (HTTP {resp.status_code})"
    )
    kw: dict[str, Any] = {"status": resp.status_code, "code": body.kind, "procedure": procedure}
    if kind in _GONE_KINDS:
        return RegistrationGone(what, **kw)
    if kind == "runnerversiontooold":
        return VersionTooOld(what, **kw)
    if kind == "runnersessioninvalid":
        return SessionInvalid(what, **kw)
    if kind == "acknowledgejobnotfound":
        return JobGone(what, **kw)
    if "sessionconflict" in kind or (procedure == "create session" and status == 409):
        return SessionConflict(what, **kw)
    if procedure == "acquirejob" and status in (404, 409, 422):
        return JobGone(what, **kw)
    if procedure in ("renewjob", "completejob") and status == 404:
        return LeaseLost(what, **kw)
    if "agentnotfound" in kind or "runnernotfound" in kind:
        return RegistrationGone(what, **kw)
    if procedure in _JOB_PROCEDURES and status in (401, 403):
        return LeaseLost(what, **kw)  # the job's own token was refused: the job is over server-side
    if status == 401 or resp.status_code == 401:
        return RegistrationGone(what, **kw)
    if status >= 500 or status == 429:
        return ForgeUnavailable(what, **kw)
    return ForgeError(what, **kw)


class _Transport:
    """One ``requests`` session; maps connection failures and timeouts to ForgeUnavailable."""

    def __init__(self, session: requests.Session | None, timeout: float, user_agent: str) -> None:
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = user_agent
        self.timeout = timeout

    def close(self) -> None:
        self.session.close()

    def send(
        self,
        method: str,
        url: str,
        procedure: str,
        *,
        bearer: str = "",
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        h = dict(headers or {})
        if bearer:
            h["Authorization"] = f"Bearer {bearer}"
        t = self.timeout if timeout is None else timeout
        try:
            return self.session.request(method, url, headers=h, timeout=t, **kwargs)
        except requests.Timeout:
            raise ForgeUnavailable(f"{procedure}: no answer within {t:g} s", procedure=procedure) from None
        except requests.ConnectionError as exc:
            raise ForgeUnavailable(
                f"{procedure}: cannot connect to {urlsplit(url).netloc} ({type(exc).__name__})",
                procedure=procedure,
            ) from None
        except requests.RequestException as exc:
            raise ForgeError(f"{procedure}: {type(exc).__name__}", procedure=procedure) from None

    def json(
        self, method: str, url: str, procedure: str, *, ok: tuple[int, ...] = (200, 201), **kwargs: Any
    ) -> Any:
        resp = self.send(method, url, procedure, **kwargs)
        if resp.status_code not in ok:
            raise classify(procedure, resp)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise ForgeError(
                f"{procedure}: the answer is not JSON", status=resp.status_code, procedure=procedure
            ) from None


def _decode(procedure: str, build: Callable[[], T]) -> T:
    try:
        return build()
    except m.CodecError as exc:
        raise ForgeError(f"{procedure}: unexpected answer: {exc}", procedure=procedure) from None


# --- registration (§3) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunnerScope:
    """Where a runner is registered: ``github_url`` (repo, org or enterprise page), the REST API
    base and the REST path prefix (``repos/o/r``, ``orgs/o`` or ``enterprises/e``)."""

    github_url: str
    api_url: str
    path: str

    @classmethod
    def from_url(cls, github_url: str, api_url: str = "") -> RunnerScope:
        parts = urlsplit(github_url)
        segs = [s for s in parts.path.split("/") if s]
        if len(segs) == 2 and segs[0] == "enterprises":
            path = f"enterprises/{segs[1]}"
        elif len(segs) == 2:
            path = f"repos/{segs[0]}/{segs[1]}"
        elif len(segs) == 1:
            path = f"orgs/{segs[0]}"
        else:
            raise ForgeError(f"{github_url} names no repository, organisation or enterprise")
        if not api_url:  # github.com's API has its own host; GHES serves it under /api/v3 (§3.1)
            host = parts.netloc.lower()
            base = (
                "https://api.github.com"
                if host in ("github.com", "www.github.com")
                else (f"{parts.scheme}://{parts.netloc}/api/v3")
            )
            api_url = base
        return cls(github_url=github_url.rstrip("/"), api_url=api_url.rstrip("/"), path=path)


@dataclass(frozen=True)
class Enrolment:
    """What a registration yields: the official runner's .runner and .credentials."""

    settings: m.RunnerSettings
    credentials: m.OAuthCredentials


def system_labels(os_name: str, arch: str, extra: list[str]) -> tuple[m.Label, ...]:
    labels = [m.Label("self-hosted", "system"), m.Label(os_name, "system"), m.Label(arch, "system")]
    taken = {label.name.lower() for label in labels}
    return tuple(labels + [m.Label(n) for n in extra if n.lower() not in taken])


class RegistrationClient:
    """Registration and removal, with a registration/remove token (§3.1-§3.4)."""

    def __init__(
        self,
        scope: RunnerScope,
        *,
        session: requests.Session | None = None,
        timeout: float = 30.0,
        user_agent: str = "solstice-ci",
    ) -> None:
        self.scope = scope
        self.http = _Transport(session, timeout, user_agent)

    def close(self) -> None:
        self.http.close()

    def _rest(self, method: str, path: str, procedure: str, token: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"RemoteAuth {token}", "Accept": "application/json"}
        try:
            return self.http.json(
                method, f"{self.scope.api_url}/{path}", procedure, headers=headers, **kwargs
            )
        except RegistrationGone as exc:
            exc.hint = (
                "the registration or remove token is wrong or expired (they last one hour): get a new one"
            )
            raise

    def _pipelines(self, method: str, url: str, procedure: str, bearer: str, **kwargs: Any) -> Any:
        media = f"application/json; api-version={PIPELINES_API}"
        headers = {"Accept": media, "Content-Type": media, "X-TFS-FedAuthRedirect": "Suppress"}
        return self.http.json(method, url, procedure, bearer=bearer, headers=headers, **kwargs)

    def tenant_credential(self, token: str, event: str = "register") -> m.TenantCredential:
        """§3.2: ``runner_event`` is "register" or "remove"."""
        body = {"url": self.scope.github_url, "runner_event": event}
        data = self._rest("POST", "actions/runner-registration", "runner-registration", token, json=body)
        cred: m.TenantCredential = _decode("runner-registration", lambda: m.TenantCredential.from_dict(data))
        if cred.token_schema != "OAuthAccessToken":
            raise ForgeError(f"runner-registration: unsupported token schema {cred.token_schema!r}")
        return cred

    def service_locations(self, tenant: m.TenantCredential) -> dict[str, str]:
        """The location service (anonymous, §2, §13.16): resource GUID -> route template. The
        calls below use the spec's fixed templates, which this lets a caller check."""
        url = f"{tenant.url}_apis/connectionData"
        params = {"connectOptions": "0", "lastChangeId": "-1", "lastChangeId64": "-1"}
        data = self.http.json(
            "GET",
            url,
            "connectionData",
            params=params,
            headers={"Accept": "application/json; api-version=1.0"},
        )
        location = m.Fields(data, "connectionData").child("locationServiceData")
        assert location is not None
        return {
            m.Fields(d, "serviceDefinition").text("identifier").lower(): m.Fields(
                d, "serviceDefinition"
            ).text("relativePath", default="")
            for d in location.items("serviceDefinitions")
        }

    def pools(self, tenant: m.TenantCredential) -> list[m.RunnerGroup]:
        url = f"{tenant.url}_apis/distributedtask/pools"
        data = self._pipelines("GET", url, "pools", tenant.token, params={"poolType": "Automation"})
        values = m.Fields(data, "pools").items("value")
        return _decode(
            "pools", lambda: [m.RunnerGroup.from_dict(v, f"pools.value[{i}]") for i, v in enumerate(values)]
        )

    def default_pool(self, tenant: m.TenantCredential) -> m.RunnerGroup:
        """The internal group, never a hosted one (§3.3)."""
        pools = [p for p in self.pools(tenant) if not p.is_hosted]
        for pool in pools:
            if pool.is_default:
                return pool
        if not pools:
            raise ForgeError("pools: the server lists no self-hosted runner group")
        return pools[0]

    def find_agents(self, tenant: m.TenantCredential, pool_id: int, name: str) -> list[m.Agent]:
        url = f"{tenant.url}_apis/distributedtask/pools/{pool_id}/agents"
        data = self._pipelines("GET", url, "agents", tenant.token, params={"agentName": name})
        values = m.Fields(data, "agents").items("value")
        return _decode(
            "agents", lambda: [m.Agent.from_dict(v, f"agents.value[{i}]") for i, v in enumerate(values)]
        )

    def add_agent(self, tenant: m.TenantCredential, pool_id: int, agent: m.AgentRegistration) -> m.Agent:
        """POST, or PUT when ``agent.agent_id`` names a runner to replace (§3.3)."""
        url = f"{tenant.url}_apis/distributedtask/pools/{pool_id}/agents"
        method = "POST"
        if agent.agent_id:
            method, url = "PUT", f"{url}/{agent.agent_id}"
        data = self._pipelines(method, url, "add agent", tenant.token, json=agent.to_dict())
        return _decode("add agent", lambda: m.Agent.from_dict(data))

    def delete_agent(self, tenant: m.TenantCredential, agent_id: int) -> None:
        # pool 0: "agentPool is ignored server side" (§13.14)
        url = f"{tenant.url}_apis/distributedtask/pools/0/agents/{agent_id}"
        self._pipelines("DELETE", url, "delete agent", tenant.token, ok=(200, 204))

    def runner_groups(self, token: str) -> list[m.RunnerGroup]:
        data = self._rest("GET", f"{self.scope.path}/actions/runner-groups", "runner-groups", token)
        groups = m.Fields(data, "runner-groups").items("runner_groups")
        return _decode(
            "runner-groups",
            lambda: [m.RunnerGroup.from_dict(g, f"runner_groups[{i}]") for i, g in enumerate(groups)],
        )

    def find_runner_ids(self, token: str, name: str) -> list[int]:
        data = self._rest(
            "GET", f"{self.scope.path}/actions/runners", "runners", token, params={"name": name}
        )
        runners = m.Fields(data, "runners").items("runners")
        return _decode(
            "runners",
            lambda: [
                m.Fields(r, "runner").integer("id")
                for r in runners
                if m.Fields(r, "runner").text("name", default="") == name
            ],
        )

    def register_admin(self, token: str, body: m.AdminRegistration) -> m.AdminRunner:
        data = self._rest("POST", "actions/runners/register", "register runner", token, json=body.to_dict())
        return _decode("register runner", lambda: m.AdminRunner.from_dict(data))

    def delete_runner(self, token: str, runner_id: int) -> None:
        self._rest(
            "DELETE", f"{self.scope.path}/actions/runners/{runner_id}", "delete runner", token, ok=(200, 204)
        )

    def register(
        self,
        token: str,
        *,
        name: str,
        key: rsa.RSAPrivateKey,
        labels: list[str],
        version: str = DEFAULT_RUNNER_VERSION,
        os_name: str = "Linux",
        arch: str = "X64",
        os_description: str = "Linux",
        ephemeral: bool = False,
        replace: bool = False,
    ) -> Enrolment:
        """Exchange the registration token, then take the flow the server chose (§3.2)."""
        tenant = self.tenant_credential(token)
        all_labels = system_labels(os_name, arch, labels)
        if tenant.use_v2_flow:
            return self._register_admin(token, name, key, all_labels, version, ephemeral, replace)
        pool = self.default_pool(tenant)
        existing = [a for a in self.find_agents(tenant, pool.id, name) if a.name == name]
        if existing and not replace:
            raise ForgeError(
                f"a runner named {name!r} already exists", code="NameTaken", procedure="add agent"
            )
        exponent, modulus = auth.public_key_parts(key)
        agent = self.add_agent(
            tenant,
            pool.id,
            m.AgentRegistration(
                name=name,
                version=version,
                os_description=os_description,
                labels=all_labels,
                exponent=exponent,
                modulus=modulus,
                ephemeral=ephemeral,
                agent_id=existing[0].id if existing else 0,
            ),
        )
        if not agent.authorization_url or not agent.client_id:
            raise ForgeError("add agent: the answer has no authorization URL or client id")
        settings = m.RunnerSettings(
            agent_id=agent.id,
            agent_name=agent.name or name,
            server_url=tenant.url,
            github_url=self.scope.github_url,
            pool_id=pool.id,
            pool_name=pool.name,
            ephemeral=ephemeral,
            use_v2_flow=agent.use_v2_flow or bool(agent.server_url_v2),
            server_url_v2=agent.server_url_v2,
        )
        # requireFipsCryptography defaults to True when the server omits it (§3.5)
        fips = True if agent.require_fips is None else agent.require_fips
        creds = m.OAuthCredentials(
            client_id=agent.client_id, authorization_url=agent.authorization_url, require_fips=fips
        )
        return Enrolment(settings, creds)

    def _register_admin(
        self,
        token: str,
        name: str,
        key: rsa.RSAPrivateKey,
        labels: tuple[m.Label, ...],
        version: str,
        ephemeral: bool,
        replace: bool,
    ) -> Enrolment:
        groups = [g for g in self.runner_groups(token) if not g.is_hosted]
        group = next((g for g in groups if g.is_default), groups[0] if groups else None)
        if group is None:
            raise ForgeError("runner-groups: no self-hosted runner group")
        existing = self.find_runner_ids(token, name)
        if existing and not replace:
            raise ForgeError(
                f"a runner named {name!r} already exists", code="NameTaken", procedure="register runner"
            )
        runner = self.register_admin(
            token,
            m.AdminRegistration(
                url=self.scope.github_url,
                group_id=group.id,
                name=name,
                version=version,
                labels=labels,
                public_key_xml=auth.public_key_xml(key),
                ephemeral=ephemeral,
                replace_id=existing[0] if existing else 0,
            ),
        )
        # legacy_authorization_url present: auth migration, keep the new URL as V2 (§3.4)
        creds = m.OAuthCredentials(
            client_id=runner.client_id,
            authorization_url=runner.legacy_authorization_url or runner.authorization_url,
            authorization_url_v2=runner.authorization_url if runner.legacy_authorization_url else "",
            require_fips=True,
        )
        settings = m.RunnerSettings(
            agent_id=runner.id,
            agent_name=runner.name or name,
            server_url="",
            github_url=self.scope.github_url,
            pool_id=group.id,
            pool_name=group.name,
            ephemeral=ephemeral,
            use_v2_flow=True,
            server_url_v2=runner.server_url,
            use_runner_admin_flow=True,
        )
        return Enrolment(settings, creds)

    def unregister(self, settings: m.RunnerSettings, remove_token: str) -> None:
        """Delete the runner on the server with a remove token (§3.1, §3.4)."""
        if settings.use_runner_admin_flow:
            self.delete_runner(remove_token, settings.agent_id)
            return
        tenant = self.tenant_credential(remove_token, event="remove")
        self.delete_agent(tenant, settings.agent_id)


# --- broker and acquire (§5, §6.1) --------------------------------------------------------------


class RunnerClient:
    """The runner's calls with its OAuth token. A 401 renews the token once; a second 401 is
    RegistrationGone (R does not loop on 401, §12)."""

    def __init__(
        self,
        settings: m.RunnerSettings,
        tokens: auth.TokenSource,
        *,
        version: str = DEFAULT_RUNNER_VERSION,
        os_name: str = "Linux",
        arch: str = "X64",
        session: requests.Session | None = None,
        timeout: float = 30.0,
        poll_timeout: float = LONG_POLL_TIMEOUT,
        user_agent: str = "solstice-ci",
    ) -> None:
        if not settings.server_url_v2:
            raise ForgeError(
                "this registration has no broker URL (the legacy pipelines queue is not supported)"
            )
        self.settings = settings
        self.broker = settings.server_url_v2
        self.tokens = tokens
        self.version = version
        self.os_name = os_name
        self.arch = arch
        self.poll_timeout = poll_timeout
        self.http = _Transport(session, timeout, user_agent)

    def close(self) -> None:
        self.http.close()

    def migrate(self, broker_url: str) -> None:
        """Follow a BrokerMigration message (§5.4)."""
        self.broker = m.with_slash(broker_url)

    def _authed(self, method: str, url: str, procedure: str, **kwargs: Any) -> requests.Response:
        resp = self.http.send(method, url, procedure, bearer=self.tokens.token(), **kwargs)
        if resp.status_code == 401:
            log.info("%s: the runner token was refused (401); renewing it once", procedure)
            self.tokens.invalidate()
            resp = self.http.send(method, url, procedure, bearer=self.tokens.token(), **kwargs)
        return resp

    def _status_params(self, session_id: str, status: m.RunnerStatus) -> dict[str, str]:
        return {
            "sessionId": session_id,
            "status": status.value,
            "runnerVersion": self.version,
            "os": self.os_name,
            "architecture": self.arch,
        }

    def create_session(self, owner_name: str, os_description: str = "Linux") -> m.Session:
        req = m.SessionRequest(
            owner_name, self.settings.agent_id, self.settings.agent_name, self.version, os_description
        )
        resp = self._authed("POST", f"{self.broker}session", "create session", json=req.to_dict())
        if resp.status_code != 200:
            raise classify("create session", resp)
        return _decode("create session", lambda: m.Session.from_dict(resp.json()))

    def delete_session(self) -> None:
        """No id: the bearer identifies the runner (§5.1)."""
        resp = self._authed("DELETE", f"{self.broker}session", "delete session")
        if resp.status_code not in (200, 204, 404):
            raise classify("delete session", resp)

    def get_message(
        self, session_id: str, status: m.RunnerStatus = m.RunnerStatus.ONLINE
    ) -> m.TaskAgentMessage | None:
        """One long-poll; ``None`` when the server had nothing (any 2xx without JSON, §13.6)."""
        resp = self._authed(
            "GET",
            f"{self.broker}message",
            "get message",
            # the message poll alone carries disableUpdate (R BrokerHttpClient.GetRunnerMessageAsync)
            params={
                **self._status_params(session_id, status),
                "disableUpdate": str(self.settings.disable_update).lower(),
            },
            timeout=self.poll_timeout,
        )
        if not 200 <= resp.status_code < 300:
            err = classify("get message", resp)
            if isinstance(err, VersionTooOld):
                err.hint = (
                    f"this runner reports version {self.version}; set a current official runner "
                    "release as runner_version in the [github] section of the configuration"
                )
            raise err
        try:
            data = resp.json()
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        return _decode("get message", lambda: m.TaskAgentMessage.from_dict(data))

    def acknowledge(
        self, session_id: str, runner_request_id: str, status: m.RunnerStatus = m.RunnerStatus.ONLINE
    ) -> None:
        """Best effort, 5 s (§5.3); raises JobGone for AcknowledgeJobNotFound (R #4540)."""
        resp = self._authed(
            "POST",
            f"{self.broker}acknowledge",
            "acknowledge",
            params=self._status_params(session_id, status),
            json={"runnerRequestId": runner_request_id},
            timeout=ACK_TIMEOUT,
        )
        if resp.status_code not in (200, 204):
            raise classify("acknowledge", resp)

    def acquire_job(self, ref: m.RunnerJobRequest) -> m.AgentJobRequestMessage:
        """§6.1. 404/409/422 raise JobGone: skip the message; an ephemeral runner exits (§12)."""
        if not ref.run_service_url:
            raise ForgeError("acquirejob: the job request has no run service URL (legacy path unsupported)")
        body = m.AcquireJobRequest(ref.runner_request_id, self.os_name, ref.billing_owner_id)
        resp = self._authed("POST", f"{ref.run_service_url}acquirejob", "acquirejob", json=body.to_dict())
        if resp.status_code != 200:
            raise classify("acquirejob", resp)
        return _decode("acquirejob", lambda: m.AgentJobRequestMessage.from_dict(resp.json()))


# --- the job's calls (§6.3, §6.4, §7.1) ---------------------------------------------------------


class JobClient:
    """Renew, complete and the results service, with the job's SystemVssConnection token."""

    def __init__(
        self,
        job: m.AgentJobRequestMessage,
        *,
        session: requests.Session | None = None,
        timeout: float = 60.0,
        user_agent: str = "solstice-ci",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        endpoint = job.system_connection
        self.job = job
        self.run_url = endpoint.url
        self.results_url = job.results_url
        self._token = endpoint.access_token
        if not self._token:
            raise ForgeError(f"job {job.job_id}: the SystemVssConnection endpoint has no AccessToken")
        self.http = _Transport(session, timeout, user_agent)
        self.sleep = sleep

    def __repr__(self) -> str:
        return f"JobClient(job_id={self.job.job_id!r})"

    def close(self) -> None:
        self.http.close()

    def _post(self, url: str, procedure: str, body: dict[str, Any]) -> Any:
        return self.http.json("POST", url, procedure, bearer=self._token, json=body)

    def renew(self) -> m.RenewJobResponse:
        """§6.3; LeaseLost on 404 (the server let the lease expire)."""
        data = self._post(
            f"{self.run_url}renewjob",
            "renewjob",
            {"planId": self.job.plan.plan_id, "jobId": self.job.job_id},
        )
        return _decode("renewjob", lambda: m.RenewJobResponse.from_dict(data))

    def complete(self, request: m.CompleteJobRequest, *, attempts: int = 5) -> None:
        """§6.4: up to 5 tries 5 s apart on ForgeUnavailable; 401/404 are not retried."""
        backoff = Backoff(initial=5.0, maximum=5.0, factor=1.0, jitter=0.0)
        while True:
            try:
                self._post(f"{self.run_url}completejob", "completejob", request.to_dict())
                return
            except ForgeUnavailable:
                if backoff.attempts + 1 >= attempts:
                    raise
                self.sleep(backoff.next_delay())

    def update_steps(self, update: m.WorkflowStepsUpdate) -> None:
        m.decode_ok(
            self._post(f"{self.results_url}{STEPS_UPDATE}", "WorkflowStepsUpdate", update.to_dict()),
            "WorkflowStepsUpdate",
        )

    def signed_log_url(self, target: m.LogsTarget) -> m.SignedBlobURL:
        method = "GetStepLogsSignedBlobURL" if target.step_id else "GetJobLogsSignedBlobURL"
        data = self._post(f"{self.results_url}{RESULTS_RECEIVER}{method}", method, target.to_dict())
        return _decode(method, lambda: m.SignedBlobURL.from_dict(data))

    def logs_metadata(self, meta: m.LogsMetadata) -> None:
        method = "CreateStepLogsMetadata" if meta.target.step_id else "CreateJobLogsMetadata"
        m.decode_ok(
            self._post(f"{self.results_url}{RESULTS_RECEIVER}{method}", method, meta.to_dict()), method
        )

    def put_blob(self, signed: m.SignedBlobURL, data: bytes, *, block_size: int = BLOCK_SIZE) -> None:
        """Upload to the signed URL, never with the bearer token (its signature is in the query,
        §13.13). One BlockBlob, or an AppendBlob in ``block_size`` blocks, sealed last (§7.1)."""
        azure = signed.blob_storage_type == m.BlobStorageType.AZURE.value
        text = {"Content-Type": "text/plain"}
        if len(data) <= block_size:
            self._put(signed.url, data, {**text, **({"x-ms-blob-type": "BlockBlob"} if azure else {})})
            return
        self._put(signed.url, b"", {"x-ms-blob-type": "AppendBlob"} if azure else {})
        blocks = [data[i : i + block_size] for i in range(0, len(data), block_size)]
        for n, block in enumerate(blocks, 1):
            last = n == len(blocks)
            url = signed.url + "&comp=appendblock" + ("&seal=true" if last else "")
            self._put(url, block, {**text, **({"x-ms-blob-sealed": str(last).lower()} if azure else {})})

    def _put(self, url: str, data: bytes, headers: dict[str, str]) -> None:
        resp = self.http.send("PUT", url, "blob upload", data=data, headers=headers)
        if resp.status_code not in (200, 201):
            raise classify("blob upload", resp)

    def upload_log(self, target: m.LogsTarget, lines: list[str], *, when: datetime | None = None) -> None:
        """A whole log (already masked, one formatted line each): URL, PUT, metadata (§7.1)."""
        signed = self.signed_log_url(target)
        body = fit_log(
            "".join(line if line.endswith("\n") else line + "\n" for line in lines).encode(),
            signed.soft_size_limit,
        )
        self.put_blob(signed, body)
        self.logs_metadata(m.LogsMetadata(target, timestamp(when), body.count(b"\n")))


def fit_log(body: bytes, limit: int | None) -> bytes:
    """``body`` cut at a line's end to the blob's size limit, with a line that says so: the
    service refuses a larger blob (HTTP 413), and a log it never gets would leave the job
    uncompleted."""
    if not limit or len(body) <= limit:
        return body
    note = f"... the log was cut at {limit} bytes (the results service's size limit)\n".encode()
    cut = body.rfind(b"\n", 0, max(0, limit - len(note))) + 1
    return body[:cut] + note


def owner_name(hostname: str, pid: int) -> str:
    """The session's ``ownerName`` as R writes it (§5.1)."""
    return f"{hostname} (PID: {pid})"
