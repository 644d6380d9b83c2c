"""The GitHub runner protocol layer against the fake GitHub, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
import logging
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from solstice.errors import ConfigError, InfraError
from solstice.forges.core.errors import ForgeError, ForgeUnavailable, RegistrationGone
from solstice.forges.github import auth, registration
from solstice.forges.github import messages as m
from solstice.forges.github.client import (
    JobClient,
    RegistrationClient,
    RunnerClient,
    RunnerScope,
    owner_name,
    timestamp,
)
from solstice.forges.github.errors import JobGone, LeaseLost, SessionConflict, SessionInvalid, VersionTooOld
from solstice.forges.github.templates import Expression
from tests.fakes.github import FakeGitHub

WORKFLOW = """\
name: CI
on: push
env:
  WF: top
jobs:
  test:
    runs-on: [self-hosted, omnios]
    strategy:
      matrix:
        python: ["3.11", "3.12"]
    steps:
      - name: Test
        run: echo ${{ secrets.TOKEN }} {literal} && make test PY=${{ matrix.python }}
        env:
          SECRET: ${{ secrets.TOKEN }}
        timeout-minutes: 10
      - run: echo second
        if: github.event_name == 'push'
"""

SECRET = "s3cr3t-value-42"


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    with FakeGitHub(poll_hold=0.3) as f:
        yield f


def enrol(fake: FakeGitHub, name: str = "vm-runner", **kw: object) -> registration.Registration:
    key = auth.new_private_key()
    rc = RegistrationClient(RunnerScope.from_url(fake.github_url))
    enrolment = rc.register(fake.registration_token(), name=name, key=key, labels=["omnios"], **kw)  # type: ignore[arg-type]
    return registration.Registration(
        enrolment.settings, enrolment.credentials, auth.private_key_pem(key), labels=("omnios",)
    )


def runner_client(reg: registration.Registration, **kw: object) -> RunnerClient:
    return RunnerClient(reg.settings, auth.TokenSource(reg.credentials, reg.key), **kw)  # type: ignore[arg-type]


def poll_job(client: RunnerClient, session: m.Session) -> tuple[m.TaskAgentMessage, m.RunnerJobRequest]:
    for _ in range(10):
        msg = client.get_message(session.session_id)
        if msg is not None:
            body = m.decode_body(msg)
            assert isinstance(body, m.RunnerJobRequest)
            return msg, body
    raise AssertionError("no job message")


def offered_job(fake: FakeGitHub) -> tuple[RunnerClient, m.Session, m.RunnerJobRequest]:
    """A registered runner with a session that has been offered a job of WORKFLOW."""
    client = runner_client(enrol(fake))
    session = client.create_session("h")
    fake.enqueue(WORKFLOW, secrets={"TOKEN": SECRET})
    return client, session, poll_job(client, session)[1]


def test_scope_from_urls() -> None:
    assert RunnerScope.from_url("https://github.com/octo/repo") == RunnerScope(
        "https://github.com/octo/repo", "https://api.github.com", "repos/octo/repo"
    )
    assert RunnerScope.from_url("https://ghe.example/org").api_url == "https://ghe.example/api/v3"
    assert RunnerScope.from_url("https://github.com/enterprises/acme").path == "enterprises/acme"
    with pytest.raises(ForgeError):
        RunnerScope.from_url("https://github.com/")


def test_full_job_lifecycle_pipelines_flow(fake: FakeGitHub, tmp_path: Path) -> None:
    reg = enrol(fake)
    s = reg.settings
    assert s.use_v2_flow and s.server_url_v2 == f"{fake.url}/broker/" and s.pool_name == "Default"
    assert not s.use_runner_admin_flow and reg.credentials.require_fips
    agent_add = [r for r in fake.requests if r.method == "POST" and r.path.endswith("/agents")][0]
    assert "api-version=6.0-preview.2" in agent_add.headers["Content-Type"]
    sent = json.loads(agent_add.body)
    assert [lb["name"] for lb in sent["labels"]] == ["self-hosted", "Linux", "X64", "omnios"]
    assert sent["labels"][0]["type"] == "system" and sent["labels"][3]["type"] == "user"

    path = registration.default_path(tmp_path)
    registration.save(path, reg)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    reg = registration.load(path)
    assert "PRIVATE KEY" not in json.dumps(reg.public_view()) and "PRIVATE" not in repr(reg)

    client = runner_client(reg)
    session = client.create_session(owner_name("host", 42))
    jobs = fake.enqueue(WORKFLOW, secrets={"TOKEN": SECRET})
    assert len(jobs) == 2
    msg, ref = poll_job(client, session)
    assert ref.should_acknowledge and ref.run_service_url == f"{fake.url}/run/"
    client.acknowledge(session.session_id, ref.runner_request_id)
    job = client.acquire_job(ref)
    fj = next(j for j in jobs if j.request_id == ref.runner_request_id)
    assert fj.acknowledged and job.job_id == fj.job_id
    poll = [r for r in fake.requests if r.path == "/broker/message"][0]
    assert {k: v[0] for k, v in poll.query.items()} == {
        "sessionId": session.session_id,
        "status": "Online",
        "runnerVersion": "2.336.0",
        "os": "Linux",
        "architecture": "X64",
        "disableUpdate": "true",
    }

    # the job message as the server builds it
    assert job.job_display_name.startswith("test (") and job.job_name == "__default"
    step = job.steps[0]
    assert step.is_script and step.display_name == "Test" and step.condition == "success()"
    assert step.inputs["script"] == Expression(
        "format('echo {0} {{literal}} && make test PY={1}', secrets.TOKEN, matrix.python)"
    )
    assert step.environment == {"SECRET": Expression("secrets.TOKEN")} and step.timeout_in_minutes == 10
    assert job.steps[1].condition == "success() && (github.event_name == 'push')"
    assert (step.context_name, job.steps[1].context_name) == ("__run", "__run_2")
    assert job.environment_variables == ({"WF": "top"},)
    assert job.context_data["matrix"]["python"] in ("3.11", "3.12")
    assert job.context_data["strategy"]["job-total"] == 2 and job.context_data["needs"] == {}
    assert job.secrets_context == {"TOKEN": SECRET} and SECRET in job.secret_values
    assert job.variables["system.github.token"].is_secret and "***" in repr(job.variables["TOKEN"])
    assert job.results_url == f"{fake.url}/results/"

    jc = JobClient(job)
    first = jc.renew().locked_until
    assert first and fj.renewals == 1
    # the status changes to Busy while the job runs (§5.2)
    client.get_message(session.session_id, m.RunnerStatus.BUSY)
    assert fake.runners[reg.settings.agent_id].last_status == "Busy"

    now = timestamp()
    steps = tuple(
        m.WorkflowStep(s.id, i + 1, str(s.display_name), m.StepStatus.PENDING)
        for i, s in enumerate(job.steps)
    )
    jc.update_steps(m.WorkflowStepsUpdate(job.plan.plan_id, job.job_id, 1, steps))
    done = m.WorkflowStep(step.id, 1, "Test", m.StepStatus.COMPLETED, now, now, m.StepConclusion.SUCCESS)
    jc.update_steps(m.WorkflowStepsUpdate(job.plan.plan_id, job.job_id, 2, (done,)))
    assert fj.steps[step.id]["status"] == 6 and fj.steps[step.id]["conclusion"] == 2
    lines = [f"{now} echo ***", f"{now} ok"]
    jc.upload_log(m.LogsTarget(job.plan.plan_id, job.job_id, step.id), lines)
    jc.upload_log(m.LogsTarget(job.plan.plan_id, job.job_id), lines)
    assert fake.log_text(fj, step.id) == "".join(line + "\n" for line in lines)
    assert fj.log_lines == {step.id: 2, "": 2}
    blob_puts = [r for r in fake.requests if r.path.startswith("/blob/")]
    assert blob_puts and all("Authorization" not in r.headers for r in blob_puts)

    result = m.StepResult(
        step.id, 1, "Test", m.RecordState.COMPLETED, m.TaskResult.SUCCEEDED, now, now, action_name="bash"
    )
    jc.complete(
        m.CompleteJobRequest(
            job.plan.plan_id,
            job.job_id,
            m.TaskResult.SUCCEEDED,
            outputs={"out": m.Variable("x")},
            step_results=(result,),
            billing_owner_id=job.billing_owner_id,
        )
    )
    assert fj.completed is not None and fj.completed["conclusion"] == "succeeded"
    assert fj.completed["stepResults"][0]["status"] == "completed"
    assert "infrastructureFailureCategory" not in fj.completed  # omitted, as R's EmitDefaultValue=false
    ack = [r for r in fake.requests if r.path == "/broker/acknowledge"][0]
    assert "disableUpdate" not in ack.query and ack.query["status"] == ["Online"]
    client.delete_session()
    assert fake.runners[reg.settings.agent_id].session_id == ""
    # nothing the runner sent carries the secret in clear, nor the private key
    assert fake.bodies_containing(SECRET) == []
    assert fake.bodies_containing(reg.private_key_pem.splitlines()[1]) == []


def test_runner_admin_flow_and_unregister(fake: FakeGitHub) -> None:
    fake.admin_flow = True
    reg = enrol(fake, ephemeral=True)
    s = reg.settings
    assert (
        s.use_runner_admin_flow
        and s.use_v2_flow
        and s.ephemeral
        and s.server_url_v2 == f"{fake.url}/broker/"
    )
    body = json.loads([r for r in fake.requests if r.path == "/api/v3/actions/runners/register"][0].body)
    assert body["public_key"].startswith("<RSAKeyValue><Modulus>") and body["group_id"] == 1
    client = runner_client(reg)
    client.create_session("host (PID: 1)")
    assert list(fake.algorithms) == ["PS256"]  # requireFipsCryptography defaults to true (§3.5)
    client.delete_session()
    RegistrationClient(RunnerScope.from_url(fake.github_url)).unregister(s, fake.remove_token())
    assert fake.runners[s.agent_id].deleted


def test_ephemeral_runner_admin_flow_runs_one_job_from_a_file(fake: FakeGitHub, tmp_path: Path) -> None:
    fake.admin_flow = True
    reg = enrol(fake, ephemeral=True)
    client = runner_client(reg)
    session = client.create_session("h")
    workflow = tmp_path / "ci.yml"
    workflow.write_text(WORKFLOW)
    fake.enqueue(workflow, secrets={"TOKEN": SECRET})
    _, ref = poll_job(client, session)
    job = client.acquire_job(ref)
    assert job.file_table == (str(workflow),)
    jc = JobClient(job)
    jc.renew()
    jc.complete(m.CompleteJobRequest(job.plan.plan_id, job.job_id, m.TaskResult.FAILED))
    assert fake.jobs[ref.runner_request_id].completed is not None
    # GitHub removes an ephemeral runner after its job: the next poll says so
    with pytest.raises(RegistrationGone):
        client.get_message(session.session_id)


def test_runner_admin_auth_migration(fake: FakeGitHub) -> None:
    fake.admin_flow = fake.legacy_auth = True
    reg = enrol(fake)
    c = reg.credentials
    assert c.authorization_url == f"{fake.tenant_url}_apis/oauth2/token"
    assert c.authorization_url_v2 == f"{fake.url}/oauth/token" and c.audience == c.authorization_url_v2
    runner_client(reg).create_session("h")
    assert fake.oauth_rejections == type(fake.oauth_rejections)()


def test_rs256_without_fips_and_unregister_pipelines(fake: FakeGitHub) -> None:
    fake.fips = False
    reg = enrol(fake)
    assert not reg.credentials.require_fips
    runner_client(reg).create_session("h")
    assert list(fake.algorithms) == ["RS256"]
    RegistrationClient(RunnerScope.from_url(fake.github_url)).unregister(reg.settings, fake.remove_token())
    assert fake.runners[reg.settings.agent_id].deleted


def test_name_taken_and_replace(fake: FakeGitHub) -> None:
    first = enrol(fake)
    with pytest.raises(ForgeError, match="already exists"):
        enrol(fake)
    second = enrol(fake, replace=True)
    assert second.settings.agent_id == first.settings.agent_id
    assert second.credentials.client_id != first.credentials.client_id


def test_bad_registration_token(fake: FakeGitHub) -> None:
    rc = RegistrationClient(RunnerScope.from_url(fake.github_url))
    with pytest.raises(RegistrationGone) as err:
        rc.register("AABFwrong", name="x", key=auth.new_private_key(), labels=[])
    assert err.value.hint and "expired" in err.value.hint and "AABFwrong" not in str(err.value)


def test_jit_config(fake: FakeGitHub, tmp_path: Path) -> None:
    encoded, runner = fake.jit_config("jit-1", ["omnios"])
    reg = registration.from_jit_config(encoded)
    assert reg.jit and reg.ephemeral and reg.settings.agent_id == runner.id
    assert reg.settings.use_v2_flow and reg.credentials.require_fips
    path = registration.default_path(tmp_path)
    registration.save(path, reg)
    client = runner_client(registration.load(path))
    session = client.create_session("h")
    fake.enqueue(WORKFLOW, secrets={"TOKEN": SECRET})
    _, ref = poll_job(client, session)
    job = client.acquire_job(ref)
    assert job.job_id


def test_jit_config_errors_name_the_field() -> None:
    with pytest.raises(m.CodecError) as err:
        registration.from_jit_config("bm90IGpzb24=")  # "not json"
    assert err.value.field == "jitconfig"
    import base64

    partial = base64.b64encode(json.dumps({".runner": base64.b64encode(b"{}").decode()}).encode()).decode()
    with pytest.raises(m.CodecError, match=r"jitconfig\.\.runner\.agentId"):
        registration.from_jit_config(partial)


def test_token_expiry_and_renewal_after_401(fake: FakeGitHub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    reg = enrol(fake)
    tokens = auth.TokenSource(reg.credentials, reg.key)
    client = RunnerClient(reg.settings, tokens)
    session = client.create_session("h")
    assert tokens.exchanges == 1
    fake.expire_tokens()  # the server's view: the cached token is dead
    assert client.get_message(session.session_id) is None
    assert tokens.exchanges == 2
    unauthorized = [r for r in fake.requests if r.path == "/broker/message"]
    assert len(unauthorized) == 2  # the 401, then the retry with the new token
    assert "renewing it once" in caplog.text
    tokens_seen = [r.headers["Authorization"].split()[1] for r in unauthorized]
    assert tokens_seen[0] != tokens_seen[1] and not any(t in caplog.text for t in tokens_seen)


def test_token_renewed_before_expiry(fake: FakeGitHub) -> None:
    fake.token_lifetime = 2.0
    reg = enrol(fake)
    tokens = auth.TokenSource(reg.credentials, reg.key, margin=1.0)
    first = tokens.token()
    assert tokens.token() == first
    time.sleep(1.1)
    assert tokens.token() != first and tokens.exchanges == 2


def test_jwt_rejected_wrong_key_audience_expired(fake: FakeGitHub) -> None:
    reg = enrol(fake)
    wrong_key = auth.TokenSource(reg.credentials, auth.new_private_key())
    with pytest.raises(ForgeError) as err:
        wrong_key.token()
    assert not isinstance(err.value, RegistrationGone) and err.value.status == 400
    wrong_aud = m.OAuthCredentials(
        reg.credentials.client_id,
        reg.credentials.authorization_url,
        oauth_endpoint_url=reg.credentials.authorization_url,
        authorization_url_v2="https://elsewhere/token",
    )
    with pytest.raises(ForgeError):
        auth.TokenSource(wrong_aud, reg.key).token()
    expired = auth.client_assertion(reg.credentials, reg.key, now=time.time() - 3600)
    resp = auth.requests.post(
        reg.credentials.token_url,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": auth.ASSERTION_TYPE,
            "client_assertion": expired,
        },
    )
    clock_err = auth.oauth_error(reg.credentials.token_url, resp)
    assert clock_err.hint and "clock" in clock_err.hint
    assert list(fake.oauth_rejections) == ["InvalidSignatureError", "audience", "expired"]


def test_assertion_claims_and_algorithm() -> None:
    key = auth.new_private_key()
    creds = m.OAuthCredentials("cid", "https://t/_apis/oauth2/token", require_fips=True)
    token = auth.client_assertion(creds, key, now=1000.0)
    assert jwt.get_unverified_header(token) == {"typ": "JWT", "alg": "PS256"}
    claims = jwt.decode(
        token,
        key.public_key(),
        algorithms=["PS256"],
        audience=creds.audience,
        options={"verify_exp": False, "verify_nbf": False},
    )
    assert claims["iss"] == claims["sub"] == "cid" and claims["exp"] - claims["nbf"] == 300
    assert "iat" not in claims
    rs = m.OAuthCredentials("cid", "https://t/x", require_fips=False)
    assert jwt.get_unverified_header(auth.client_assertion(rs, key))["alg"] == "RS256"


def test_rsa_params_round_trip() -> None:
    key = auth.new_private_key()
    assert key.key_size == 2048
    params = auth.rsa_params(key)
    assert set(params) == {"d", "dp", "dq", "exponent", "inverseQ", "modulus", "p", "q"}
    again = auth.key_from_rsa_params({k.upper() if k == "d" else k: v for k, v in params.items()})
    assert again.private_numbers() == key.private_numbers()


def test_session_conflict(fake: FakeGitHub) -> None:
    reg = enrol(fake)
    runner_client(reg).create_session("first")
    with pytest.raises(SessionConflict) as err:
        runner_client(reg).create_session("second")
    assert err.value.status == 409


def test_session_invalid_means_recreate(fake: FakeGitHub) -> None:
    reg = enrol(fake)
    client = runner_client(reg)
    session = client.create_session("h")
    client.delete_session()
    with pytest.raises(SessionInvalid):
        client.get_message(session.session_id)
    assert client.get_message(client.create_session("h").session_id) is None


def test_lease_expiry(fake: FakeGitHub) -> None:
    client, session, ref = offered_job(fake)
    job = client.acquire_job(ref)
    fj = fake.jobs[ref.runner_request_id]
    jc = JobClient(job)
    jc.renew()
    fake.expire_lease(fj)
    with pytest.raises(LeaseLost):
        jc.renew()
    with pytest.raises(LeaseLost):
        jc.complete(m.CompleteJobRequest(job.plan.plan_id, job.job_id, m.TaskResult.CANCELED))


def test_lease_expires_by_time(fake: FakeGitHub) -> None:
    fake.lease_seconds = 1.0
    client, session, ref = offered_job(fake)
    jc = JobClient(client.acquire_job(ref))
    jc.renew()
    time.sleep(1.2)
    with pytest.raises(LeaseLost):
        jc.renew()


def test_runner_deleted_is_registration_gone(fake: FakeGitHub) -> None:
    reg = enrol(fake)
    client = runner_client(reg)
    session = client.create_session("h")
    fake.delete_runner(reg.settings.agent_id)
    with pytest.raises(RegistrationGone) as err:
        client.get_message(session.session_id)
    assert err.value.code == "RunnerNotFound"
    # and once the token is gone too, the OAuth exchange says invalid_client
    with pytest.raises(RegistrationGone, match="invalid_client"):
        auth.TokenSource(reg.credentials, reg.key).token()


def test_acquire_gone_and_taken(fake: FakeGitHub) -> None:
    client, session, ref = offered_job(fake)
    missing = m.RunnerJobRequest("1", "00000000-0000-0000-0000-00000000dead", ref.run_service_url)
    with pytest.raises(JobGone) as err:
        client.acquire_job(missing)
    assert err.value.status == 404
    client.acquire_job(ref)
    with pytest.raises(JobGone) as err:
        client.acquire_job(ref)
    assert err.value.status == 409
    with pytest.raises(JobGone, match="AcknowledgeJobNotFound"):
        client.acknowledge(session.session_id, missing.runner_request_id)


def test_version_too_old(fake: FakeGitHub) -> None:
    reg = enrol(fake)
    client = runner_client(reg, version="2.300.0")
    session = client.create_session("h")
    with pytest.raises(VersionTooOld) as err:
        client.get_message(session.session_id)
    assert err.value.hint and "2.300.0" in err.value.hint and "runner_version" in err.value.hint


def test_unreachable_is_forge_unavailable(fake: FakeGitHub) -> None:
    reg = enrol(fake)
    client = runner_client(reg)
    client.create_session("h")
    fake.__exit__()
    with pytest.raises(ForgeUnavailable) as err:
        client.create_session("again")
    assert isinstance(err.value, InfraError)


def test_other_messages_decode(fake: FakeGitHub) -> None:
    reg = enrol(fake)
    client = runner_client(reg)
    session = client.create_session("h")
    rid = reg.settings.agent_id
    fake.send(rid, "JobCancellation", {"jobId": "j1", "timeout": "00:05:00"})
    fake.send(rid, "BrokerMigration", {"brokerBaseUrl": f"{fake.url}/broker"})
    fake.send(rid, "ForceTokenRefresh", "")
    fake.send(rid, "RunnerRefresh", {"target_version": "2.340.0", "download_url": "u"})
    fake.send(rid, "SomethingNew", {"x": 1})
    got = [m.decode_body(msg) for msg in iter(lambda: client.get_message(session.session_id), None)]
    assert got == [
        m.JobCancellation("j1", "00:05:00"),
        m.BrokerMigration(f"{fake.url}/broker/"),
        m.ForceTokenRefresh(),
        m.RunnerRefresh("2.340.0", "u"),
        m.UnknownMessage("SomethingNew"),
    ]


def test_complete_retries_unavailable_then_gives_up() -> None:
    job = m.AgentJobRequestMessage.from_dict(_minimal_job("http://127.0.0.1:9/"))
    slept: list[float] = []
    jc = JobClient(job, sleep=slept.append, timeout=0.5)
    with pytest.raises(ForgeUnavailable):
        jc.complete(m.CompleteJobRequest("p", "j", m.TaskResult.FAILED))
    assert slept == [5.0, 5.0, 5.0, 5.0]


def test_registration_load_errors(tmp_path: Path) -> None:
    path = registration.default_path(tmp_path)
    with pytest.raises(ConfigError, match="not registered"):
        registration.load(path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({".runner": {"agentName": "x"}}))
    with pytest.raises(ConfigError, match=r"agentId"):
        registration.load(path)


def _minimal_job(run_url: str) -> dict[str, object]:
    return {
        "plan": {"planId": "p"},
        "jobId": "j",
        "resources": {
            "endpoints": [
                {
                    "name": "SystemVssConnection",
                    "url": run_url,
                    "authorization": {"scheme": "OAuth", "parameters": {"AccessToken": "t"}},
                    "data": {"ResultsServiceUrl": run_url},
                }
            ]
        },
    }


def test_log_upload_in_append_blocks_is_sealed(fake: FakeGitHub) -> None:
    client, _, ref = offered_job(fake)
    job = client.acquire_job(ref)
    jc = JobClient(job)
    target = m.LogsTarget(job.plan.plan_id, job.job_id, job.steps[0].id)
    signed = jc.signed_log_url(target)
    assert signed.soft_size_limit and signed.blob_storage_type == m.BlobStorageType.AZURE
    jc.put_blob(signed, b"0123456789", block_size=4)
    name = f"{job.job_id}/{job.steps[0].id}.txt"
    assert bytes(fake.blobs[name]) == b"0123456789" and name in fake.sealed
    puts = [r for r in fake.requests if r.path == f"/blob/{name}"]
    assert [r.headers.get("x-ms-blob-type") for r in puts[:1]] == ["AppendBlob"]
    assert [r.query.get("seal", [""])[0] for r in puts[1:]] == ["", "", "true"]
    with pytest.raises(ForgeError) as err:  # sealed: no more blocks
        jc.put_blob(signed, b"more", block_size=2)
    assert err.value.status == 409


def test_service_locations(fake: FakeGitHub) -> None:
    rc = RegistrationClient(RunnerScope.from_url(fake.github_url))
    tenant = rc.tenant_credential(fake.registration_token())
    locations = rc.service_locations(tenant)
    # the agents resource (e298ef32-…) is where the fixed template says (§2 table)
    assert (
        locations["e298ef32-5878-4cab-993c-043836571f42"]
        == "_apis/distributedtask/pools/{poolId}/agents/{agentId}"
    )
    call = [r for r in fake.requests if r.path.endswith("/connectionData")][0]
    assert "Authorization" not in call.headers and call.query["connectOptions"] == ["0"]


def test_refused_job_token_is_lease_lost_not_registration_gone(fake: FakeGitHub) -> None:
    client, _, ref = offered_job(fake)
    job = client.acquire_job(ref)
    ep = dataclasses.replace(job.system_connection, parameters={"AccessToken": "job-forged"})
    jc = JobClient(dataclasses.replace(job, endpoints=(ep,)))
    with pytest.raises(LeaseLost) as err:
        jc.renew()
    assert err.value.status == 401
    with pytest.raises(LeaseLost):
        jc.update_steps(m.WorkflowStepsUpdate(job.plan.plan_id, job.job_id, 1, ()))
