"""Connect unary RPCs to a Forgejo (or Gitea) server over HTTP/1.1 with ``requests``.

One ``Client`` per runner registration. Every call is ``POST <root>/api/actions/<service>/<Method>``
with a Connect JSON body (forgejo-runner-protocol.md §1.1-§1.3). Errors are classified (§1.4):

* ``RegistrationGone``: HTTP 401, Connect code ``unauthenticated``, or Gitea's HTTP 500 ``unknown``
  "rpc error: code = Unauthenticated desc = unregistered runner". The runner must stop.
* ``ForgeUnavailable``: connection refused/reset, timeouts, HTTP 5xx/429 and the transient Connect
  codes; retry with ``Backoff``/``retry``.
* ``LogArchived``: ``already_exists`` from UpdateLog: the task's log was closed; terminal for it.
* ``Unimplemented``: the procedure does not exist (HTTP 404): an old server (e.g. Declare, §3.2).
* ``ForgeError``: anything else, with the server's message.

``ForgeError``, ``ForgeUnavailable`` and ``RegistrationGone`` are the poller core's
(solstice.forges.core.errors), so the core handles them alike for every forge.
"""

from __future__ import annotations

import json
import re
import time
import uuid as uuid_mod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests

from solstice.backoff import Backoff

# The core's errors (every backend raises the same), re-exported for the Forgejo callers.
from solstice.forges.core.errors import ForgeError as ForgeError
from solstice.forges.core.errors import ForgeUnavailable as ForgeUnavailable
from solstice.forges.core.errors import RegistrationGone as RegistrationGone
from solstice.forges.forgejo import messages as m

T = TypeVar("T")

PING = "ping.v1.PingService/Ping"
REGISTER = "runner.v1.RunnerService/Register"
DECLARE = "runner.v1.RunnerService/Declare"
FETCH_TASK = "runner.v1.RunnerService/FetchTask"
UPDATE_TASK = "runner.v1.RunnerService/UpdateTask"
UPDATE_LOG = "runner.v1.RunnerService/UpdateLog"

UUID_HEADER = "x-runner-uuid"
TOKEN_HEADER = "x-runner-token"
#: Forgejo's idempotency key for FetchTask (§1.2): kept across retries, rotated after a success.
REQUEST_KEY_HEADER = "x-runner-request-key"

DEFAULT_TIMEOUT = 60.0  # FORGEJO_CLIENT_TIMEOUT (§3.3)

# Connect codes that mean "try again later" (§1.4). Forgejo answers `internal` for server-side
# failures and for "request key is currently locked; retry soon".
# A bare `unknown` (Gitea's plain errors.New, e.g. "runner registration token not found") is not
# transient; a response with no Connect error body (a proxy's 502/503/504) is, when it is 5xx or 429.
_TRANSIENT_CODES = {"unavailable", "deadline_exceeded", "resource_exhausted", "aborted", "internal"}
# Gitea wraps grpc status errors: "rpc error: code = Unauthenticated desc = unregistered runner".
_GRPC_RE = re.compile(r"rpc error: code = (\w+) desc = (.*)", re.DOTALL)
_GRPC_TO_CONNECT = {
    "Canceled": "canceled",
    "Unknown": "unknown",
    "InvalidArgument": "invalid_argument",
    "DeadlineExceeded": "deadline_exceeded",
    "NotFound": "not_found",
    "AlreadyExists": "already_exists",
    "PermissionDenied": "permission_denied",
    "ResourceExhausted": "resource_exhausted",
    "FailedPrecondition": "failed_precondition",
    "Aborted": "aborted",
    "OutOfRange": "out_of_range",
    "Unimplemented": "unimplemented",
    "Internal": "internal",
    "Unavailable": "unavailable",
    "DataLoss": "data_loss",
    "Unauthenticated": "unauthenticated",
}


class LogArchived(ForgeError):
    """UpdateLog after the server archived the task's log (``already_exists``, §1.4)."""


class Unimplemented(ForgeError):
    """The server has no such procedure (HTTP 404 / ``unimplemented``): an older server."""


def classify(procedure: str, status: int, body: bytes) -> ForgeError:
    """The error for a non-200 Connect response (§1.4)."""
    code, message = "", ""
    try:
        data = json.loads(body) if body else {}
        if isinstance(data, dict):
            code = str(data.get("code", ""))
            message = str(data.get("message", ""))
    except ValueError:
        pass
    if not code and not message:
        message = body[:200].decode(errors="replace").strip() or f"HTTP {status}"
    effective = code
    grpc = _GRPC_RE.search(message)
    if code == "unknown" and grpc:  # Gitea: the grpc status hidden in an `unknown` error
        effective = _GRPC_TO_CONNECT.get(grpc.group(1), "unknown")
    what = f"{procedure.rsplit('/', 1)[-1]}: {message}" + (
        f" ({code}, HTTP {status})" if code else f" (HTTP {status})"
    )
    kwargs: dict[str, Any] = {"code": code, "status": status, "procedure": procedure}
    if status == 401 or effective == "unauthenticated" or "unregistered runner" in message:
        return RegistrationGone(what, **kwargs)
    if status == 404 or effective == "unimplemented":
        err = Unimplemented(what, **kwargs)
        err.hint = "an older server, or Actions is disabled there, or the URL is not the instance's root"
        return err
    if effective == "already_exists" and procedure == UPDATE_LOG:
        return LogArchived(what, **kwargs)
    if effective in _TRANSIENT_CODES or (not code and (status >= 500 or status == 429)):
        return ForgeUnavailable(what, **kwargs)
    return ForgeError(what, **kwargs)


@dataclass
class Credentials:
    uuid: str
    token: str


class Client:
    """The six RPCs of the protocol. ``root`` is the instance URL (sub-path included)."""

    def __init__(
        self,
        root: str,
        credentials: Credentials | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        user_agent: str = "solstice-ci",
        session: requests.Session | None = None,
        send_request_key: bool = True,
    ) -> None:
        self.base = root.rstrip("/") + "/api/actions"  # §1.1
        self.credentials = credentials
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers.update(
            {
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Connect-Protocol-Version": "1",
                "User-Agent": user_agent,
            }
        )
        self.send_request_key = send_request_key
        self._request_key = str(uuid_mod.uuid4())

    def close(self) -> None:
        self.session.close()

    def call(
        self,
        procedure: str,
        request: Any,
        response_type: type[T],
        *,
        auth: bool = True,
        timeout: float | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> T:
        headers: dict[str, str] = {}
        if auth:
            if self.credentials is None:
                raise ForgeError(f"{procedure}: this runner is not registered (no uuid and token)")
            headers[UUID_HEADER] = self.credentials.uuid
            headers[TOKEN_HEADER] = self.credentials.token
        if extra_headers:
            headers.update(extra_headers)
        t = self.timeout if timeout is None else timeout
        headers["Connect-Timeout-Ms"] = str(int(t * 1000))
        url = f"{self.base}/{procedure}"
        try:
            resp = self.session.post(url, data=m.encode(request), headers=headers, timeout=t)
        except requests.Timeout as exc:
            raise ForgeUnavailable(f"{url}: no answer within {t:g} s ({type(exc).__name__})") from None
        except requests.ConnectionError as exc:
            raise ForgeUnavailable(f"{url}: cannot connect: {_reason(exc)}") from None
        except requests.RequestException as exc:
            raise ForgeError(f"{url}: {exc}", procedure=procedure) from None
        if resp.status_code != 200:
            raise classify(procedure, resp.status_code, resp.content)
        try:
            return m.decode(response_type, resp.content)
        except m.CodecError as exc:
            raise ForgeError(f"{url}: unexpected answer: {exc}", procedure=procedure) from None

    # --- the procedures ------------------------------------------------------------------------

    def ping(self, data: str) -> m.PingResponse:
        return self.call(PING, m.PingRequest(data=data), m.PingResponse, auth=False)

    def register(
        self, *, name: str, token: str, version: str, labels: list[str], ephemeral: bool = False
    ) -> m.Runner:
        """Register with a registration token; returns the Runner whose uuid/token are the
        credentials from now on (§3.1). ``labels`` are names only (§4)."""
        names = tuple(labels)
        req = m.RegisterRequest(
            name=name, token=token, version=version, labels=names, agent_labels=names, ephemeral=ephemeral
        )
        resp = self.call(REGISTER, req, m.RegisterResponse, auth=False)
        if resp.runner is None or not resp.runner.uuid or not resp.runner.token:
            raise ForgeError("Register: the server returned no runner uuid/token", procedure=REGISTER)
        return resp.runner

    def declare(self, *, version: str, labels: list[str]) -> m.Runner | None:
        """Declare labels and version at start; ``None`` on a server without Declare (§3.2)."""
        try:
            resp = self.call(
                DECLARE, m.DeclareRequest(version=version, labels=tuple(labels)), m.DeclareResponse
            )
        except Unimplemented:
            return None
        return resp.runner

    def fetch_task(self, tasks_version: int, *, timeout: float | None = 5.0) -> m.FetchTaskResponse:
        """One FetchTask (default ``fetch_timeout`` 5 s, §3.8). Forgejo's request key is kept until
        a call succeeds, so a retried call gets back the tasks assigned to a lost answer (§1.2)."""
        headers = {REQUEST_KEY_HEADER: self._request_key} if self.send_request_key else None
        resp = self.call(
            FETCH_TASK,
            m.FetchTaskRequest(tasks_version=tasks_version),
            m.FetchTaskResponse,
            timeout=timeout,
            extra_headers=headers,
        )
        self._request_key = str(uuid_mod.uuid4())
        return resp

    def update_task(self, request: m.UpdateTaskRequest) -> m.UpdateTaskResponse:
        return self.call(UPDATE_TASK, request, m.UpdateTaskResponse)

    def update_log(self, request: m.UpdateLogRequest) -> m.UpdateLogResponse:
        return self.call(UPDATE_LOG, request, m.UpdateLogResponse)


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in (
        "Connection refused",
        "Connection reset",
        "Name or service not known",
        "Remote end closed",
    ):
        if marker in text:
            return marker.lower()
    return text[:200]


def retry(
    call: Callable[[], T],
    *,
    attempts: int | None = 10,
    deadline: float | None = None,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``call()`` again after each ``ForgeUnavailable`` until it succeeds, ``attempts`` are used up
    or ``deadline`` seconds passed (then the last ForgeUnavailable is raised). Other errors propagate
    at once. The final report uses 10 attempts from 100 ms doubling (§3.6)."""
    backoff = backoff or Backoff(initial=0.1, maximum=30.0)
    start = clock()
    n = 0
    while True:
        try:
            return call()
        except ForgeUnavailable:
            n += 1
            delay = backoff.next_delay()
            if attempts is not None and n >= attempts:
                raise
            if deadline is not None and clock() - start + delay > deadline:
                raise
            sleep(delay)
