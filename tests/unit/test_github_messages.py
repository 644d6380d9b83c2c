"""GitHub message codecs and TemplateToken/PipelineContextData decoding (no network)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from solstice.forges.core.errors import ForgeError, ForgeUnavailable, RegistrationGone
from solstice.forges.github import messages as m
from solstice.forges.github.client import classify
from solstice.forges.github.errors import JobGone, LeaseLost, SessionConflict, SessionInvalid, VersionTooOld
from solstice.forges.github.templates import CodecError, Directive, Expression, decode_context, decode_token
from tests.fakes.github import condition_of, context_data, token_of


@pytest.mark.parametrize(
    ("token", "value"),
    [
        ("bare", "bare"),
        (True, True),
        (3.0, 3.0),
        (None, None),
        ({"type": 0, "file": 1, "line": 3, "col": 7, "lit": "with pos"}, "with pos"),
        ({"lit": "no type is a string"}, "no type is a string"),
        ({"type": 0}, ""),
        ({"type": 1, "seq": ["a", {"type": 6, "num": 2}]}, ["a", 2]),
        ({"type": 1}, []),
        ({"type": 2}, {}),
        ({"type": 2, "map": [{"key": "k", "value": {"type": 5, "bool": False}}]}, {"k": False}),
        ({"Type": 2, "Map": [{"Key": "K", "Value": "v"}]}, {"K": "v"}),
        ({"type": 3, "expr": "matrix.os"}, Expression("matrix.os")),
        ({"type": 4, "directive": "insert"}, Directive("insert")),
        ({"type": 5, "bool": True}, True),
        ({"type": 6, "num": 10}, 10),
        ({"type": 7}, None),
        (
            {
                "type": 2,
                "map": [{"key": {"type": 4, "directive": "insert"}, "value": {"type": 3, "expr": "x"}}],
            },
            {Directive("insert"): Expression("x")},
        ),
    ],
)
def test_template_tokens(token: Any, value: Any) -> None:
    assert decode_token(token) == value


@pytest.mark.parametrize(
    ("token", "field"),
    [
        ({"type": 9}, "inputs.type"),
        ({"type": 3}, "inputs.expr"),
        ({"type": 5, "bool": "yes"}, "inputs.bool"),
        ({"type": 6, "num": "1"}, "inputs.num"),
        ({"type": 2, "map": [{"key": 1, "value": "v"}]}, "inputs.map[0].key"),
        ({"type": 2, "map": [{"key": "a", "value": {"type": 9}}]}, "inputs.map[0].value.type"),
        ({"type": 1, "seq": {}}, "inputs.seq"),
        ([1], "inputs"),
    ],
)
def test_template_token_errors_name_the_field(token: Any, field: str) -> None:
    with pytest.raises(CodecError) as err:
        decode_token(token, "inputs")
    assert err.value.field == field


def test_context_data() -> None:
    data = {
        "t": 2,
        "d": [
            {"k": "sha", "v": "abc"},
            {"k": "event", "v": {"t": 2, "d": [{"k": "n", "v": {"t": 4, "n": 3}}]}},
            {"k": "list", "v": {"t": 1, "a": [{"t": 0, "s": "x"}, {"t": 3, "b": True}]}},
            {"k": "empty", "v": {"t": 2}},
            {"k": "cs", "v": {"t": 5, "d": [{"k": "A", "v": 1}]}},
        ],
    }
    assert decode_context(data) == {
        "sha": "abc",
        "event": {"n": 3},
        "list": ["x", True],
        "empty": {},
        "cs": {"A": 1},
    }
    with pytest.raises(CodecError) as err:
        decode_context({"t": 2, "d": [{"k": "a", "v": {"t": 8}}]}, "contextData.github")
    assert err.value.field == "contextData.github.a.t"


def test_fake_builds_tokens_as_the_server_does() -> None:
    """The fake's encoder against the decoder (and the spec's §8.4 examples)."""
    assert token_of("plain") == "plain"
    assert token_of("${{ matrix.os }}") == {"type": 3, "expr": "matrix.os"}
    assert decode_token(token_of("it's ${{ a }}-{x}")) == Expression("format('it''s {0}-{{x}}', a)")
    assert condition_of("") == "success()" and condition_of("always()") == "always()"
    assert condition_of("${{ github.ref == 'x' }}") == "success() && (github.ref == 'x')"
    assert decode_context(context_data({"a": [1, {"b": None}], "e": {}})) == {"a": [1, {"b": None}], "e": {}}


def test_runner_settings_lenient_and_round_trip() -> None:
    jit = {
        "AgentId": "12",
        "AgentName": "r",
        "PoolId": "1",
        "ServerUrl": "https://t/x",
        "GitHubUrl": "g",
        "Ephemeral": "True",
        "DisableUpdate": "False",
        "ServerUrlV2": "https://broker",
        "Unknown": 1,
    }
    s = m.RunnerSettings.from_dict(jit)
    assert (s.agent_id, s.ephemeral, s.disable_update, s.use_v2_flow) == (12, True, False, True)
    assert s.server_url == "https://t/x/" and s.server_url_v2 == "https://broker/"
    assert m.RunnerSettings.from_dict(s.to_dict()) == s
    assert s.to_dict()["gitHubUrl"] == "g" and "agentId" in s.to_dict()
    with pytest.raises(CodecError) as err:
        m.RunnerSettings.from_dict({**jit, "Ephemeral": "maybe"})
    assert err.value.field == ".runner.ephemeral"


def test_credentials_defaults_and_round_trip() -> None:
    c = m.OAuthCredentials.from_dict({"Scheme": "OAuth", "Data": {"ClientId": "c", "AuthorizationUrl": "u"}})
    assert not c.require_fips  # reading: false when absent (§13.3)
    c2 = m.OAuthCredentials("c", "u", require_fips=True, authorization_url_v2="v2")
    assert c2.to_dict()["data"]["requireFipsCryptography"] == "True"
    assert m.OAuthCredentials.from_dict(c2.to_dict()) == c2 and c2.audience == "v2"
    with pytest.raises(CodecError, match="OAuth"):
        m.OAuthCredentials.from_dict({"scheme": "Basic", "data": {}})


def test_agent_properties_and_fips_default() -> None:
    agent = m.Agent.from_dict(
        {
            "id": 5,
            "name": "r",
            "authorization": {"authorizationUrl": "a", "clientId": "c"},
            "properties": {
                "ServerUrlV2": {"$type": "System.String", "$value": "https://b"},
                "RequireFipsCryptography": {"$type": "System.Boolean", "$value": "False"},
            },
        }
    )
    assert (agent.server_url_v2, agent.require_fips, agent.use_v2_flow) == ("https://b/", False, False)
    assert m.Agent.from_dict({"id": 1}).require_fips is None


def test_message_envelope_and_bodies() -> None:
    msg = m.TaskAgentMessage.from_dict(
        {
            "MessageId": 3,
            "MessageType": "runnerjobrequest",
            "Body": json.dumps({"runner_request_id": "r", "run_service_url": "https://run"}),
        }
    )
    body = m.decode_body(msg)
    assert body == m.RunnerJobRequest(id="", runner_request_id="r", run_service_url="https://run/")
    bad = m.TaskAgentMessage(1, "JobCancellation", "{}")
    with pytest.raises(CodecError) as err:
        m.decode_body(bad)
    assert err.value.field == "message 1 (JobCancellation).body.jobId"
    with pytest.raises(CodecError, match="not JSON"):
        m.decode_body(m.TaskAgentMessage(1, "BrokerMigration", "{"))
    with pytest.raises(CodecError) as err:
        m.TaskAgentMessage.from_dict({"messageType": "x"})
    assert err.value.field == "message.messageId"
    shutdown = m.decode_body(m.TaskAgentMessage(2, "RunnerShutdown", '{"reason":"bye"}'))
    assert shutdown == m.RunnerShutdown("bye")


def test_job_message_required_fields_are_named() -> None:
    with pytest.raises(CodecError) as err:
        m.AgentJobRequestMessage.from_dict({"plan": {"planId": "p"}})
    assert err.value.field == "job.jobId"
    with pytest.raises(CodecError) as err:
        m.AgentJobRequestMessage.from_dict(
            {"plan": {"planId": "p"}, "jobId": "j", "steps": [{"id": "s", "reference": {}}]}
        )
    assert err.value.field == "job.steps[0].reference.type"
    job = m.AgentJobRequestMessage.from_dict({"plan": {"planId": "p"}, "jobId": "j", "extra": {"x": 1}})
    assert job.steps == () and job.variables == {}
    with pytest.raises(CodecError, match="SystemVssConnection"):
        job.system_connection  # noqa: B018


def test_complete_job_and_results_encoding() -> None:
    ann = m.Annotation(m.AnnotationLevel.FAILURE, "Process completed with exit code 1.", step_number=2)
    req = m.CompleteJobRequest(
        "p",
        "j",
        m.TaskResult.FAILED,
        annotations=(ann,),
        infrastructure_failure_category=m.SOLSTICE_INFRASTRUCTURE_FAILURE,
    )
    d = req.to_dict()
    assert d["conclusion"] == "failed" and d["annotations"][0]["level"] == "FAILURE"
    assert (
        d["infrastructureFailureCategory"] == "solstice_infrastructure_failure"
        and d["annotations"][0]["stepNumber"] == 2
    )
    step = m.WorkflowStep("s", 1, "Set up job", m.StepStatus.COMPLETED, "t0", "t1", m.StepConclusion.SKIPPED)
    up = m.WorkflowStepsUpdate("p", "j", 3, (step,)).to_dict()
    assert up["steps"][0]["status"] == 6 and up["steps"][0]["conclusion"] == 7 and up["change_order"] == 3
    assert m.LogsTarget("p", "j").to_dict() == {
        "workflow_run_backend_id": "p",
        "workflow_job_run_backend_id": "j",
    }
    for limit in ("100", 100):
        assert m.SignedBlobURL.from_dict({"logs_url": "u", "soft_size_limit": limit}).soft_size_limit == 100
    with pytest.raises(CodecError, match="ok=false"):
        m.decode_ok({"ok": False}, "CreateStepLogsMetadata")


def test_secrets_never_in_repr() -> None:
    assert "abc" not in repr(m.Variable("abc", is_secret=True))
    assert "s3cret" not in repr(m.AccessToken("s3cret", "JWT", 10))
    assert "s3cret" not in repr(m.TenantCredential("u", "OAuthAccessToken", "s3cret"))
    ep = m.ServiceEndpoint("SystemVssConnection", "u", parameters={"AccessToken": "s3cret"})
    assert "s3cret" not in repr(ep) and ep.access_token == "s3cret"


def test_complete_job_omits_defaults_as_r_does() -> None:
    """R's run-service contracts are EmitDefaultValue=false; status/conclusion always go."""
    assert m.CompleteJobRequest("p", "j", m.TaskResult.SUCCEEDED).to_dict() == {
        "planId": "p",
        "jobId": "j",
        "conclusion": "succeeded",
    }
    step = m.StepResult("s", 1, "Test", m.RecordState.PENDING).to_dict()
    assert step == {
        "external_id": "s",
        "number": 1,
        "name": "Test",
        "type": "run",
        "status": "pending",
        "conclusion": None,
    }


def _response(status: int, body: object = None, text: str = "") -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = (json.dumps(body) if body is not None else text).encode()
    return resp


@pytest.mark.parametrize(
    ("procedure", "status", "body", "error"),
    [
        ("get message", 503, None, ForgeUnavailable),
        ("get message", 429, None, ForgeUnavailable),
        ("get message", 400, {"errorKind": "RunnerNotFound", "statusCode": 404}, RegistrationGone),
        ("get message", 403, {"errorKind": "HostedRunnerDeprovisioned"}, RegistrationGone),
        ("get message", 403, {"errorKind": "RunnerVersionTooOld"}, VersionTooOld),
        ("get message", 404, {"errorKind": "RunnerSessionInvalid"}, SessionInvalid),
        ("create session", 409, None, SessionConflict),
        ("create session", 400, {"typeKey": "TaskAgentSessionConflictException"}, SessionConflict),
        # the body's statusCode wins over the HTTP status (§13.5)
        ("acquirejob", 400, {"source": "actions-run-service", "statusCode": 422}, JobGone),
        ("acquirejob", 500, None, ForgeUnavailable),
        ("renewjob", 404, None, LeaseLost),
        ("get message", 401, None, RegistrationGone),
        ("get message", 400, {"message": "nope"}, ForgeError),
    ],
)
def test_classify(procedure: str, status: int, body: object, error: type[ForgeError]) -> None:
    err = classify(procedure, _response(status, body, text="<html>proxy</html>"))
    assert type(err) is error and err.status == status and err.procedure == procedure
