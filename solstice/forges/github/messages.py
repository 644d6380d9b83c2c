"""What the runner sends to and receives from GitHub, as frozen dataclasses (protocol §3-§7).

Decoding is lenient where the server is (§2): names match case-insensitively (R sends camelCase,
G PascalCase, the REST API snake_case), unknown fields are ignored, and booleans may come as
``"True"``. A required field that is missing or of the wrong type raises :class:`CodecError`
naming its dotted path. Encoders produce exactly the spelling the official runner sends.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# CodecError and Expression are re-exported: callers use m.CodecError and m.Expression
from solstice.forges.github.templates import CodecError as CodecError
from solstice.forges.github.templates import Expression as Expression
from solstice.forges.github.templates import decode_context, decode_token

_MISSING = object()


class Fields:
    """Case-insensitive typed access to one JSON object, naming ``where.field`` in errors."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise CodecError(where, f"expected an object, got {type(data).__name__}")
        self.where = where
        self.data = data
        self._lower = {k.lower(): k for k in data if isinstance(k, str)}

    def raw(self, *names: str) -> Any:
        for name in names:
            key = self._lower.get(name.lower())
            if key is not None and self.data[key] is not None:
                return self.data[key]
        return _MISSING

    def at(self, name: str) -> str:
        return f"{self.where}.{name}"

    def text(self, *names: str, default: str | None = None) -> str:
        value = self.raw(*names)
        if value is _MISSING:
            if default is None:
                raise CodecError(self.at(names[0]), "required field is missing")
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise CodecError(self.at(names[0]), f"expected a string, got {type(value).__name__}")
        return str(value)

    def integer(self, *names: str, default: int | None = None) -> int:
        value = self.raw(*names)
        if value is _MISSING:
            if default is None:
                raise CodecError(self.at(names[0]), "required field is missing")
            return default
        try:
            if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)  # JIT files hold numbers as strings (§13.4)
        except (TypeError, ValueError):
            raise CodecError(self.at(names[0]), f"expected an integer, got {value!r}") from None

    def flag(self, *names: str, default: bool | None = None) -> bool:
        value = self.raw(*names)
        if value is _MISSING:
            if default is None:
                raise CodecError(self.at(names[0]), "required field is missing")
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"  # "True"/"False" in .credentials and JIT (§3.5, §13.4)
        raise CodecError(self.at(names[0]), f"expected a boolean, got {value!r}")

    def child(self, *names: str, required: bool = True) -> Fields | None:
        value = self.raw(*names)
        if value is _MISSING:
            if required:
                raise CodecError(self.at(names[0]), "required field is missing")
            return None
        return Fields(value, self.at(names[0]))

    def items(self, *names: str) -> list[Any]:
        value = self.raw(*names)
        if value is _MISSING:
            return []  # empty lists are omitted, not [] (§13.12)
        if not isinstance(value, list):
            raise CodecError(self.at(names[0]), f"expected a list, got {type(value).__name__}")
        return value


def decode_json(body: bytes | str, where: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise CodecError(where, f"not JSON ({exc})") from None


def _secret_repr(cls: str, **shown: Any) -> str:
    return f"{cls}(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ", <secrets hidden>)"


# --- registration (§3) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TenantCredential:
    """The answer of ``POST {api}/actions/runner-registration`` (§3.2; R GitHubAuthResult)."""

    url: str  # the pipelines tenant, with a trailing "/"
    token_schema: str
    token: str
    use_v2_flow: bool = False  # true: use the runner-admin flow (§3.4)

    def __repr__(self) -> str:
        return _secret_repr("TenantCredential", url=self.url, use_v2_flow=self.use_v2_flow)

    @classmethod
    def from_dict(cls, data: Any) -> TenantCredential:
        f = Fields(data, "runner-registration")
        return cls(
            url=with_slash(f.text("url")),
            token_schema=f.text("token_schema", "tokenSchema"),
            token=f.text("token"),
            use_v2_flow=f.flag("use_v2_flow", "useV2Flow", default=False),
        )


@dataclass(frozen=True)
class Label:
    name: str
    type: str = "user"  # "system" for self-hosted/OS/arch (§3.3)

    def to_dict(self) -> dict[str, Any]:
        return {"id": 0, "name": self.name, "type": self.type}


@dataclass(frozen=True)
class AgentRegistration:
    """The TaskAgent body of the pipelines agent add (§3.3)."""

    name: str
    version: str
    os_description: str
    labels: tuple[Label, ...]
    exponent: str  # base64 big-endian
    modulus: str
    ephemeral: bool = False
    disable_update: bool = True
    agent_id: int = 0  # for a replace (PUT)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.agent_id,
            "name": self.name,
            "version": self.version,
            "osDescription": self.os_description,
            "maxParallelism": 1,
            "createdOn": "0001-01-01T00:00:00",
            "status": 0,
            "provisioningState": "Provisioned",
            "ephemeral": self.ephemeral,
            "disableUpdate": self.disable_update,
            "authorization": {"publicKey": {"exponent": self.exponent, "modulus": self.modulus}},
            "labels": [label.to_dict() for label in self.labels],
        }


def _property(f: Fields, name: str) -> Any:
    """A server-set TaskAgent property: ``{"$type": …, "$value": …}`` or a bare value (§3.3)."""
    props = f.child("properties", required=False)
    if props is None:
        return None
    value = props.raw(name)
    if isinstance(value, dict):
        inner = Fields(value, props.at(name)).raw("$value")
        return None if inner is _MISSING else inner
    return None if value is _MISSING else value


def _opt_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


@dataclass(frozen=True)
class Agent:
    """A TaskAgent as the pipelines service answers (agent add, lookup)."""

    id: int
    name: str
    authorization_url: str = ""
    client_id: str = ""
    server_url_v2: str = ""
    use_v2_flow: bool = False
    require_fips: bool | None = None  # None: the server did not say (R then assumes True, §3.5)

    @classmethod
    def from_dict(cls, data: Any, where: str = "agent") -> Agent:
        f = Fields(data, where)
        auth = f.child("authorization", required=False)
        server_v2 = _property(f, "ServerUrlV2")
        return cls(
            id=f.integer("id"),
            name=f.text("name", default=""),
            authorization_url=auth.text("authorizationUrl", default="") if auth else "",
            client_id=auth.text("clientId", default="") if auth else "",
            server_url_v2=with_slash(str(server_v2)) if server_v2 else "",
            use_v2_flow=bool(_opt_bool(_property(f, "UseV2Flow"))),
            require_fips=_opt_bool(_property(f, "RequireFipsCryptography")),
        )


@dataclass(frozen=True)
class RunnerGroup:
    """A runner group: a pipelines agent pool (§3.3) or a runner-admin group (§3.4), one shape."""

    id: int
    name: str
    is_default: bool = False  # the pool `isInternal`, the group `default`
    is_hosted: bool = False

    @classmethod
    def from_dict(cls, data: Any, where: str = "group") -> RunnerGroup:
        f = Fields(data, where)
        return cls(
            id=f.integer("id"),
            name=f.text("name", default=""),
            is_default=f.flag("isInternal", "default", default=False),
            is_hosted=f.flag("isHosted", "is_hosted", default=False),
        )


@dataclass(frozen=True)
class AdminRegistration:
    """The body of the runner-admin ``POST {api}/actions/runners/register`` (§3.4)."""

    url: str
    group_id: int
    name: str
    version: str
    labels: tuple[Label, ...]
    public_key_xml: str
    ephemeral: bool = False
    updates_disabled: bool = True
    replace_id: int = 0

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "url": self.url,
            "group_id": self.group_id,
            "name": self.name,
            "version": self.version,
            "updates_disabled": self.updates_disabled,
            "ephemeral": self.ephemeral,
            "labels": [label.to_dict() for label in self.labels],
            "public_key": self.public_key_xml,
        }
        if self.replace_id:
            body.update(runner_id=self.replace_id, replace=True)
        return body


@dataclass(frozen=True)
class AdminRunner:
    """The runner-admin register answer (R src/Sdk/DTWebApi/WebApi/Runner.cs)."""

    id: int
    name: str
    authorization_url: str
    server_url: str  # the broker
    client_id: str
    legacy_authorization_url: str = ""

    @classmethod
    def from_dict(cls, data: Any) -> AdminRunner:
        f = Fields(data, "runner")
        auth = f.child("authorization")
        assert auth is not None
        return cls(
            id=f.integer("id"),
            name=f.text("name", default=""),
            authorization_url=auth.text("authorization_url"),
            server_url=with_slash(auth.text("server_url")),
            client_id=auth.text("client_id"),
            legacy_authorization_url=auth.text("legacy_authorization_url", default=""),
        )


# --- local state: .runner and .credentials (§3.5, §13.3, §13.4) --------------------------------


@dataclass(frozen=True)
class RunnerSettings:
    """The official runner's ``.runner`` file."""

    agent_id: int
    agent_name: str
    server_url: str  # the pipelines tenant ("" under runner-admin)
    github_url: str
    pool_id: int = 0
    pool_name: str = ""
    work_folder: str = "_work"
    ephemeral: bool = False
    disable_update: bool = True
    use_v2_flow: bool = False
    server_url_v2: str = ""  # the broker
    use_runner_admin_flow: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "agentId": self.agent_id,
            "agentName": self.agent_name,
            "poolId": self.pool_id,
            "poolName": self.pool_name,
            "serverUrl": self.server_url,
            "gitHubUrl": self.github_url,
            "workFolder": self.work_folder,
            "ephemeral": self.ephemeral,
            "disableUpdate": self.disable_update,
            "useV2Flow": self.use_v2_flow,
            "serverUrlV2": self.server_url_v2,
            "useRunnerAdminFlow": self.use_runner_admin_flow,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = ".runner") -> RunnerSettings:
        f = Fields(data, where)
        server_v2 = f.text("serverUrlV2", default="")
        return cls(
            agent_id=f.integer("agentId"),
            agent_name=f.text("agentName"),
            server_url=with_slash(f.text("serverUrl", default="")),
            github_url=f.text("gitHubUrl"),
            pool_id=f.integer("poolId", default=0),
            pool_name=f.text("poolName", default=""),
            work_folder=f.text("workFolder", default="_work"),
            ephemeral=f.flag("ephemeral", default=False),
            disable_update=f.flag("disableUpdate", default=True),
            # G follows ServerUrlV2 when the flag is absent (§12, G #222)
            use_v2_flow=f.flag("useV2Flow", default=bool(server_v2)),
            server_url_v2=with_slash(server_v2),
            use_runner_admin_flow=f.flag("useRunnerAdminFlow", default=False),
        )


@dataclass(frozen=True)
class OAuthCredentials:
    """The official runner's ``.credentials`` (scheme OAuth): what the JWT assertion needs."""

    client_id: str
    authorization_url: str
    require_fips: bool = True
    authorization_url_v2: str = ""
    oauth_endpoint_url: str = ""  # §13.3: POST here, but `aud` stays the authorization URL

    @property
    def audience(self) -> str:
        """The URL in use: ``authorizationUrlV2`` once migrated (§4)."""
        return self.authorization_url_v2 or self.authorization_url

    @property
    def token_url(self) -> str:
        return self.oauth_endpoint_url or self.audience

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, str] = {
            "clientId": self.client_id,
            "authorizationUrl": self.authorization_url,
            "requireFipsCryptography": str(self.require_fips),  # values are strings (§3.5)
        }
        if self.authorization_url_v2:
            data["authorizationUrlV2"] = self.authorization_url_v2
        if self.oauth_endpoint_url:
            data["oauthEndpointUrl"] = self.oauth_endpoint_url
        return {"scheme": "OAuth", "data": data}

    @classmethod
    def from_dict(cls, data: Any, where: str = ".credentials") -> OAuthCredentials:
        f = Fields(data, where)
        scheme = f.text("scheme")
        if scheme.lower() != "oauth":
            raise CodecError(f.at("scheme"), f"only the OAuth scheme is supported, not {scheme!r}")
        d = f.child("data")
        assert d is not None
        return cls(
            client_id=d.text("clientId"),
            authorization_url=d.text("authorizationUrl"),
            require_fips=d.flag("requireFipsCryptography", default=False),  # false when read (§13.3)
            authorization_url_v2=d.text("authorizationUrlV2", default=""),
            oauth_endpoint_url=d.text("oauthEndpointUrl", default=""),
        )


@dataclass(frozen=True)
class AccessToken:
    """The OAuth answer (§4). ``expires_in`` is ``None`` when the server did not say."""

    access_token: str
    token_type: str = ""
    expires_in: float | None = None

    def __repr__(self) -> str:
        return _secret_repr("AccessToken", token_type=self.token_type, expires_in=self.expires_in)

    @classmethod
    def from_dict(cls, data: Any) -> AccessToken:
        f = Fields(data, "oauth2/token")
        raw = f.raw("expires_in")
        expires: float | None = None
        if raw is not _MISSING:
            try:
                expires = float(raw)
            except (TypeError, ValueError):
                raise CodecError(f.at("expires_in"), f"expected seconds, got {raw!r}") from None
        return cls(
            access_token=f.text("access_token"),
            token_type=f.text("token_type", default=""),
            expires_in=expires,
        )


# --- broker (§5) --------------------------------------------------------------------------------


class RunnerStatus(enum.StrEnum):
    ONLINE = "Online"
    BUSY = "Busy"


@dataclass(frozen=True)
class SessionRequest:
    owner_name: str
    agent_id: int
    agent_name: str
    version: str
    os_description: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "sessionId": "00000000-0000-0000-0000-000000000000",
            "ownerName": self.owner_name,
            "agent": {
                "id": self.agent_id,
                "name": self.agent_name,
                "version": self.version,
                "osDescription": self.os_description,
            },
            "useFipsEncryption": False,
        }


@dataclass(frozen=True)
class Session:
    session_id: str
    owner_name: str = ""
    agent_id: int = 0

    @classmethod
    def from_dict(cls, data: Any) -> Session:
        f = Fields(data, "session")
        agent = f.child("agent", required=False)
        return cls(
            session_id=f.text("sessionId"),
            owner_name=f.text("ownerName", default=""),
            agent_id=agent.integer("id", default=0) if agent else 0,
        )


class MessageType(enum.StrEnum):
    """R: src/Runner.Listener/Runner.cs l.600-830 (§5.5)."""

    RUNNER_JOB_REQUEST = "RunnerJobRequest"
    PIPELINE_AGENT_JOB_REQUEST = "PipelineAgentJobRequest"
    JOB_CANCELLATION = "JobCancellation"
    BROKER_MIGRATION = "BrokerMigration"
    AGENT_REFRESH = "AgentRefresh"
    RUNNER_REFRESH = "RunnerRefresh"
    RUNNER_REFRESH_CONFIG = "RunnerRefreshConfig"
    FORCE_TOKEN_REFRESH = "ForceTokenRefresh"
    RUNNER_SHUTDOWN = "RunnerShutdown"


@dataclass(frozen=True)
class TaskAgentMessage:
    """The broker's envelope; ``body`` is a JSON string (plaintext on the broker, §5.2)."""

    message_id: int
    message_type: str
    body: str = ""
    iv: str = ""

    @classmethod
    def from_dict(cls, data: Any) -> TaskAgentMessage:
        f = Fields(data, "message")
        return cls(
            message_id=f.integer("messageId"),
            message_type=f.text("messageType"),
            body=f.text("body", default=""),
            iv=f.text("iv", default=""),
        )

    @property
    def known_type(self) -> MessageType | None:
        for t in MessageType:
            if t.value.lower() == self.message_type.lower():
                return t
        return None


@dataclass(frozen=True)
class RunnerJobRequest:
    """A reference to a job, to acquire from the run service (R RunnerJobRequestRef.cs)."""

    id: str
    runner_request_id: str
    run_service_url: str
    should_acknowledge: bool = False
    billing_owner_id: str = ""


@dataclass(frozen=True)
class JobCancellation:
    job_id: str
    timeout: str = ""  # a TimeSpan string such as "00:05:00" (§9; format UNCONFIRMED)


@dataclass(frozen=True)
class BrokerMigration:
    broker_base_url: str


@dataclass(frozen=True)
class RunnerRefresh:
    """AgentRefresh and RunnerRefresh: self-update requests; a runner with disableUpdate ignores them."""

    target_version: str
    download_url: str = ""


@dataclass(frozen=True)
class RunnerRefreshConfig:
    runner_qualified_id: str = ""
    config_type: str = ""
    service_type: str = ""
    config_refresh_url: str = ""


@dataclass(frozen=True)
class ForceTokenRefresh:
    pass


@dataclass(frozen=True)
class RunnerShutdown:
    reason: str = ""


@dataclass(frozen=True)
class UnknownMessage:
    message_type: str


BrokerMessage = (
    RunnerJobRequest
    | JobCancellation
    | BrokerMigration
    | RunnerRefresh
    | RunnerRefreshConfig
    | ForceTokenRefresh
    | RunnerShutdown
    | UnknownMessage
)


def decode_body(message: TaskAgentMessage) -> BrokerMessage:
    """The typed body of a broker message (§5.5). Unknown types are returned, not raised."""
    kind = message.known_type
    where = f"message {message.message_id} ({message.message_type}).body"
    if kind is None or kind is MessageType.PIPELINE_AGENT_JOB_REQUEST:
        return UnknownMessage(message.message_type)  # legacy encrypted queue only (§5.4)
    if kind is MessageType.FORCE_TOKEN_REFRESH:
        return ForceTokenRefresh()
    data = decode_json(message.body or "{}", where)
    f = Fields(data, where)
    if kind is MessageType.RUNNER_JOB_REQUEST:
        return RunnerJobRequest(
            id=f.text("id", default=""),
            runner_request_id=f.text("runner_request_id", "runnerRequestId"),
            run_service_url=with_slash(f.text("run_service_url", "runServiceUrl", default="")),
            should_acknowledge=f.flag("should_acknowledge", "shouldAcknowledge", default=False),
            billing_owner_id=f.text("billing_owner_id", "billingOwnerId", default=""),
        )
    if kind is MessageType.JOB_CANCELLATION:
        return JobCancellation(job_id=f.text("jobId"), timeout=f.text("timeout", default=""))
    if kind is MessageType.BROKER_MIGRATION:
        return BrokerMigration(broker_base_url=with_slash(f.text("brokerBaseUrl")))
    if kind in (MessageType.AGENT_REFRESH, MessageType.RUNNER_REFRESH):
        return RunnerRefresh(
            target_version=f.text("target_version", "targetVersion", default=""),
            download_url=f.text("download_url", default=""),
        )
    if kind is MessageType.RUNNER_REFRESH_CONFIG:
        return RunnerRefreshConfig(
            runner_qualified_id=f.text("runnerQualifiedId", default=""),
            config_type=f.text("configType", default=""),
            service_type=f.text("serviceType", default=""),
            config_refresh_url=f.text("configRefreshURL", default=""),
        )
    return RunnerShutdown(reason=f.text("reason", default=""))


# --- the job message (§6.2) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    value: str
    is_secret: bool = False

    def __repr__(self) -> str:
        return "Variable(***, secret)" if self.is_secret else f"Variable({self.value!r})"

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "isSecret": self.is_secret}


@dataclass(frozen=True)
class MaskHint:
    type: str  # "regex" (R MaskHint.cs; "value" also seen)
    value: str = field(repr=False)


@dataclass(frozen=True)
class ServiceEndpoint:
    name: str
    url: str
    scheme: str = ""
    parameters: Mapping[str, str] = field(default_factory=dict, repr=False)  # holds the AccessToken
    data: Mapping[str, str] = field(default_factory=dict)

    @property
    def access_token(self) -> str:
        for k, v in self.parameters.items():
            if k.lower() == "accesstoken":
                return v
        return ""


@dataclass(frozen=True)
class StepReference:
    type: str  # "script" | "repository" | "containerRegistry" (compare case-insensitively, §6.2)
    name: str = ""
    ref: str = ""
    path: str = ""


@dataclass(frozen=True)
class JobStep:
    """One step; token-valued fields are decoded (Expression for what the runner evaluates)."""

    id: str
    reference: StepReference
    name: str = ""  # the generated context name, e.g. "__run" (§13.10); never shown to users
    context_name: str = ""
    display_name: Any = ""  # str or Expression
    condition: str = "success()"  # a plain expression string (§8.4)
    inputs: Mapping[str, Any] = field(default_factory=dict)
    environment: Mapping[str, Any] = field(default_factory=dict)
    continue_on_error: Any = False
    timeout_in_minutes: Any = None
    type: str = "action"

    @property
    def is_script(self) -> bool:
        return self.reference.type.lower() == "script"


@dataclass(frozen=True)
class PlanReference:
    plan_id: str
    scope_identifier: str = ""
    plan_type: str = "Actions"
    version: int = 0


SYSTEM_CONNECTION = "SystemVssConnection"
RESULTS_ENDPOINT_VARIABLE = "system.github.results_endpoint"
_NOT_SECRETS_CONTEXT = ("system.github.token", "system.accesstoken")


def _token_mapping(value: Any, where: str) -> dict[str, Any]:
    decoded = decode_token(value, where)
    if decoded is None:
        return {}
    if not isinstance(decoded, dict):
        raise CodecError(where, "expected a mapping token")
    return decoded


@dataclass(frozen=True)
class AgentJobRequestMessage:
    """The acquired job (R AgentJobRequestMessage.cs). Fields the runner cannot honour (debugger,
    lockfile dependencies, §12) are not kept."""

    plan: PlanReference
    job_id: str
    job_display_name: str
    job_name: str
    request_id: int
    timeline_id: str = ""
    billing_owner_id: str = ""
    steps: tuple[JobStep, ...] = ()
    variables: Mapping[str, Variable] = field(default_factory=dict)
    mask: tuple[MaskHint, ...] = ()
    endpoints: tuple[ServiceEndpoint, ...] = ()
    context_data: Mapping[str, Any] = field(default_factory=dict)
    environment_variables: tuple[Mapping[str, Any], ...] = ()  # workflow, then job `env:`, in order
    defaults: tuple[Mapping[str, Any], ...] = ()
    job_outputs: Mapping[str, Any] = field(default_factory=dict)
    file_table: tuple[str, ...] = ()

    @property
    def system_connection(self) -> ServiceEndpoint:
        for ep in self.endpoints:
            if ep.name.lower() == SYSTEM_CONNECTION.lower():
                return ep
        raise CodecError("job.resources.endpoints", f"no {SYSTEM_CONNECTION} endpoint")

    @property
    def results_url(self) -> str:
        var = next((v for k, v in self.variables.items() if k.lower() == RESULTS_ENDPOINT_VARIABLE), None)
        url = var.value if var else self.system_connection.data.get("ResultsServiceUrl", "")
        if not url:
            raise CodecError("job.variables", f"no {RESULTS_ENDPOINT_VARIABLE} and no ResultsServiceUrl")
        return with_slash(url)

    @property
    def secret_values(self) -> tuple[str, ...]:
        """Every value to mask in logs: secret variables and the mask hints' values."""
        values = [v.value for v in self.variables.values() if v.is_secret and v.value]
        return tuple(values + [m.value for m in self.mask if m.value])

    @property
    def secrets_context(self) -> dict[str, str]:
        """The ``secrets`` context: secret variables minus the system tokens (§6.2, §13.12)."""
        return {
            k: v.value
            for k, v in self.variables.items()
            if v.is_secret and k.lower() not in _NOT_SECRETS_CONTEXT
        }

    @classmethod
    def from_dict(cls, data: Any) -> AgentJobRequestMessage:
        f = Fields(data, "job")
        plan = f.child("plan")
        assert plan is not None
        timeline = f.child("timeline", required=False)
        steps = tuple(_step(s, f"job.steps[{i}]") for i, s in enumerate(f.items("steps")))
        variables: dict[str, Variable] = {}
        var_obj = f.child("variables", required=False)
        for name, raw in (var_obj.data if var_obj else {}).items():
            v = Fields(raw, f"job.variables.{name}")
            variables[name] = Variable(
                value=v.text("value", default=""), is_secret=v.flag("isSecret", default=False)
            )
        mask = []
        for i, raw in enumerate(f.items("mask")):
            h = Fields(raw, f"job.mask[{i}]")
            mask.append(MaskHint(type=h.text("type", default="regex"), value=h.text("value")))
        resources = f.child("resources", required=False)
        endpoints = tuple(
            _endpoint(e, f"job.resources.endpoints[{i}]")
            for i, e in enumerate(resources.items("endpoints") if resources else [])
        )
        ctx_obj = f.child("contextData", required=False)
        context = {
            k: decode_context(v, f"job.contextData.{k}")
            for k, v in (ctx_obj.data if ctx_obj else {}).items()
        }
        return cls(
            plan=PlanReference(
                plan_id=plan.text("planId"),
                scope_identifier=plan.text("scopeIdentifier", default=""),
                plan_type=plan.text("planType", default="Actions"),
                version=plan.integer("version", default=0),
            ),
            job_id=f.text("jobId"),
            job_display_name=f.text("jobDisplayName", default=""),
            job_name=f.text("jobName", default="__default"),
            request_id=f.integer("requestId", default=0),
            timeline_id=timeline.text("id", default="") if timeline else "",
            billing_owner_id=f.text("billingOwnerId", default=""),
            steps=steps,
            variables=variables,
            mask=tuple(mask),
            endpoints=endpoints,
            context_data=context,
            environment_variables=tuple(
                _token_mapping(t, f"job.environmentVariables[{i}]")
                for i, t in enumerate(f.items("environmentVariables"))
            ),
            defaults=tuple(
                _token_mapping(t, f"job.defaults[{i}]") for i, t in enumerate(f.items("defaults"))
            ),
            job_outputs=_token_mapping(
                f.raw("jobOutputs") if f.raw("jobOutputs") is not _MISSING else None, "job.jobOutputs"
            ),
            file_table=tuple(str(x) for x in f.items("fileTable")),
        )


def _endpoint(data: Any, where: str) -> ServiceEndpoint:
    f = Fields(data, where)
    auth = f.child("authorization", required=False)
    params = auth.child("parameters", required=False) if auth else None
    extra = f.child("data", required=False)
    return ServiceEndpoint(
        name=f.text("name"),
        url=with_slash(f.text("url")),
        scheme=auth.text("scheme", default="") if auth else "",
        parameters={k: str(v) for k, v in (params.data if params else {}).items()},
        data={k: str(v) for k, v in (extra.data if extra else {}).items() if v is not None},
    )


def _step(data: Any, where: str) -> JobStep:
    f = Fields(data, where)
    ref = f.child("reference")
    assert ref is not None
    display = f.raw("displayNameToken")
    condition = f.text("condition", default="").strip()
    return JobStep(
        id=f.text("id"),
        type=f.text("type", default="action"),
        reference=StepReference(
            type=ref.text("type"),
            name=ref.text("name", default=""),
            ref=ref.text("ref", default=""),
            path=ref.text("path", default=""),
        ),
        name=f.text("name", default=""),
        context_name=f.text("contextName", default=""),
        display_name=decode_token(display, f"{where}.displayNameToken")
        if display is not _MISSING
        else f.text("displayName", default=""),
        condition=condition or "success()",  # missing or empty means success() (§8.4)
        inputs=_token_mapping(
            f.raw("inputs") if f.raw("inputs") is not _MISSING else None, f"{where}.inputs"
        ),
        environment=_token_mapping(
            f.raw("environment") if f.raw("environment") is not _MISSING else None, f"{where}.environment"
        ),
        continue_on_error=decode_token(f.raw("continueOnError"), f"{where}.continueOnError")
        if f.raw("continueOnError") is not _MISSING
        else False,
        timeout_in_minutes=decode_token(f.raw("timeoutInMinutes"), f"{where}.timeoutInMinutes")
        if f.raw("timeoutInMinutes") is not _MISSING
        else None,
    )


# --- run service (§6.1, §6.3, §6.4) --------------------------------------------------------------


@dataclass(frozen=True)
class AcquireJobRequest:
    job_message_id: str  # runner_request_id, never the body's id (§13.8)
    runner_os: str
    billing_owner_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "jobMessageId": self.job_message_id,
            "runnerOS": self.runner_os,
            "billingOwnerId": self.billing_owner_id,
        }


@dataclass(frozen=True)
class RenewJobResponse:
    locked_until: str

    @classmethod
    def from_dict(cls, data: Any) -> RenewJobResponse:
        return cls(locked_until=Fields(data, "renewjob").text("lockedUntil"))


class TaskResult(enum.StrEnum):
    """R TaskResult.cs, camelCase on the wire (§6.4)."""

    SUCCEEDED = "succeeded"
    SUCCEEDED_WITH_ISSUES = "succeededWithIssues"
    FAILED = "failed"
    CANCELED = "canceled"
    SKIPPED = "skipped"
    ABANDONED = "abandoned"


class RecordState(enum.StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "inProgress"
    COMPLETED = "completed"


class AnnotationLevel(enum.StrEnum):
    # R's enum names; G sends these upper-case forms and the server accepts them (§6.4)
    UNKNOWN = "UNKNOWN"
    NOTICE = "NOTICE"
    WARNING = "WARNING"
    FAILURE = "FAILURE"


def _present(body: dict[str, Any]) -> dict[str, Any]:
    """R's contracts are ``EmitDefaultValue = false``: empty and default fields are left out."""
    return {k: v for k, v in body.items() if v not in (None, "", 0, False, [], {})}


@dataclass(frozen=True)
class Annotation:
    """R src/Sdk/RSWebApi/Contracts/Annotation.cs"""

    level: AnnotationLevel
    message: str
    title: str = ""
    raw_details: str = ""
    path: str = ""
    start_line: int = 0
    end_line: int = 0
    start_column: int = 0
    end_column: int = 0
    step_number: int = 0
    is_infrastructure_issue: bool = False

    def to_dict(self) -> dict[str, Any]:
        return _present(
            {
                "level": self.level.value,
                "message": self.message,
                "title": self.title,
                "rawDetails": self.raw_details,
                "path": self.path,
                "isInfrastructureIssue": self.is_infrastructure_issue,
                "startLine": self.start_line,
                "endLine": self.end_line,
                "startColumn": self.start_column,
                "endColumn": self.end_column,
                "stepNumber": self.step_number,
            }
        )


@dataclass(frozen=True)
class StepResult:
    """R src/Sdk/RSWebApi/Contracts/StepResult.cs (snake_case names; status and conclusion are
    always sent, the rest only when set)."""

    external_id: str
    number: int
    name: str
    status: RecordState
    conclusion: TaskResult | None = None
    started_at: str = ""
    completed_at: str = ""
    action_name: str = ""
    type: str = "run"
    annotations: tuple[Annotation, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        body = _present(
            {
                "external_id": self.external_id,
                "number": self.number,
                "name": self.name,
                "action_name": self.action_name,
                "type": self.type,
                "started_at": self.started_at,
                "completed_at": self.completed_at,
                "annotations": [a.to_dict() for a in self.annotations],
            }
        )
        body["status"] = self.status.value
        body["conclusion"] = self.conclusion.value if self.conclusion else None
        return body


#: ``infrastructureFailureCategory`` is a free snake_case string (R #4073: the category of the
#: first infrastructure annotation; R's own is "debugger_tunnel_failure"). Solstice's, for a VM
#: or host failure that is not the build's fault:
SOLSTICE_INFRASTRUCTURE_FAILURE = "solstice_infrastructure_failure"


@dataclass(frozen=True)
class CompleteJobRequest:
    """R src/Sdk/RSWebApi/Contracts/CompleteJobRequest.cs"""

    plan_id: str
    job_id: str
    conclusion: TaskResult
    outputs: Mapping[str, Variable] = field(default_factory=dict)
    step_results: tuple[StepResult, ...] = ()
    annotations: tuple[Annotation, ...] = ()
    billing_owner_id: str = ""
    environment_url: str = ""
    infrastructure_failure_category: str = ""  # "" for a build's own result

    def to_dict(self) -> dict[str, Any]:
        body = _present(
            {
                "planId": self.plan_id,
                "jobId": self.job_id,
                "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
                "stepResults": [s.to_dict() for s in self.step_results],
                "annotations": [a.to_dict() for a in self.annotations],
                "environmentUrl": self.environment_url,
                "billingOwnerId": self.billing_owner_id,
                "infrastructureFailureCategory": self.infrastructure_failure_category,
            }
        )
        body["conclusion"] = self.conclusion.value
        return body


# --- results service (§7.1); twirp JSON with snake_case names and numeric enums ------------------


class StepStatus(enum.IntEnum):
    UNKNOWN = 0
    IN_PROGRESS = 3
    PENDING = 5
    COMPLETED = 6


class StepConclusion(enum.IntEnum):
    UNKNOWN = 0
    SUCCESS = 2  # also succeededWithIssues
    FAILURE = 3
    CANCELLED = 4
    SKIPPED = 7


@dataclass(frozen=True)
class WorkflowStep:
    external_id: str
    number: int
    name: str
    status: StepStatus
    started_at: str = ""
    completed_at: str = ""
    conclusion: StepConclusion = StepConclusion.UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        # R Contracts.cs Step: every field is sent, the times as null until known
        return {
            "external_id": self.external_id,
            "number": self.number,
            "name": self.name,
            "status": int(self.status),
            "started_at": self.started_at or None,
            "completed_at": self.completed_at or None,
            "conclusion": int(self.conclusion),
        }


@dataclass(frozen=True)
class WorkflowStepsUpdate:
    plan_id: str
    job_id: str
    change_order: int  # monotonic per job, from 1
    steps: tuple[WorkflowStep, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": [s.to_dict() for s in self.steps],
            "change_order": self.change_order,
            "workflow_job_run_backend_id": self.job_id,
            "workflow_run_backend_id": self.plan_id,
        }


@dataclass(frozen=True)
class LogsTarget:
    """Which log: the job's (``step_id`` empty) or one step's. Body of Get*SignedBlobURL."""

    plan_id: str
    job_id: str
    step_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"workflow_run_backend_id": self.plan_id, "workflow_job_run_backend_id": self.job_id}
        if self.step_id:
            out["step_backend_id"] = self.step_id
        return out


class BlobStorageType(enum.StrEnum):
    AZURE = "BLOB_STORAGE_TYPE_AZURE"
    UNSPECIFIED = "BLOB_STORAGE_TYPE_UNSPECIFIED"


@dataclass(frozen=True)
class SignedBlobURL:
    url: str = field(repr=False)  # its query string is the credential (§13.13)
    blob_storage_type: str = BlobStorageType.AZURE.value
    soft_size_limit: int | None = None

    @classmethod
    def from_dict(cls, data: Any, url_field: str = "logs_url") -> SignedBlobURL:
        f = Fields(data, "signed blob url")
        raw = f.raw("soft_size_limit")
        limit: int | None = None
        if raw is not _MISSING:
            limit = f.integer("soft_size_limit")  # a number in R, a string in G/OAS (§13.13)
        return cls(
            url=f.text(url_field),
            blob_storage_type=f.text("blob_storage_type", default=BlobStorageType.UNSPECIFIED.value),
            soft_size_limit=limit,
        )


@dataclass(frozen=True)
class LogsMetadata:
    target: LogsTarget
    uploaded_at: str
    line_count: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.target.to_dict(), "uploaded_at": self.uploaded_at, "line_count": self.line_count}


def decode_ok(data: Any, where: str) -> None:
    """Twirp answers ``{"ok": true}``; ``ok: false`` is an error (§7.1)."""
    if not Fields(data, where).flag("ok", default=False):
        raise CodecError(f"{where}.ok", "the results service answered ok=false")


def with_slash(url: str) -> str:
    """URLs are joined as R does (``new Uri(base, "acquirejob")``): the base needs its "/" (§6.1)."""
    return url if not url or url.endswith("/") else url + "/"
