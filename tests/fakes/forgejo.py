"""A protocol-faithful fake Forgejo/Gitea server for the runner (forgejo-runner-protocol.md).

It serves the six RPCs over real HTTP on 127.0.0.1 (Connect unary, JSON codec, §1), with the
server-side rules the runner depends on:

* Register with reusable, revocable registration tokens; uuid/token headers on every other call;
  errors as Forgejo sends them (proper Connect codes) or as Gitea does (``mode="gitea"``: every
  handler error is ``unknown`` with HTTP 500 and a wrapped "rpc error: code = X desc = ..." message,
  §1.4);
* FetchTask with the ``tasks_version`` counter (only picks when the runner's version differs, §3.3),
  label matching (Forgejo: runs-on ⊆ labels and never on empty lists; Gitea: subset, empty
  matches, §4), ephemeral runners get one task, Forgejo's ``x-runner-request-key`` re-sends the
  tasks assigned under a key with ``tasks_version`` 0 and fresh tokens (§1.2);
* UpdateLog with the ack/gap/duplicate rules and ``no_more`` archiving (§3.5);
* UpdateTask: outputs first-write-wins with ``sent_outputs`` = all keys, step states by index,
  final state once, ``AsResult`` in the answer (so a cancel shows as RESULT_CANCELLED, §3.7),
  dependent jobs released (``needs``) when a task ends (§3.6).

``enqueue(yaml)`` plays the server's job parser: one job per ``jobs.<id>`` and matrix combination,
each with a single-job ``workflow_payload`` (§3.4). What a user would see is kept on ``FakeTask``:
status, steps with their rows, outputs. ``down()``/``up()`` stop and restart the listener on the
same port; ``requests`` records every call (procedure, headers, JSON body) for assertions.

Git over smart HTTP, as Forgejo serves it to Actions: ``add_repository(full_name, path)`` serves a
local repository at ``<url>/<owner>/<repo>.git`` (the task context's ``repositoryUrl``) through
``git http-backend``; fetching needs HTTP Basic auth whose password (or user name, with an empty or
``x-oauth-basic`` password) is the token of a running task of that repository, else 401 with
``WWW-Authenticate: Basic realm="Gitea"``. Commits can be fetched by sha (protocol v2, and
``uploadpack.allowAnySHA1InWant`` as Forgejo configures git). ``git_requests`` records each git
request (method, path, service, repository, user, task, status).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import itertools
import json
import re
import secrets as secrets_mod
import socket
import threading
import time
import uuid as uuid_mod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from solstice import expr
from solstice.forges.forgejo import messages as m
from solstice.workflow import matrix as matrix_mod
from solstice.workflow import matrix_suffix
from solstice.workflow.loader import load as load_yaml
from tests.fakes.gitrepo import http_backend, read_git_body

DONE = {"success", "failure", "cancelled", "skipped"}
_RESULT_OF = {
    "success": m.Result.RESULT_SUCCESS,
    "failure": m.Result.RESULT_FAILURE,
    "cancelled": m.Result.RESULT_CANCELLED,
    "skipped": m.Result.RESULT_SKIPPED,
}
_STATUS_OF = {v: k for k, v in _RESULT_OF.items()}
MAX_LINE = 64 * 1024


class RPCError(Exception):
    def __init__(self, code: str, message: str, grpc: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.grpc = grpc  # Gitea's grpc status name, e.g. "Unauthenticated"; "" for errors.New


_HTTP_OF = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}


@dataclass
class FakeRunner:
    id: int
    uuid: str
    token: str
    name: str
    labels: list[str]
    version: str = ""
    ephemeral: bool = False
    owner: str = ""  # "" global
    deleted: bool = False
    calls: int = 0


@dataclass
class FakeStep:
    index: int
    name: str
    status: str = "waiting"  # waiting | running | success | failure | cancelled | skipped
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    log_index: int = 0
    log_length: int = 0


@dataclass
class FakeJob:
    id: int
    run_id: int
    key: str  # the job id under `jobs:`
    name: str  # the server's name: with the matrix suffix
    runs_on: list[str]
    needs: list[str]
    payload: bytes
    matrix: dict[str, Any]
    if_: str = ""
    status: str = "waiting"  # blocked | waiting | running | done statuses
    task_ids: list[int] = field(default_factory=list)

    @property
    def task_id(self) -> int | None:
        return self.task_ids[-1] if self.task_ids else None


@dataclass
class FakeRun:
    id: int
    number: int
    repository: str
    workflow: str
    sha: str
    ref: str
    event_name: str
    event: dict[str, Any]
    actor: str
    secrets: dict[str, str]
    vars: dict[str, str]
    job_ids: list[int] = field(default_factory=list)


@dataclass
class FakeTask:
    id: int
    job: FakeJob
    runner_uuid: str
    token: str
    context: dict[str, Any]
    secrets: dict[str, str]
    needs: dict[str, m.TaskNeed]
    vars: dict[str, str]
    status: str = "running"
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    steps: list[FakeStep] = field(default_factory=list)
    rows: list[tuple[str, str]] = field(default_factory=list)  # (time, content) as stored
    #: Host time.time() at which each row arrived, and the final state (scripts/bench's timings).
    arrivals: list[float] = field(default_factory=list)
    finished_arrival: float | None = None
    archived: bool = False
    outputs: dict[str, str] = field(default_factory=dict)
    updates: int = 0  # non-final UpdateTask/UpdateLog calls (the heartbeat)

    @property
    def result(self) -> m.Result:
        """``Status.AsResult()``: the result only once the task is done (§2 notes)."""
        return _RESULT_OF.get(self.status, m.Result.RESULT_UNSPECIFIED)

    def lines(self) -> list[str]:
        return [c for _, c in self.rows]

    def step_lines(self, index: int) -> list[str]:
        s = self.steps[index]
        return self.lines()[s.log_index : s.log_index + s.log_length]

    def setup_lines(self) -> list[str]:
        """The UI's "Set up job": rows before the first step's (GT task_state.go FullSteps)."""
        first = next((s.log_index for s in self.steps if s.log_length), len(self.rows))
        return self.lines()[:first]

    def complete_lines(self) -> list[str]:
        """The UI's "Complete job": rows after the last step's."""
        ends = [s.log_index + s.log_length for s in self.steps if s.log_length]
        return self.lines()[max(ends) if ends else len(self.rows) :]

    def to_message(self) -> m.Task:
        return m.Task(
            id=self.id,
            workflow_payload=self.job.payload,
            context=self.context,
            secrets=self.secrets,
            needs=self.needs,
            vars=self.vars,
        )


@dataclass
class FakeRepository:
    full_name: str  # owner/name
    path: Path  # a local git repository, bare or not
    public: bool = False  # anonymous fetches allowed (a wrong token is still refused)
    #: Commits can be wanted by sha (protocol v2, uploadpack.allowAnySHA1InWant) as on Forgejo;
    #: False plays an old server: protocol v0 only, unadvertised commits refused.
    sha_fetch: bool = True

    @property
    def git_dir(self) -> Path:
        dot = self.path / ".git"
        return dot if dot.is_dir() else self.path


@dataclass
class FakeGitRequest:
    method: str
    path: str  # without the query
    service: str  # git-upload-pack, git-receive-pack, or "" (dumb HTTP)
    repository: str  # owner/name as requested
    user: str = ""  # the Basic auth user name, "" when none was sent
    task_id: int | None = None  # the task whose token authenticated the request
    status: int = 0
    protocol: str = ""  # the Git-Protocol header


#: <owner>/<repo>[.git]/<endpoint>, below the instance's url_path.
_GIT_PATH = re.compile(r"/([^/]+)/([^/]+?)(?:\.git)?/(info/refs|git-upload-pack|git-receive-pack)")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _labels(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, dict):
        return _labels(value.get("labels", []))
    return [str(value)] if value is not None else []


class FakeForgejo:
    def __init__(self, mode: str = "forgejo", *, declare: bool = True, url_path: str = "") -> None:
        if mode not in ("forgejo", "gitea"):
            raise ValueError(f"mode must be forgejo or gitea, not {mode!r}")
        self.mode = mode
        self.declare_supported = declare
        self.lock = threading.RLock()
        self.runners: dict[str, FakeRunner] = {}
        self.registration_tokens: dict[str, bool] = {}  # token -> active
        self.runs: dict[int, FakeRun] = {}
        self.jobs: dict[int, FakeJob] = {}
        self.tasks: dict[int, FakeTask] = {}
        self.tasks_version = 0
        self.request_keys: dict[str, list[int]] = {}
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.port = 0
        self.url_path = url_path  # a sub-path the instance lives under, e.g. "/forge"
        self.repositories: dict[str, FakeRepository] = {}  # lower-case owner/name -> repository
        self.git_requests: list[FakeGitRequest] = []
        #: login (lower case) -> public key lines, served as GET /api/v1/users/{login}/keys
        self.user_keys: dict[str, list[str]] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.url_path}"

    def start(self) -> FakeForgejo:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stalls

            def setup(self) -> None:
                super().setup()
                with fake.lock:
                    fake._connections.add(self.connection)

            def finish(self) -> None:
                with fake.lock:
                    fake._connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:  # noqa: N802
                if fake._git_route(self) is not None:
                    fake._git(self)
                else:
                    fake._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                if fake._git_route(self) is not None:
                    fake._git(self)
                elif fake._keys_route(self) is not None:
                    fake._keys(self)
                else:
                    fake._reply(self, 405, b"Method Not Allowed\n", "text/plain")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:  # kept-alive connections too: nothing answers until up()
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._connections.clear()

    def down(self) -> None:
        """Stop answering: the port is closed (connection refused) until ``up()``."""
        self.stop()

    def up(self) -> None:
        if self._server is None:
            self.start()

    def __enter__(self) -> FakeForgejo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- administration (what an admin or user does in the UI) -------------------------------

    def create_registration_token(self) -> str:
        token = secrets_mod.token_hex(20)
        with self.lock:
            self.registration_tokens[token] = True
        return token

    def invalidate_registration_token(self, token: str) -> None:
        with self.lock:
            self.registration_tokens[token] = False

    def delete_runner(self, uuid: str) -> None:
        """The admin deletes the runner: its calls fail as "unregistered runner"."""
        with self.lock:
            self.runners.pop(uuid, None)

    def add_runner(self, name: str, labels: Sequence[str], *, ephemeral: bool = False) -> FakeRunner:
        """A registered runner without going through Register (tests of later RPCs)."""
        with self.lock:
            r = FakeRunner(
                id=next(self._ids),
                uuid=str(uuid_mod.uuid4()),
                token=secrets_mod.token_hex(20),
                name=name,
                labels=list(labels),
                ephemeral=ephemeral,
            )
            self.runners[r.uuid] = r
            return r

    def cancel(self, task_id: int) -> None:
        """A user cancels the job: the task is done (cancelled), its unfinished steps too (§3.7)."""
        with self.lock:
            task = self.tasks[task_id]
            self._finish(task, "cancelled", datetime.now(UTC))

    def add_repository(
        self, full_name: str, path: Path, *, public: bool = False, sha_fetch: bool = True
    ) -> FakeRepository:
        """Serve the git repository at ``path`` as ``<url>/<full_name>.git`` (read-only)."""
        if full_name.count("/") != 1:
            raise ValueError(f"a repository is owner/name, not {full_name!r}")
        repo = FakeRepository(full_name, Path(path), public=public, sha_fetch=sha_fetch)
        with self.lock:
            self.repositories[full_name.lower()] = repo
        return repo

    def task_of(self, job: FakeJob) -> FakeTask | None:
        with self.lock:
            return self.tasks.get(job.task_id) if job.task_id else None

    def enqueue(
        self,
        workflow_yaml: str,
        *,
        workflow: str = "ci.yml",
        repository: str = "owner/repo",
        sha: str = "0123456789abcdef0123456789abcdef01234567",
        ref: str = "refs/heads/main",
        event_name: str = "push",
        event: Mapping[str, Any] | None = None,
        actor: str = "alice",
        secrets: Mapping[str, str] | None = None,
        vars: Mapping[str, str] | None = None,
    ) -> list[FakeJob]:
        """A run of ``workflow_yaml``: one job per job id and matrix combination, expanded as the
        server's jobparser does (§3.4). Jobs with ``needs`` wait until those end."""
        doc = _plain(load_yaml(workflow_yaml))
        if not isinstance(doc, dict) or not isinstance(doc.get("jobs"), dict):
            raise ValueError("a workflow needs a `jobs:` mapping")
        top = {k: v for k, v in doc.items() if k != "jobs"}
        with self.lock:
            run = FakeRun(
                id=next(self._ids),
                number=len(self.runs) + 1,
                repository=repository,
                workflow=workflow,
                sha=sha,
                ref=ref,
                event_name=event_name,
                event=dict(event or {}),
                actor=actor,
                secrets=dict(secrets or {}),
                vars=dict(vars or {}),
            )
            self.runs[run.id] = run
            created: list[FakeJob] = []
            for key, node in doc["jobs"].items():
                node = dict(node or {})
                needs = node.get("needs") or []
                needs = [needs] if isinstance(needs, str) else [str(n) for n in needs]
                strategy = dict(node.get("strategy") or {})
                raw_matrix = strategy.get("matrix")
                combos: list[dict[str, Any]] = matrix_mod.expand(raw_matrix) if raw_matrix else [{}]
                for combo in combos:
                    created.append(self._make_job(run, top, key, node, needs, strategy, combo))
            if any(j.status == "waiting" for j in created):
                self.tasks_version += 1  # a job entered `waiting` (§3.3)
            return created

    def _make_job(
        self,
        run: FakeRun,
        top: dict[str, Any],
        key: str,
        node: dict[str, Any],
        needs: list[str],
        strategy: dict[str, Any],
        combo: dict[str, Any],
    ) -> FakeJob:
        ctx = expr.Context({"matrix": combo, "github": {"repository": run.repository, "ref": run.ref}})
        raw_name = node.get("name")
        name = str(raw_name) if raw_name is not None else key
        if expr.contains_expression(name):
            name = expr.interpolate(name, ctx)
        elif combo:
            name += matrix_suffix(combo)
        runs_on_raw = node.get("runs-on")
        if isinstance(runs_on_raw, str) and expr.contains_expression(runs_on_raw):
            runs_on_raw = expr.evaluate_value(runs_on_raw, ctx)
        elif isinstance(runs_on_raw, list):
            runs_on_raw = [
                expr.interpolate(v, ctx) if isinstance(v, str) and expr.contains_expression(v) else v
                for v in runs_on_raw
            ]
        job_node = {"name": name, **{k: v for k, v in node.items() if k != "name"}}
        if runs_on_raw is not None:
            job_node["runs-on"] = runs_on_raw
        if combo:
            job_node["strategy"] = {**strategy, "matrix": {k: [v] for k, v in combo.items()}}
        payload = yaml.safe_dump({**top, "jobs": {key: job_node}}, sort_keys=False).encode()
        job = FakeJob(
            id=next(self._ids),
            run_id=run.id,
            key=key,
            name=name,
            runs_on=_labels(runs_on_raw),
            needs=needs,
            payload=payload,
            matrix=combo,
            if_=str(node.get("if", "") or ""),
            status="blocked" if needs else "waiting",
        )
        self.jobs[job.id] = job
        run.job_ids.append(job.id)
        return job

    # --- HTTP ----------------------------------------------------------------------------------

    def _reply(self, h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
        gz = "gzip" in h.headers.get("Accept-Encoding", "") and len(body) > 1024  # WithCompressMinBytes
        if gz:
            body = gzip.compress(body)
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        if gz:
            h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _error(self, h: BaseHTTPRequestHandler, err: RPCError) -> None:
        if self.mode == "gitea":  # grpc status / errors.New reach the wire as `unknown` (§1.4)
            msg = f"rpc error: code = {err.grpc} desc = {err.message}" if err.grpc else err.message
            body = {"code": "unknown", "message": msg}
            status = 500
        else:
            body = {"code": err.code, "message": err.message}
            status = _HTTP_OF[err.code]
        self._reply(h, status, json.dumps(body).encode(), "application/json")

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length", "0") or 0)
        raw = h.rfile.read(length) if length else b""
        prefix = self.url_path + "/api/actions/"
        path = h.path.split("?", 1)[0]
        procedures = {
            "ping.v1.PingService/Ping": (m.PingRequest, self._ping, False),
            "runner.v1.RunnerService/Register": (m.RegisterRequest, self._register, False),
            "runner.v1.RunnerService/Declare": (m.DeclareRequest, self._declare, True),
            "runner.v1.RunnerService/FetchTask": (m.FetchTaskRequest, self._fetch_task, True),
            "runner.v1.RunnerService/UpdateTask": (m.UpdateTaskRequest, self._update_task, True),
            "runner.v1.RunnerService/UpdateLog": (m.UpdateLogRequest, self._update_log, True),
        }
        proc = path[len(prefix) :] if path.startswith(prefix) else ""
        if proc not in procedures or (proc.endswith("/Declare") and not self.declare_supported):
            self._reply(h, 404, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        ctype = h.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype != "application/json":  # this fake implements the JSON codec only
            self._reply(h, 415, b"", "text/plain")
            return
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self.lock:
            self.requests.append((proc, {k.lower(): v for k, v in h.headers.items()}, body))
        req_type, handler, auth = procedures[proc]
        try:
            if not raw:
                raise RPCError(
                    "invalid_argument",
                    "unmarshal into message: zero-length payload is not a valid JSON object",
                    "InvalidArgument",
                )
            if not isinstance(body, dict):
                raise RPCError("invalid_argument", "unmarshal into message: invalid JSON", "InvalidArgument")
            try:
                req = m.from_json(req_type, body)
            except (m.CodecError, TypeError) as exc:
                raise RPCError(
                    "invalid_argument", f"unmarshal into message: {exc}", "InvalidArgument"
                ) from None
            with self.lock:
                runner = self._authenticate(h) if auth else None
                resp = handler(req, runner, h) if auth else handler(req, None, h)
        except RPCError as err:
            self._error(h, err)
            return
        self._reply(h, 200, m.encode(resp), "application/json")

    # --- git over smart HTTP ------------------------------------------------------------------

    def _keys_route(self, h: BaseHTTPRequestHandler) -> str | None:
        """The user of ``GET <root>/api/v1/users/{username}/keys`` (public, no token)."""
        match = re.fullmatch(re.escape(self.url_path) + r"/api/v1/users/([^/?]+)/keys(\?.*)?", h.path)
        return match.group(1) if match else None

    def _keys(self, h: BaseHTTPRequestHandler) -> None:
        """Forgejo's ListPublicKeys: a JSON list of PublicKey objects; 404 for no such user."""
        login = self._keys_route(h)
        assert login is not None
        with self.lock:
            self.requests.append(("GET /api/v1/users/keys", dict(h.headers), login))
            keys = self.user_keys.get(login.lower())
        if keys is None:
            said = f"user redirect does not exist [name: {login}]"
            body = {"message": said, "url": self.url + "/api/swagger"}
            self._reply(h, 404, json.dumps(body).encode(), "application/json")
            return
        made = "2026-01-01T00:00:00Z"
        listed = [
            {
                "id": 10 + i,
                "key": key,
                "url": f"{self.url}/api/v1/user/keys/{10 + i}",
                "title": f"key {i + 1}",
                "fingerprint": "SHA256:fake",
                "created_at": made,
                "read_only": False,
                "key_type": "user",
            }
            for i, key in enumerate(keys)
        ]
        self._reply(h, 200, json.dumps(listed).encode(), "application/json")

    def _git_route(self, h: BaseHTTPRequestHandler) -> tuple[str, str] | None:
        """(owner/name, endpoint) when ``h`` asks for a repository's git endpoint."""
        path = h.path.split("?", 1)[0]
        if not path.startswith(self.url_path + "/"):
            return None
        match = _GIT_PATH.fullmatch(path[len(self.url_path) :])
        return (f"{match[1]}/{match[2]}", match[3]) if match else None

    def _git_user(self, h: BaseHTTPRequestHandler) -> tuple[str, str] | None:
        """(user, token) from HTTP Basic auth; None when no usable Authorization was sent."""
        scheme, _, value = h.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        # Gitea's basic auth: the token is the password, or the user name with an empty password.
        return user, password if password not in ("", "x-oauth-basic") else user

    def _git_reply(self, h: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "text/plain; charset=utf-8")
        for name, value in headers.items():
            h.send_header(name.replace("_", "-"), value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _git(self, h: BaseHTTPRequestHandler) -> None:
        route = self._git_route(h)
        assert route is not None
        full_name, endpoint = route
        body = read_git_body(h)
        path, _, query = h.path.partition("?")
        service = endpoint if endpoint != "info/refs" else ""
        for part in query.split("&"):
            if part.startswith("service="):
                service = part[len("service=") :]
        auth = self._git_user(h)
        record = FakeGitRequest(
            method=h.command,
            path=path,
            service=service,
            repository=full_name,
            user=auth[0] if auth else "",
            protocol=h.headers.get("Git-Protocol", ""),
        )
        with self.lock:
            self.git_requests.append(record)
            repo = self.repositories.get(full_name.lower())
            task = None
            if auth is not None:
                task = next(
                    (
                        t
                        for t in self.tasks.values()
                        if t.status not in DONE and secrets_mod.compare_digest(t.token, auth[1])
                    ),
                    None,
                )
            task_repo = self.runs[task.job.run_id].repository.lower() if task else ""
        if repo is None:
            record.status = 404
            self._git_reply(h, 404, b"Repository not found\n")
            return
        if task is None and (auth is not None or not repo.public):
            # no token, or one that is not a running task's: ask for credentials (Gitea's realm)
            record.status = 401
            self._git_reply(h, 401, b"Unauthorized\n", WWW_Authenticate='Basic realm="Gitea"')
            return
        if task is not None:
            record.task_id = task.id
            # the token of another repository's task (it may read public repositories, as on
            # Forgejo: a public submodule is fetched with the task token)
            if task_repo != full_name.lower() and not repo.public:
                record.status = 403
                self._git_reply(h, 403, b"User permission denied\n")
                return
        if service != "git-upload-pack":  # read-only: no pushes, no dumb HTTP
            record.status = 403
            self._git_reply(h, 403, b"User permission denied\n")
            return
        record.status = http_backend(
            h, repo.git_dir, repo.full_name, endpoint, query, body, record.user, sha_fetch=repo.sha_fetch
        )

    def _authenticate(self, h: BaseHTTPRequestHandler) -> FakeRunner:
        uuid = h.headers.get("x-runner-uuid", "")
        token = h.headers.get("x-runner-token", "")
        runner = self.runners.get(uuid)
        if runner is None:
            raise RPCError("unauthenticated", "unregistered runner", "Unauthenticated")
        if not secrets_mod.compare_digest(runner.token, token):
            raise RPCError("unauthenticated", "runner token mismatch", "Unauthenticated")
        runner.calls += 1  # last_online
        return runner

    # --- the RPCs --------------------------------------------------------------------------------

    def _ping(self, req: m.PingRequest, runner: None, h: BaseHTTPRequestHandler) -> m.PingResponse:
        return m.PingResponse(data=f"Hello, {req.data}!")

    def _register(
        self, req: m.RegisterRequest, runner: None, h: BaseHTTPRequestHandler
    ) -> m.RegisterResponse:
        if not req.token or not req.name:
            raise RPCError("invalid_argument", "missing runner token, name", "InvalidArgument")
        active = self.registration_tokens.get(req.token)
        if active is None:
            raise RPCError("invalid_argument", "runner registration token not found", "")
        if not active:
            raise RPCError(
                "invalid_argument",
                "runner registration token has been invalidated, please use the latest one",
                "",
            )
        labels = list(req.labels or req.agent_labels)
        r = FakeRunner(
            id=next(self._ids),
            uuid=str(uuid_mod.uuid4()),
            token=secrets_mod.token_hex(20),
            name=req.name[:255],
            labels=labels,
            version=req.version,
            ephemeral=req.ephemeral,
        )
        self.runners[r.uuid] = r
        return m.RegisterResponse(runner=self._runner_message(r))

    def _runner_message(self, r: FakeRunner) -> m.Runner:
        return m.Runner(
            id=r.id,
            uuid=r.uuid,
            token=r.token,
            name=r.name,
            version=r.version,
            labels=tuple(r.labels),
            agent_labels=tuple(r.labels),
            ephemeral=r.ephemeral,
        )

    def _declare(
        self, req: m.DeclareRequest, runner: FakeRunner, h: BaseHTTPRequestHandler
    ) -> m.DeclareResponse:
        runner.labels = list(req.labels)
        runner.version = req.version
        return m.DeclareResponse(runner=self._runner_message(runner))

    def _fetch_task(
        self, req: m.FetchTaskRequest, runner: FakeRunner, h: BaseHTTPRequestHandler
    ) -> m.FetchTaskResponse:
        key = h.headers.get("x-runner-request-key", "") if self.mode == "forgejo" else ""
        if key and key in self.request_keys:  # a retried call: re-send what was assigned (§1.2)
            again = [self.tasks[t] for t in self.request_keys[key] if self.tasks[t].status == "running"]
            for t in again:
                t.token = secrets_mod.token_hex(20)
                self._fill_tokens(t)
            return m.FetchTaskResponse(task=again[0].to_message() if again else None, tasks_version=0)
        if self.tasks_version == 0:
            self.tasks_version = 1  # "else the runner will treat it as an old version of Gitea"
        latest = self.tasks_version
        task = None
        if req.tasks_version != latest:
            task = self._pick(runner)
            if task is not None and key:
                self.request_keys[key] = [task.id]
        return m.FetchTaskResponse(task=task.to_message() if task else None, tasks_version=latest)

    def _matches(self, runner: FakeRunner, job: FakeJob) -> bool:
        if self.mode == "forgejo" and (not job.runs_on or not runner.labels):
            return False  # ItRunsOn: never on an empty list (§4)
        return all(label in runner.labels for label in job.runs_on)

    def _pick(self, runner: FakeRunner) -> FakeTask | None:
        if runner.ephemeral and any(t.runner_uuid == runner.uuid for t in self.tasks.values()):
            return None  # ErrEphemeralRunnerHasAssignedTask (§3.9)
        for job in sorted(self.jobs.values(), key=lambda j: j.id):
            if job.status == "waiting" and self._matches(runner, job):
                return self._create_task(runner, job)
        return None

    def _create_task(self, runner: FakeRunner, job: FakeJob) -> FakeTask:
        run = self.runs[job.run_id]
        doc = yaml.safe_load(job.payload)
        steps = next(iter(doc["jobs"].values())).get("steps") or []
        task = FakeTask(
            id=next(self._ids),
            job=job,
            runner_uuid=runner.uuid,
            token=secrets_mod.token_hex(20),
            context={},
            secrets={},
            needs=self._needs_of(job),
            vars=dict(run.vars),
            started_at=datetime.now(UTC),
            steps=[
                FakeStep(i, str(s.get("name") or s.get("run") or s.get("uses") or ""))
                for i, s in enumerate(steps)
            ],
        )
        self._fill_tokens(task)
        job.status = "running"
        job.task_ids.append(task.id)
        self.tasks[task.id] = task
        return task

    def _fill_tokens(self, task: FakeTask) -> None:
        """The task's context and secrets, with its (possibly re-minted) token (§3.4)."""
        job = task.job
        run = self.runs[job.run_id]
        root = self.url + "/"
        owner = run.repository.split("/")[0]
        ref_name = run.ref.rsplit("/", 1)[-1]
        ctx: dict[str, Any] = {
            "action": "",
            "action_path": "",
            "action_ref": "",
            "action_repository": "",
            "action_status": "",
            "actor": run.actor,
            "api_url": root + "api/v1",
            "base_ref": "",
            "env": "",
            "event": run.event,
            "event_name": run.event_name,
            "event_path": "",
            "graphql_url": "",
            "head_ref": "",
            "job": job.key if self.mode == "forgejo" else str(job.id),
            "ref": run.ref,
            "ref_name": ref_name,
            "ref_protected": False,
            "ref_type": "tag" if run.ref.startswith("refs/tags/") else "branch",
            "path": "",
            "repository": run.repository,
            "repository_owner": owner,
            "repositoryUrl": f"{root}{run.repository}.git",
            "retention_days": "90",
            "run_id": str(run.id),
            "run_number": str(run.number),
            "run_attempt": "1",
            "secret_source": "Actions",
            "server_url": root.rstrip("/"),
            "sha": run.sha,
            "token": task.token,
            "triggering_actor": run.actor,
            "workflow": run.workflow,
            "workspace": "",
            "gitea_default_actions_url": "https://github.com",
            "gitea_runtime_token": "runtime-" + task.token,
        }
        secrets = {**run.secrets, "GITHUB_TOKEN": task.token, "GITEA_TOKEN": task.token}
        if self.mode == "forgejo":
            ctx.update(
                {
                    "workflow_ref": f"{run.repository}/.forgejo/workflows/{run.workflow}@{run.ref}",
                    "actor_id": "1",
                    "repository_id": "1",
                    "repository_owner_id": "1",
                    "forgejo_server_version": "fake-1.0",
                    "forgejo_default_actions_url": "https://data.forgejo.org",
                    "gitea_default_actions_url": "https://data.forgejo.org",
                    "forgejo_runtime_token": "runtime-" + task.token,
                }
            )
            secrets["FORGEJO_TOKEN"] = task.token
        task.context = ctx
        task.secrets = secrets

    def _needs_of(self, job: FakeJob) -> dict[str, m.TaskNeed]:
        out: dict[str, m.TaskNeed] = {}
        run = self.runs[job.run_id]
        for key in job.needs:
            instances = [self.jobs[j] for j in run.job_ids if self.jobs[j].key == key]
            outputs: dict[str, str] = {}
            for inst in instances:
                t = self.tasks.get(inst.task_id) if inst.task_id else None
                if t is not None:
                    outputs.update(t.outputs)
            out[key] = m.TaskNeed(
                outputs=outputs, result=_RESULT_OF.get(_aggregate(instances), m.Result.RESULT_UNSPECIFIED)
            )
        return out

    def _update_task(
        self, req: m.UpdateTaskRequest, runner: FakeRunner, h: BaseHTTPRequestHandler
    ) -> m.UpdateTaskResponse:
        state = req.state or m.TaskState()
        task = self.tasks.get(state.id)
        if task is None or task.runner_uuid != runner.uuid:
            raise RPCError("not_found", f"can't find the task: {state.id}", "NotFound")
        for k, v in req.outputs.items():  # first write wins; limits silently drop (§3.5)
            if len(k.encode()) <= 255 and len(v.encode()) <= 1024 * 1024 and k not in task.outputs:
                task.outputs[k] = v
        if task.status not in DONE:  # "the state is final, do nothing" otherwise (§3.6)
            task.updates += 1
            for s in state.steps:
                if 0 <= s.id < len(task.steps):
                    st = task.steps[s.id]
                    st.log_index, st.log_length = s.log_index, s.log_length
                    if s.started_at is not None:
                        st.started_at = s.started_at
                        if st.status == "waiting":
                            st.status = "running"
                    if s.result != m.Result.RESULT_UNSPECIFIED:
                        st.status = _STATUS_OF[s.result]
                        st.stopped_at = s.stopped_at
            if state.result != m.Result.RESULT_UNSPECIFIED:
                # The server uses StoppedAt.AsTime(): an unset timestamp is the epoch (§3.6).
                stopped = state.stopped_at or datetime.fromtimestamp(0, UTC)
                self._finish(task, _STATUS_OF[state.result], stopped)
        return m.UpdateTaskResponse(
            state=m.TaskState(id=task.id, result=task.result), sent_outputs=tuple(task.outputs)
        )

    def _finish(self, task: FakeTask, status: str, stopped: datetime) -> None:
        if task.status in DONE:
            return
        task.status = status
        task.stopped_at = stopped
        task.finished_arrival = time.time()
        for st in task.steps:
            if st.status not in DONE:
                st.status = "cancelled"
                st.stopped_at = st.stopped_at or stopped
        task.job.status = status
        self._emit_jobs_if_ready(self.runs[task.job.run_id])

    def _emit_jobs_if_ready(self, run: FakeRun) -> None:
        jobs = [self.jobs[j] for j in run.job_ids]
        bumped = False
        for job in jobs:
            if job.status != "blocked":
                continue
            needed = [j for j in jobs if j.key in job.needs]
            if any(j.status not in DONE for j in needed):
                continue
            ok = all(j.status == "success" for j in needed)
            if ok or "always()" in job.if_ or "failure()" in job.if_:
                job.status = "waiting"
                bumped = True
            else:
                job.status = "skipped"
        if bumped:
            self.tasks_version += 1

    def _update_log(
        self, req: m.UpdateLogRequest, runner: FakeRunner, h: BaseHTTPRequestHandler
    ) -> m.UpdateLogResponse:
        task = self.tasks.get(req.task_id)
        if task is None or task.runner_uuid != runner.uuid:
            raise RPCError("not_found", f"can't find the task: {req.task_id}", "NotFound")
        if task.archived:
            raise RPCError("already_exists", "log file has been archived", "AlreadyExists")
        ack = len(task.rows)
        rows = req.rows
        if not rows or req.index > ack or req.index + len(rows) <= ack:
            return m.UpdateLogResponse(ack_index=ack)  # nothing written (§3.5)
        arrived = time.time()
        for row in rows[ack - req.index :]:
            task.arrivals.append(arrived)
            when = (row.time or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
            content = row.content.replace("\n", "\\n")[:MAX_LINE]
            task.rows.append((when, content))
        task.updates += 1
        if req.no_more:
            task.archived = True
        return m.UpdateLogResponse(ack_index=len(task.rows))


def _aggregate(instances: Sequence[FakeJob]) -> str:
    statuses = [j.status for j in instances]
    if not statuses or any(s not in DONE for s in statuses):
        return ""
    if "failure" in statuses:
        return "failure"
    if "cancelled" in statuses:
        return "cancelled"
    if all(s == "skipped" for s in statuses):
        return "skipped"
    return "success"
