"""A protocol-faithful fake of GitHub's side of the Actions runner protocol
(/work/shared/reference/github-runner-protocol.md, "the spec").

One threaded HTTP server on 127.0.0.1 plays every service, each under its own path, so the URLs
the runner follows are the ones the fake hands out (as GitHub hands out hosts):

* ``/api/v3/``: the REST API of a GHES-style host: ``actions/runner-registration`` with
  ``RemoteAuth`` registration/remove tokens (§3.2) and the runner-admin flow (§3.4);
* ``/pipelines/<tenant>/``: ``_apis/connectionData``, pools, agents and the OAuth endpoint
  ``_apis/oauth2/token`` (§2, §3.3, §4);
* ``/oauth/token``: the runner-admin flow's authorization URL;
* ``/broker/``: session (one per runner, 409 on a second), message long-poll (holds up to
  ``poll_hold`` s; version gate; session check), acknowledge (§5);
* ``/run/``: acquirejob, renewjob, completejob with a lease that expires after
  ``lease_seconds`` (§6);
* ``/results/``: the twirp endpoints of §7.1 and ``/blob/``, a store for signed-URL uploads.

The OAuth endpoint verifies each JWT client assertion against the public key the runner
registered (signature, ``aud`` = the URL posted to, ``iss``/``sub`` = client id, ``exp``/``nbf``),
and issues tokens that live ``token_lifetime`` seconds; an expired token gets 401 with
``WWW-Authenticate: Bearer``. ``enqueue(workflow)`` builds job messages from a workflow file the
way GitHub's server does (matrix expanded by solstice.workflow; script steps with TemplateTokens;
secrets as isSecret variables; contextData github/matrix/strategy/needs; SystemVssConnection with
the job token). ``requests`` records every request (bounded); ``bodies_containing`` lets a test
assert that no secret reached the server unmasked.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets as secrets_mod
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from solstice.forges.github import auth
from solstice.model import Step, StepKind
from solstice.model.core import JobSpec
from solstice.workflow import parse_workflow
from tests.fakes.gitrepo import http_backend, read_git_body, reply

TENANT = "tenant1"
MAX_RECORDS = 2000
MAX_BLOB = 16 * 1024 * 1024
MAX_QUEUE = 256
MAX_BLOBS = 1000
_STATUS_FN = re.compile(r"\b(success|failure|cancelled|always)\s*\(", re.IGNORECASE)
_EXPR = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
_GIT_PATH = re.compile(r"/([^/]+)/([^/]+?)\.git/(info/refs|git-upload-pack)")


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeRunner:
    id: int
    name: str
    labels: list[str]
    client_id: str
    public_key: rsa.RSAPublicKey
    authorization_url: str
    admin: bool = False
    ephemeral: bool = False
    version: str = ""
    deleted: bool = False
    session_id: str = ""
    last_status: str = ""


@dataclass
class FakeJob:
    spec: JobSpec
    request_id: str  # runner_request_id of the RunnerJobRequest
    job_id: str
    plan_id: str
    index: int  # strategy.job-index
    total: int
    secrets: dict[str, str]
    vars: dict[str, str]
    runner_id: int = 0
    acknowledged: bool = False
    token: str = ""
    lease_until: float = 0.0
    renewals: int = 0
    completed: dict[str, Any] | None = None
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # WorkflowStepsUpdate by external_id
    change_order: int = 0
    log_lines: dict[str, int] = field(default_factory=dict)  # CreateLogsMetadata line_count by step ("" job)
    message: dict[str, Any] = field(default_factory=dict)
    uses: dict[int, str] = field(default_factory=dict)  # step number -> an action reference
    github_token: str = ""  # the job's GITHUB_TOKEN (system.github.token): git fetches use it
    actor: str = "octocat"  # github.actor and github.triggering_actor
    sha: str = "4e3f" + "0" * 36


class Reject(Exception):
    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def broker_error(status: int, kind: str, message: str) -> Reject:
    return Reject(
        status,
        {
            "source": "actions-broker-listener",
            "errorKind": kind,
            "statusCode": status,
            "errorMessage": message,
        },
    )


def run_error(status: int, message: str) -> Reject:
    return Reject(status, {"source": "actions-run-service", "statusCode": status, "errorMessage": message})


# --- how the server writes workflow values (TemplateTokens, §8.1, §8.4, §13.9-§13.11) ----------


def token_of(text: str, line: int = 0) -> Any:
    """A workflow string as the server sends it: a literal with position, a whole expression, or
    ``format(...)`` for text mixed with ``${{ }}`` (literal braces doubled, quotes doubled)."""
    parts = _EXPR.split(text)
    if len(parts) == 1:
        return {"type": 0, "file": 1, "line": line, "col": 1, "lit": text} if line else text
    if len(parts) == 3 and not parts[0] and not parts[2]:
        return {"type": 3, "expr": parts[1].strip()}
    fmt, args = "", []
    for i, part in enumerate(parts):
        if i % 2:
            fmt += "{" + str(len(args)) + "}"
            args.append(part.strip())
        else:
            fmt += part.replace("{", "{{").replace("}", "}}")
    return {"type": 3, "expr": "format('" + fmt.replace("'", "''") + "', " + ", ".join(args) + ")"}


def mapping_token(pairs: Mapping[str, Any]) -> dict[str, Any]:
    token: dict[str, Any] = {"type": 2}
    if pairs:  # empty mappings omit `map` (§13.11)
        token["map"] = [{"key": k, "value": v} for k, v in pairs.items()]
    return token


def value_token(value: Any) -> Any:
    if isinstance(value, str):
        return token_of(value)
    if isinstance(value, bool):
        return {"type": 5, "bool": value}
    if isinstance(value, int | float):
        return {"type": 6, "num": value}
    return {"type": 7}


def condition_of(if_: str) -> str:
    """``if:`` as the server sends it: a plain expression, success() && (...) unless it calls a
    status function (§13.9)."""
    cond = if_.strip()
    whole = _EXPR.fullmatch(cond)
    if whole:
        cond = whole.group(1).strip()
    if not cond:
        return "success()"
    return cond if _STATUS_FN.search(cond) else f"success() && ({cond})"


def context_data(value: Any) -> Any:
    """A Python value as PipelineContextData (§8.2)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {"t": 2}
        if value:
            out["d"] = [{"k": str(k), "v": context_data(v)} for k, v in value.items()]
        return out
    if isinstance(value, list | tuple):
        return {"t": 1, "a": [context_data(v) for v in value]} if value else {"t": 1}
    return value


class _Handler(BaseHTTPRequestHandler):
    """Every method goes to the fake's router (HTTP/1.0: one request per connection)."""

    fake: FakeGitHub

    def do_GET(self) -> None:  # noqa: N802
        self.fake._serve(self)

    do_POST = do_PUT = do_DELETE = do_GET  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeGitHub:
    def __init__(
        self,
        *,
        admin_flow: bool = False,
        fips: bool | None = True,
        legacy_auth: bool = False,
        token_lifetime: float = 3600.0,
        lease_seconds: float = 600.0,
        poll_hold: float = 0.5,
        min_version: str = "2.330.0",
        repository: str = "octo/repo",
    ) -> None:
        self.admin_flow = admin_flow  # runner-registration answers use_v2_flow (§3.4)
        self.fips = fips  # RequireFipsCryptography on agent add; None omits the property
        self.legacy_auth = legacy_auth  # runner-admin answers a legacy_authorization_url too
        self.token_lifetime = token_lifetime
        self.lease_seconds = lease_seconds
        self.poll_hold = poll_hold
        self.min_version = min_version
        self.repository = repository
        #: login -> public key lines, served as GET /api/v3/users/{login}/keys (REST "users/keys")
        self.user_keys: dict[str, list[str]] = {}
        self.lock = threading.Condition()
        self.port = 0
        self.url = ""  # http://127.0.0.1:<port> once started
        self.requests: deque[Recorded] = deque(maxlen=MAX_RECORDS)
        self.registration_tokens: set[str] = set()
        self.remove_tokens: set[str] = set()
        self.tenant_tokens: dict[str, str] = {}  # bearer -> "register" | "remove"
        self.runners: dict[int, FakeRunner] = {}
        self.runner_tokens: dict[str, tuple[int, float]] = {}  # bearer -> (runner id, expires at)
        self.jobs: dict[str, FakeJob] = {}  # by runner_request_id
        self.pending: deque[FakeJob] = deque(maxlen=MAX_QUEUE)  # offered, not yet delivered
        self.inbox: dict[int, deque[dict[str, Any]]] = {}  # other messages per runner
        self.oauth_rejections: deque[str] = deque(maxlen=100)
        self.algorithms: deque[str] = deque(maxlen=100)  # the JWT alg of each accepted exchange
        self.blobs: dict[str, bytearray] = {}
        self.sealed: set[str] = set()
        self._blob_sigs: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self.repositories: dict[str, Path] = {}  # owner/name -> a local git repository
        self.git_fetches: deque[tuple[str, int]] = deque(maxlen=MAX_RECORDS)  # (job id, status)
        self._server: ThreadingHTTPServer | None = None
        self._closing = False

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def github_url(self) -> str:
        return f"{self.url}/{self.repository}"

    @property
    def tenant_url(self) -> str:
        return f"{self.url}/pipelines/{TENANT}/"

    def __enter__(self) -> FakeGitHub:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self._closing = True
            self.lock.notify_all()  # wake the long-polls
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- what a user or GitHub does ----------------------------------------------------------

    def registration_token(self) -> str:
        token = "AABF" + secrets_mod.token_hex(12)
        with self.lock:
            self.registration_tokens.add(token)
        return token

    def remove_token(self) -> str:
        token = "AARM" + secrets_mod.token_hex(12)
        with self.lock:
            self.remove_tokens.add(token)
        return token

    def delete_runner(self, runner_id: int) -> None:
        """A user removes the runner in the settings page."""
        with self.lock:
            self.runners[runner_id].deleted = True
            self.lock.notify_all()

    def expire_tokens(self) -> None:
        with self.lock:
            self.runner_tokens = {t: (r, 0.0) for t, (r, _) in self.runner_tokens.items()}

    def expire_lease(self, job: FakeJob) -> None:
        with self.lock:
            job.lease_until = 0.0

    def send(self, runner_id: int, message_type: str, body: Any) -> None:
        """Queue any broker message (JobCancellation, ForceTokenRefresh, ...) for one runner."""
        with self.lock:
            self.inbox.setdefault(runner_id, deque(maxlen=MAX_QUEUE)).append(
                {
                    "messageId": next(self._message_ids),
                    "messageType": message_type,
                    "body": body if isinstance(body, str) else json.dumps(body),
                }
            )
            self.lock.notify_all()

    def jit_config(self, name: str, labels: list[str]) -> tuple[str, FakeRunner]:
        """What ``generate-jitconfig`` answers: GitHub's own file formats (§3.6, §13.4)."""
        key = auth.new_private_key()
        runner = self._add_runner(
            name, ["self-hosted", *labels], key.public_key(), admin=False, ephemeral=True
        )
        files = {
            ".runner": {
                "AgentId": str(runner.id),
                "AgentName": name,
                "PoolId": "1",
                "PoolName": "Default",
                "ServerUrl": self.tenant_url,
                "GitHubUrl": self.github_url,
                "WorkFolder": "_work",
                "Ephemeral": "True",
                "UseV2Flow": "True",
                "ServerUrlV2": f"{self.url}/broker/",
            },
            ".credentials": {
                "Scheme": "OAuth",
                "Data": {
                    "ClientId": runner.client_id,
                    "AuthorizationUrl": runner.authorization_url,
                    "RequireFipsCryptography": "True",
                },
            },
            ".credentials_rsaparams": auth.rsa_params(key),
        }
        encoded = {k: base64.b64encode(json.dumps(v).encode()).decode() for k, v in files.items()}
        return base64.b64encode(json.dumps(encoded).encode()).decode(), runner

    def enqueue(
        self,
        workflow: str | Path,
        *,
        job: str | None = None,
        secrets: Mapping[str, str] | None = None,
        vars: Mapping[str, str] | None = None,
        uses: Mapping[int, str] | None = None,
        sha: str = "",
        actor: str = "octocat",
    ) -> list[FakeJob]:
        """Offer the jobs of a workflow (file path or YAML text), one per matrix combination.
        ``uses`` makes step N (1-based) a ``uses: OWNER/REPO@REF`` action step, which
        solstice.workflow would refuse to parse but GitHub sends as a repository reference."""
        text = workflow.read_text() if isinstance(workflow, Path) else workflow
        name = str(workflow) if isinstance(workflow, Path) else ".github/workflows/ci.yml"
        wf = parse_workflow(text, name, job=job, github={"repository": self.repository})
        totals: dict[str, int] = {}
        for spec in wf.jobs:
            totals[spec.key] = totals.get(spec.key, 0) + 1
        seen: dict[str, int] = {}
        made = []
        with self.lock:
            if len(self.pending) + len(wf.jobs) > MAX_QUEUE:
                raise RuntimeError(f"the fake's job queue holds at most {MAX_QUEUE} offered jobs")
            for spec in wf.jobs:
                index = seen.get(spec.key, 0)
                seen[spec.key] = index + 1
                fj = FakeJob(
                    spec=spec,
                    request_id=str(uuid.uuid4()),
                    job_id=str(uuid.uuid4()),
                    plan_id=str(uuid.uuid4()),
                    index=index,
                    total=totals[spec.key],
                    secrets=dict(secrets or {}),
                    vars=dict(vars or {}),
                    uses=dict(uses or {}),
                    actor=actor,
                )
                if sha:
                    fj.sha = sha
                self.jobs[fj.request_id] = fj
                self.pending.append(fj)
                made.append(fj)
            self.lock.notify_all()
        return made

    def bodies_containing(self, text: str) -> list[Recorded]:
        """Recorded requests whose body holds ``text`` (headers carry tokens by design)."""
        needle = text.encode()
        with self.lock:
            return [r for r in self.requests if needle in r.body]

    # --- HTTP plumbing -----------------------------------------------------------------------

    def add_repository(self, full_name: str, path: Path) -> None:
        """Serve a local repository as ``<url>/<owner>/<name>.git`` (git smart HTTP, read-only),
        to a job's GITHUB_TOKEN as actions/checkout sends it (Basic ``x-access-token:<token>``)."""
        with self.lock:
            self.repositories[full_name.lower()] = path

    def _git(self, h: BaseHTTPRequestHandler, full_name: str, endpoint: str) -> None:
        scheme, _, value = h.headers.get("Authorization", "").partition(" ")
        token = ""
        if scheme.lower() == "basic":
            try:
                token = base64.b64decode(value.strip()).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                token = ""
        body = read_git_body(h)
        path, _, query = h.path.partition("?")
        with self.lock:
            repo = self.repositories.get(full_name.lower())
            job = next(
                (j for j in self.jobs.values() if token and j.github_token == token and j.completed is None),
                None,
            )
        service = (
            "git-upload-pack" if endpoint == "git-upload-pack" or "service=git-upload-pack" in query else ""
        )
        if repo is None:
            status = 404
            reply(h, 404, b"Repository not found.\n")
        elif job is None or full_name.lower() != self.repository.lower() or not service:
            status = 401 if job is None else 403
            reply(h, status, b"Authentication failed\n")
        else:
            dot = repo / ".git"
            status = http_backend(h, dot if dot.is_dir() else repo, full_name, endpoint, query, body, "x")
        with self.lock:
            self.git_fetches.append((job.job_id if job else "", status))

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        git = _GIT_PATH.fullmatch(urlsplit(h.path).path)
        if git:
            self._git(h, f"{git[1]}/{git[2]}", git[3])
            return
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        query = parse_qs(parts.query)
        headers = {k: v for k, v in h.headers.items()}
        with self.lock:
            self.requests.append(Recorded(h.command, parts.path, query, headers, body))
        status, answer, extra = 200, None, {}
        try:
            answer = self._route(h.command, parts.path, query, headers, body)
            if isinstance(answer, tuple):
                status, answer = answer
        except Reject as rej:
            status, answer, extra = rej.status, rej.body, rej.headers
        except (ValueError, KeyError, TypeError) as exc:
            status, answer = 400, {"message": f"bad request: {type(exc).__name__}: {exc}"}
        data = b"" if answer is None else json.dumps(answer).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in extra.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
    ) -> Any:
        routes: list[tuple[str, str, Callable[..., Any]]] = [
            ("POST", r"/api/v3/actions/runner-registration", self._runner_registration),
            ("GET", rf"/pipelines/{TENANT}/_apis/connectionData", self._connection_data),
            ("GET", rf"/pipelines/{TENANT}/_apis/distributedtask/pools", self._pools),
            ("GET", rf"/pipelines/{TENANT}/_apis/distributedtask/pools/(\d+)/agents", self._find_agents),
            ("POST", rf"/pipelines/{TENANT}/_apis/distributedtask/pools/(\d+)/agents", self._add_agent),
            ("PUT", rf"/pipelines/{TENANT}/_apis/distributedtask/pools/(\d+)/agents/(\d+)", self._add_agent),
            (
                "DELETE",
                rf"/pipelines/{TENANT}/_apis/distributedtask/pools/(\d+)/agents/(\d+)",
                self._del_agent,
            ),
            ("POST", rf"/pipelines/{TENANT}/_apis/oauth2/token", self._oauth),
            ("POST", r"/oauth/token", self._oauth),
            ("GET", r"/api/v3/repos/[^/]+/[^/]+/actions/runner-groups", self._runner_groups),
            ("GET", r"/api/v3/repos/[^/]+/[^/]+/actions/runners", self._list_runners),
            ("POST", r"/api/v3/actions/runners/register", self._admin_register),
            ("DELETE", r"/api/v3/repos/[^/]+/[^/]+/actions/runners/(\d+)", self._admin_delete),
            ("GET", r"/api/v3/users/([^/]+)/keys", self._user_keys),
            # /broker-v2/: where a BrokerMigration message may send the runner (§5.4)
            ("POST", r"/broker(?:-v2)?/session", self._create_session),
            ("DELETE", r"/broker(?:-v2)?/session", self._delete_session),
            ("GET", r"/broker(?:-v2)?/message", self._message),
            ("POST", r"/broker(?:-v2)?/acknowledge", self._acknowledge),
            ("POST", r"/run/acquirejob", self._acquire),
            ("POST", r"/run/renewjob", self._renew),
            ("POST", r"/run/completejob", self._complete),
            ("POST", r"/results/twirp/([\w.]+)/(\w+)", self._twirp),
            ("PUT", r"/blob/(.+)", self._blob),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and verb == method:
                return handler(*match.groups(), query=query, headers=headers, body=body)
        raise Reject(404, {"message": f"no route {method} {path}"})

    def _user_keys(self, login: str, **_: Any) -> Any:
        """GET /users/{username}/keys: public, no token; [{"id", "key"}]; 404 for no such user."""
        with self.lock:
            keys = self.user_keys.get(login.lower())
        if keys is None:
            raise Reject(404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})
        return [{"id": 1000 + i, "key": k} for i, k in enumerate(keys)]

    @staticmethod
    def _json(body: bytes) -> Any:
        return json.loads(body) if body else {}

    @staticmethod
    def _q(query: dict[str, list[str]], name: str) -> str:
        return query.get(name, [""])[0]

    # --- registration (§3) -------------------------------------------------------------------

    def _remote_auth(self, headers: dict[str, str], *, remove: bool = False) -> str:
        token = headers.get("Authorization", "").removeprefix("RemoteAuth ").strip()
        valid = self.remove_tokens if remove else self.registration_tokens
        if token not in valid:
            raise Reject(401, {"message": "Bad credentials"})
        return token

    def _runner_registration(self, *, headers: dict[str, str], body: bytes, **_: Any) -> Any:
        req = self._json(body)
        event = req["runner_event"]
        self._remote_auth(headers, remove=event == "remove")
        if req["url"].rstrip("/") != self.github_url:
            raise Reject(404, {"message": "Not Found"})
        bearer = "tenant-" + secrets_mod.token_hex(16)
        with self.lock:
            self.tenant_tokens[bearer] = event
        return {
            "url": self.tenant_url,
            "token_schema": "OAuthAccessToken",
            "token": bearer,
            "use_v2_flow": self.admin_flow,
        }

    def _tenant(self, headers: dict[str, str], purpose: str = "register") -> None:
        bearer = headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if self.tenant_tokens.get(bearer) != purpose:
            raise Reject(401, {"message": "unauthorized"}, {"WWW-Authenticate": "Bearer"})
        if "api-version=" not in headers.get("Accept", ""):
            raise Reject(400, {"message": "the api-version media type parameter is required"})

    def _connection_data(self, **_: Any) -> Any:  # anonymous (§13.16)
        return {
            "instanceId": str(uuid.UUID(int=1)),
            "locationServiceData": {
                "serviceDefinitions": [
                    {
                        "identifier": "a8c47e17-4d56-4a56-92bb-de7ea7dc65be",
                        "relativePath": "_apis/distributedtask/pools/{poolId}",
                    },
                    {
                        "identifier": "e298ef32-5878-4cab-993c-043836571f42",
                        "relativePath": "_apis/distributedtask/pools/{poolId}/agents/{agentId}",
                    },
                ]
            },
        }

    def _pools(self, *, headers: dict[str, str], query: dict[str, list[str]], **_: Any) -> Any:
        self._tenant(headers)
        return {
            "count": 2,
            "value": [
                {"id": 2, "name": "GitHub Actions", "isHosted": True, "isInternal": False},
                {"id": 1, "name": "Default", "isHosted": False, "isInternal": True},
            ],
        }

    def _agent_json(self, r: FakeRunner) -> dict[str, Any]:
        props: dict[str, Any] = {
            "ServerUrl": {"$type": "System.String", "$value": self.tenant_url},
            "ServerUrlV2": {"$type": "System.String", "$value": f"{self.url}/broker/"},
            "UseV2Flow": {"$type": "System.Boolean", "$value": True},
        }
        if self.fips is not None:
            props["RequireFipsCryptography"] = {"$type": "System.Boolean", "$value": self.fips}
        return {
            "id": r.id,
            "name": r.name,
            "version": r.version,
            "status": "online",
            "labels": [{"id": 0, "name": n, "type": "user"} for n in r.labels],
            "authorization": {"authorizationUrl": r.authorization_url, "clientId": r.client_id},
            "properties": props,
        }

    def _find_agents(
        self, pool: str, *, headers: dict[str, str], query: dict[str, list[str]], **_: Any
    ) -> Any:
        self._tenant(headers)
        name = self._q(query, "agentName")
        found = [self._agent_json(r) for r in self.runners.values() if not r.deleted and r.name == name]
        return {"count": len(found), "value": found}

    def _add_runner(
        self,
        name: str,
        labels: list[str],
        key: rsa.RSAPublicKey,
        *,
        admin: bool,
        ephemeral: bool,
        version: str = "",
    ) -> FakeRunner:
        with self.lock:
            rid = next(self._ids)
            auth_url = f"{self.url}/oauth/token" if admin else f"{self.tenant_url}_apis/oauth2/token"
            runner = FakeRunner(
                rid,
                name,
                labels,
                str(uuid.uuid4()),
                key,
                auth_url,
                admin=admin,
                ephemeral=ephemeral,
                version=version,
            )
            self.runners[rid] = runner
            return runner

    def _add_agent(
        self, pool: str, agent_id: str = "", *, headers: dict[str, str], body: bytes, **_: Any
    ) -> Any:
        self._tenant(headers)
        req = self._json(body)
        pk = req["authorization"]["publicKey"]
        key = rsa.RSAPublicNumbers(_num(pk["exponent"]), _num(pk["modulus"])).public_key()
        if key.key_size < 2048:
            raise Reject(400, {"message": "the public key must have at least 2048 bits"})
        labels = [lb["name"] for lb in req["labels"]]
        if agent_id:  # replace (PUT)
            with self.lock:
                runner = self.runners[int(agent_id)]
                runner.public_key, runner.labels, runner.client_id = key, labels, str(uuid.uuid4())
            return self._agent_json(runner)
        if any(r.name == req["name"] and not r.deleted for r in self.runners.values()):
            raise Reject(409, {"typeKey": "TaskAgentExistsException", "message": "the name is taken"})
        runner = self._add_runner(
            req["name"],
            labels,
            key,
            admin=False,
            ephemeral=bool(req.get("ephemeral")),
            version=req["version"],
        )
        return self._agent_json(runner)

    def _del_agent(self, pool: str, agent_id: str, *, headers: dict[str, str], **_: Any) -> Any:
        self._tenant(headers, "remove")
        self.delete_runner(int(agent_id))
        return 204, None

    def _runner_groups(self, *, headers: dict[str, str], **_: Any) -> Any:
        self._remote_auth(headers)
        return {
            "total_count": 1,
            "runner_groups": [{"id": 1, "name": "Default", "default": True, "is_hosted": False}],
        }

    def _list_runners(self, *, headers: dict[str, str], query: dict[str, list[str]], **_: Any) -> Any:
        self._remote_auth(headers)
        name = self._q(query, "name")
        found = [
            {"id": r.id, "name": r.name} for r in self.runners.values() if not r.deleted and r.name == name
        ]
        return {"total_count": len(found), "runners": found}

    def _admin_register(self, *, headers: dict[str, str], body: bytes, **_: Any) -> Any:
        self._remote_auth(headers)
        req = self._json(body)
        xml = req["public_key"]
        modulus = re.search(r"<Modulus>([^<]+)</Modulus>", xml)
        exponent = re.search(r"<Exponent>([^<]+)</Exponent>", xml)
        if not modulus or not exponent:
            raise Reject(422, {"message": "public_key is not an RSAKeyValue"})
        key = rsa.RSAPublicNumbers(_num(exponent.group(1)), _num(modulus.group(1))).public_key()
        if req.get("replace"):
            self.delete_runner(int(req["runner_id"]))
        runner = self._add_runner(
            req["name"],
            [lb["name"] for lb in req["labels"]],
            key,
            admin=True,
            ephemeral=bool(req.get("ephemeral")),
            version=req["version"],
        )
        authorization: dict[str, Any] = {
            "authorization_url": runner.authorization_url,
            "server_url": f"{self.url}/broker/",
            "client_id": runner.client_id,
        }
        if self.legacy_auth:
            authorization["legacy_authorization_url"] = f"{self.tenant_url}_apis/oauth2/token"
        return 201, {"id": runner.id, "name": runner.name, "authorization": authorization}

    def _admin_delete(self, runner_id: str, *, headers: dict[str, str], **_: Any) -> Any:
        self._remote_auth(headers, remove=True)
        self.delete_runner(int(runner_id))
        return 204, None

    # --- OAuth (§4) --------------------------------------------------------------------------

    def _oauth(self, *, headers: dict[str, str], body: bytes, **_: Any) -> Any:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_assertion_type") != auth.ASSERTION_TYPE
        ):
            raise Reject(400, {"error": "unsupported_grant_type"})
        assertion = form.get("client_assertion", "")
        try:
            claims = jwt.decode(assertion, options={"verify_signature": False})
            alg = jwt.get_unverified_header(assertion)["alg"]
        except jwt.PyJWTError:
            raise Reject(400, {"error": "invalid_request"}) from None
        runner = next((r for r in self.runners.values() if r.client_id == claims.get("iss")), None)
        if runner is None or runner.deleted:
            self.oauth_rejections.append("unknown client")
            raise Reject(400, {"error": "invalid_client", "error_description": "no such client"})
        try:  # aud is the authorization URL in use: authorizationUrlV2 after a migration (§4)
            jwt.decode(
                assertion,
                runner.public_key,
                algorithms=["RS256", "PS256"],
                audience=runner.authorization_url,
                issuer=runner.client_id,
                options={"require": ["exp", "nbf", "aud", "iss", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            self.oauth_rejections.append("expired")
            now = datetime.now(UTC)
            raise Reject(
                400,
                {
                    "error": "invalid_client_assertion",
                    # the text R recognises as clock skew (§13.2)
                    "error_description": f"The bearer token expired on {claims.get('exp')}. "
                    f"Current server time is {now}.",
                },
            ) from None
        except jwt.InvalidAudienceError:
            self.oauth_rejections.append("audience")
            raise Reject(
                400, {"error": "invalid_client_assertion", "error_description": "wrong audience"}
            ) from None
        except jwt.PyJWTError as exc:
            self.oauth_rejections.append(type(exc).__name__)
            raise Reject(
                400, {"error": "invalid_client_assertion", "error_description": "bad assertion"}
            ) from None
        if claims.get("sub") != runner.client_id:
            self.oauth_rejections.append("subject")
            raise Reject(400, {"error": "invalid_client_assertion"})
        token = "rt-" + secrets_mod.token_hex(20)
        with self.lock:
            now = time.monotonic()  # drop dead tokens: the table stays as small as the live ones
            self.runner_tokens = {t: e for t, e in self.runner_tokens.items() if e[1] > now}
            self.runner_tokens[token] = (runner.id, now + self.token_lifetime)
            self.algorithms.append(alg)
        return {"access_token": token, "token_type": "JWT", "expires_in": self.token_lifetime}

    # --- broker (§5) -------------------------------------------------------------------------

    def _runner(self, headers: dict[str, str]) -> FakeRunner:
        bearer = headers.get("Authorization", "").removeprefix("Bearer ").strip()
        entry = self.runner_tokens.get(bearer)
        if entry is None or entry[1] < time.monotonic():
            raise Reject(401, {"message": "token expired"}, {"WWW-Authenticate": "Bearer"})
        runner = self.runners[entry[0]]
        if runner.deleted:
            raise broker_error(404, "RunnerNotFound", "the runner was deleted")
        return runner

    def _create_session(self, *, headers: dict[str, str], body: bytes, **_: Any) -> Any:
        runner = self._runner(headers)
        req = self._json(body)
        with self.lock:
            if runner.session_id:
                raise Reject(
                    409,
                    {
                        "typeKey": "TaskAgentSessionConflictException",
                        "message": f"A session for runner {runner.name} already exists.",
                    },
                )
            runner.session_id = str(uuid.uuid4())
        return {
            "sessionId": runner.session_id,
            "ownerName": req["ownerName"],
            "agent": {"id": runner.id, "name": runner.name},
            "useFipsEncryption": False,
        }

    def _delete_session(self, *, headers: dict[str, str], **_: Any) -> Any:
        runner = self._runner(headers)
        with self.lock:
            runner.session_id = ""
        return 204, None

    def _session(self, headers: dict[str, str], query: dict[str, list[str]]) -> FakeRunner:
        runner = self._runner(headers)
        if not runner.session_id or self._q(query, "sessionId") != runner.session_id:
            raise broker_error(404, "RunnerSessionInvalid", "the session is not valid")
        version = self._q(query, "runnerVersion")
        if _version(version) < _version(self.min_version):
            raise broker_error(403, "RunnerVersionTooOld", f"Runner version v{version} is deprecated")
        return runner

    def _message(self, *, headers: dict[str, str], query: dict[str, list[str]], **_: Any) -> Any:
        runner = self._session(headers, query)
        runner.last_status = self._q(query, "status")
        deadline = time.monotonic() + self.poll_hold
        with self.lock:
            while True:
                if runner.deleted:
                    raise broker_error(404, "RunnerNotFound", "the runner was deleted")
                box = self.inbox.get(runner.id)
                if box:
                    return box.popleft()
                job = next((j for j in self.pending if set(j.spec.runs_on) <= set(runner.labels)), None)
                if job is not None:
                    self.pending.remove(job)
                    job.runner_id = runner.id
                    body = {
                        "id": str(next(self._message_ids)),
                        "runner_request_id": job.request_id,
                        "should_acknowledge": True,
                        "run_service_url": f"{self.url}/run",
                        "billing_owner_id": "owner-1",
                    }
                    return {
                        "messageId": next(self._message_ids),
                        "messageType": "RunnerJobRequest",
                        "body": json.dumps(body),
                    }
                left = deadline - time.monotonic()
                if left <= 0 or self._closing:
                    return 202, None  # no message: a 2xx without a body (§5.2, §13.6)
                self.lock.wait(left)

    def _acknowledge(
        self, *, headers: dict[str, str], query: dict[str, list[str]], body: bytes, **_: Any
    ) -> Any:
        self._session(headers, query)
        job = self.jobs.get(self._json(body)["runnerRequestId"])
        if job is None:
            raise broker_error(404, "AcknowledgeJobNotFound", "no such job request")
        job.acknowledged = True
        return 200, {}

    # --- run service (§6) --------------------------------------------------------------------

    def _acquire(self, *, headers: dict[str, str], body: bytes, **_: Any) -> Any:
        runner = self._runner(headers)
        req = self._json(body)
        with self.lock:
            job = self.jobs.get(req["jobMessageId"])
            if job is None:
                raise run_error(404, "job request not found")
            if job.token or job.runner_id != runner.id:
                raise run_error(409, "the job was already acquired")
            job.token = "job-" + secrets_mod.token_hex(20)
            job.lease_until = time.monotonic() + self.lease_seconds
            job.message = self._job_message(job)
            return job.message

    def _job(self, headers: dict[str, str], body: bytes) -> tuple[FakeJob, dict[str, Any]]:
        bearer = headers.get("Authorization", "").removeprefix("Bearer ").strip()
        req = self._json(body)
        job = next((j for j in self.jobs.values() if j.token and j.token == bearer), None)
        if job is None:
            raise Reject(401, {"message": "invalid job token"}, {"WWW-Authenticate": "Bearer"})
        return job, req

    def _leased(self, headers: dict[str, str], body: bytes) -> tuple[FakeJob, dict[str, Any]]:
        job, req = self._job(headers, body)
        if req.get("jobId") != job.job_id or req.get("planId") != job.plan_id:
            raise run_error(400, "planId/jobId do not match the job")
        if job.completed is not None or job.lease_until < time.monotonic():
            raise run_error(404, "TaskOrchestrationJobNotFoundException: the job's lease expired")
        return job, req

    def _renew(self, *, headers: dict[str, str], body: bytes, **_: Any) -> Any:
        job, _req = self._leased(headers, body)
        with self.lock:
            job.renewals += 1
            job.lease_until = time.monotonic() + self.lease_seconds
        until = datetime.now(UTC) + timedelta(seconds=self.lease_seconds)
        return {"lockedUntil": until.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}

    def _complete(self, *, headers: dict[str, str], body: bytes, **_: Any) -> Any:
        job, req = self._leased(headers, body)
        with self.lock:
            job.completed = req
            runner = self.runners[job.runner_id]
            if runner.ephemeral:
                runner.deleted = True  # GitHub removes an ephemeral runner after its job
        return 200, None

    # --- results service (§7.1) --------------------------------------------------------------

    def _twirp(self, service: str, method: str, *, headers: dict[str, str], body: bytes, **_: Any) -> Any:
        job, req = self._job(headers, body)
        if (
            req.get("workflow_job_run_backend_id") != job.job_id
            or req.get("workflow_run_backend_id") != job.plan_id
        ):
            raise Reject(400, {"code": "invalid_argument", "msg": "backend ids do not match the job"})
        if method == "WorkflowStepsUpdate":
            if req["change_order"] <= job.change_order:
                raise Reject(400, {"code": "invalid_argument", "msg": "change_order must increase"})
            with self.lock:
                job.change_order = req["change_order"]
                for step in req["steps"]:
                    job.steps[step["external_id"]] = step
            return {"ok": True}
        step = req.get("step_backend_id", "")
        if method in ("GetStepLogsSignedBlobURL", "GetJobLogsSignedBlobURL"):
            if (method == "GetStepLogsSignedBlobURL") != bool(step):
                raise Reject(400, {"code": "invalid_argument", "msg": "step_backend_id"})
            name = f"{job.job_id}/{step or 'job'}.txt"
            sig = secrets_mod.token_hex(8)
            with self.lock:
                self._blob_sigs[name] = sig
            return {
                "logs_url": f"{self.url}/blob/{name}?sv=2024&sig={sig}",
                "blob_storage_type": "BLOB_STORAGE_TYPE_AZURE",
                "soft_size_limit": str(MAX_BLOB),
            }
        if method in ("CreateStepLogsMetadata", "CreateJobLogsMetadata"):
            name = f"{job.job_id}/{step or 'job'}.txt"
            if name not in self.blobs:
                raise Reject(400, {"code": "failed_precondition", "msg": "no log was uploaded"})
            with self.lock:
                job.log_lines[step] = int(req["line_count"])
            return {"ok": True}
        raise Reject(404, {"code": "bad_route", "msg": f"no method {service}/{method}"})

    def _blob(
        self, name: str, *, headers: dict[str, str], query: dict[str, list[str]], body: bytes, **_: Any
    ) -> Any:
        if "Authorization" in headers:
            raise Reject(400, {"message": "a signed URL takes no Authorization header"})
        if self._blob_sigs.get(name) != self._q(query, "sig"):
            raise Reject(403, {"message": "AuthenticationFailed"})
        with self.lock:
            if name in self.sealed:
                raise Reject(409, {"message": "BlobIsSealed"})
            if self._q(query, "comp") == "appendblock":
                if name not in self.blobs:
                    raise Reject(404, {"message": "BlobNotFound"})
                self.blobs[name] += body
                if self._q(query, "seal") == "true":
                    self.sealed.add(name)
            elif name not in self.blobs and len(self.blobs) >= MAX_BLOBS:
                raise Reject(507, {"message": f"the fake stores at most {MAX_BLOBS} blobs"})
            elif headers.get("x-ms-blob-type") in ("BlockBlob", "AppendBlob"):
                self.blobs[name] = bytearray(body)
            else:
                raise Reject(400, {"message": "x-ms-blob-type is required"})
            if len(self.blobs[name]) > MAX_BLOB:
                del self.blobs[name]
                raise Reject(413, {"message": "RequestBodyTooLarge"})
        return 201, None

    def log_text(self, job: FakeJob, step_id: str = "") -> str:
        return bytes(self.blobs.get(f"{job.job_id}/{step_id or 'job'}.txt", b"")).decode()

    # --- the job message, as GitHub's server builds it (§6.2, §13.10-§13.12) -----------------

    def _job_message(self, job: FakeJob) -> dict[str, Any]:
        spec = job.spec
        job.github_token = "ghs_" + secrets_mod.token_hex(16)
        owner = self.repository.split("/")[0]
        github = {
            "repository": self.repository,
            "repository_owner": owner,
            "sha": job.sha,
            "ref": "refs/heads/main",
            "run_id": "289",
            "run_number": "7",
            "event_name": "push",
            "workflow": spec.workflow_name,
            "job": spec.key,
            "server_url": self.url,
            "api_url": f"{self.url}/api/v3",
            "actor": job.actor,
            "triggering_actor": job.actor,
            "event": {"ref": "refs/heads/main"},
        }
        variables: dict[str, Any] = {
            "system.github.token": {"value": job.github_token, "isSecret": True},
            "system.github.results_endpoint": {"value": f"{self.url}/results/"},
            "system.github.job": {"value": spec.key},
        }
        for name, value in job.secrets.items():
            variables[name] = {"value": value, "isSecret": True}
        message: dict[str, Any] = {
            "messageType": "RunnerJobRequest",
            "plan": {
                "scopeIdentifier": str(uuid.UUID(int=0)),
                "planType": "Actions",
                "planId": job.plan_id,
                "version": 13,
            },
            "timeline": {"id": str(uuid.uuid4()), "changeId": 1, "location": None},
            "jobId": job.job_id,
            "jobDisplayName": spec.name,
            "jobName": "__default",
            "requestId": 47,
            "lockedUntil": "0001-01-01T00:00:00",
            "billingOwnerId": "owner-1",
            "resources": {
                "endpoints": [
                    {
                        "name": "SystemVssConnection",
                        "url": f"{self.url}/run/",
                        "authorization": {"scheme": "OAuth", "parameters": {"AccessToken": job.token}},
                        "data": {
                            "ResultsServiceUrl": f"{self.url}/results/",
                            "PipelinesServiceUrl": self.tenant_url,
                            "FeedStreamUrl": f"ws://127.0.0.1:{self.port}/results/_ws/ingest.sock",
                            "CacheServerUrl": f"{self.url}/cache/",
                        },
                        "isShared": False,
                        "isReady": True,
                    }
                ]
            },
            "contextData": {
                "github": context_data(github),
                "matrix": context_data(dict(spec.matrix))
                if spec.matrix
                else None,  # null without one (§13.12)
                "strategy": context_data(
                    {
                        "fail-fast": True,
                        "job-index": job.index,
                        "job-total": job.total,
                        "max-parallel": job.total,
                    }
                ),
                "needs": context_data({}),
                "inputs": context_data({}),
                "vars": context_data(job.vars),
            },
            "variables": variables,
            "mask": [{"type": "regex", "value": job.token}],
            "steps": [
                self._step(s, n, job.uses.get(s.number, ""))
                for s, n in zip(spec.steps, _context_names(spec.steps), strict=True)
            ],
            "fileTable": [spec.workflow_file],
            "jobOutputs": mapping_token({k: token_of(v) for k, v in spec.outputs.items()})
            if spec.outputs
            else None,
            "workspace": {},
            "jobContainer": None,
            "jobServiceContainers": None,
            "actionsEnvironment": None,
        }
        if spec.env:  # empty lists are omitted, not [] (§13.12)
            message["environmentVariables"] = [mapping_token({k: token_of(v) for k, v in spec.env.items()})]
        run_defaults = {
            k: v for k, v in (("shell", spec.shell), ("working-directory", spec.working_directory)) if v
        }
        if run_defaults:
            message["defaults"] = [mapping_token({"run": mapping_token(run_defaults)})]
        return message

    def _step(self, step: Step, context_name: str, uses: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "action",
            "id": str(uuid.uuid4()),
            "name": context_name,
            "contextName": context_name,
            "displayNameToken": token_of(step.name, step.line),
            "condition": condition_of(step.if_),
        }
        if uses:
            name, _, ref = uses.partition("@")
            out["reference"] = {"type": "repository", "name": name, "ref": ref, "repositoryType": "GitHub"}
            out["inputs"] = mapping_token({})
        elif step.kind is StepKind.CHECKOUT:
            out["reference"] = {
                "type": "repository",
                "name": "actions/checkout",
                "ref": "v4",
                "repositoryType": "GitHub",
            }
            out["inputs"] = mapping_token({k: token_of(v) for k, v in step.with_.items()})
        else:
            out["reference"] = {"type": "script"}
            inputs: dict[str, Any] = {"script": token_of(step.run, step.line)}
            if step.shell:
                inputs["shell"] = step.shell
            if step.working_directory:
                inputs["workingDirectory"] = token_of(step.working_directory)
            out["inputs"] = mapping_token(inputs)
        if step.env:
            out["environment"] = mapping_token({k: token_of(v) for k, v in step.env.items()})
        out["continueOnError"] = value_token(step.continue_on_error)
        if step.timeout_minutes is not None:
            out["timeoutInMinutes"] = value_token(step.timeout_minutes)
        return out


def _context_names(steps: tuple[Step, ...]) -> list[str]:
    """Generated ids for steps without ``id:``: __run, __run_2, __actions_checkout (§13.10)."""
    names, used = [], set()
    for step in steps:
        base = step.id or ("__actions_checkout" if step.kind is StepKind.CHECKOUT else "__run")
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        names.append(name)
    return names


def _num(b64: str) -> int:
    return int.from_bytes(base64.b64decode(b64), "big")


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split("."))
    except ValueError:
        return (0,)
