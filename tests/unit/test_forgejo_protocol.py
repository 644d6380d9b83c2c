"""The runner.v1 JSON codec, the client and the fake server, over real HTTP on loopback."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import yaml

from solstice.backoff import Backoff
from solstice.errors import InfraError, SolsticeError
from solstice.forges.forgejo import messages as m
from solstice.forges.forgejo.client import (
    Client,
    Credentials,
    ForgeError,
    ForgeUnavailable,
    LogArchived,
    RegistrationGone,
    classify,
    retry,
)
from tests.fakes.forgejo import FakeForgejo

# --- codec vs the spec's Appendix A ----------------------------------------------------------


def test_fetch_task_response_from_appendix_a() -> None:
    body = {
        "task": {
            "id": "42",
            "workflowPayload": "bmFtZTogdGVzdApqb2JzOi4uLg==",
            "context": {
                "event_name": "push",
                "repository": "o/r",
                "token": "t",
                "gitea_default_actions_url": "https://github.com",
            },
            "secrets": {"GITHUB_TOKEN": "t", "GITEA_TOKEN": "t"},
            "needs": {"build": {"outputs": {"v": "1"}, "result": "RESULT_SUCCESS"}},
            "someFutureField": {"x": 1},
        },
        "tasksVersion": "7",
    }
    resp = m.decode(m.FetchTaskResponse, json.dumps(body).encode())
    assert resp.tasks_version == 7
    assert resp.task is not None and resp.task.id == 42
    assert resp.task.workflow_payload == b"name: test\njobs:..."
    assert resp.task.context["repository"] == "o/r"
    assert resp.task.needs["build"] == m.TaskNeed(outputs={"v": "1"}, result=m.Result.RESULT_SUCCESS)
    again = m.to_json(resp)
    assert again["tasksVersion"] == "7" and again["task"]["id"] == "42"
    assert again["task"]["workflowPayload"] == "bmFtZTogdGVzdApqb2JzOi4uLg=="
    assert m.from_json(m.FetchTaskResponse, again) == resp


def test_update_messages_from_appendix_a() -> None:
    # requests as the spec writes them (snake_case, numbers) decode; we encode camelCase + strings
    log = m.from_json(
        m.UpdateLogRequest,
        {
            "task_id": 42,
            "index": 0,
            "rows": [{"time": "2025-01-01T00:00:00Z", "content": "hello"}],
            "no_more": False,
        },
    )
    assert log.task_id == 42 and log.rows[0].time == datetime(2025, 1, 1, tzinfo=UTC)
    assert m.to_json(log) == {"taskId": "42", "rows": [{"time": "2025-01-01T00:00:00Z", "content": "hello"}]}
    assert m.decode(m.UpdateLogResponse, b'{"ackIndex":"1"}').ack_index == 1
    running = m.decode(m.UpdateTaskResponse, b'{"state":{"id":"42"}}')
    assert running.state == m.TaskState(id=42) and running.state.result == m.Result.RESULT_UNSPECIFIED
    cancelled = m.decode(m.UpdateTaskResponse, b'{"state":{"id":"42","result":"RESULT_CANCELLED"}}')
    assert cancelled.state is not None and cancelled.state.result == m.Result.RESULT_CANCELLED
    done = m.decode(
        m.UpdateTaskResponse, b'{"state":{"id":"42","result":"RESULT_SUCCESS"},"sentOutputs":["v"]}'
    )
    assert done.sent_outputs == ("v",)
    ts = datetime(2025, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)
    req = m.UpdateTaskRequest(
        state=m.TaskState(
            id=42,
            result=m.Result.RESULT_SUCCESS,
            started_at=ts,
            stopped_at=ts,
            steps=(m.StepState(id=0, started_at=ts, log_index=1, log_length=3),),
        ),
        outputs={"v": "1"},
    )
    js = m.to_json(req)
    assert js == {
        "state": {
            "id": "42",
            "result": "RESULT_SUCCESS",
            "startedAt": "2025-01-02T03:04:05.123Z",
            "stoppedAt": "2025-01-02T03:04:05.123Z",
            "steps": [{"startedAt": "2025-01-02T03:04:05.123Z", "logIndex": "1", "logLength": "3"}],
        },
        "outputs": {"v": "1"},
    }
    assert m.from_json(m.UpdateTaskRequest, js) == req


def test_codec_details() -> None:
    assert m.encode(m.FetchTaskRequest()) == b"{}"  # never an empty body
    assert (
        m.encode(m.FetchTaskRequest(tasks_version=3, task_capacity=0))
        == b'{"tasksVersion":"3","taskCapacity":"0"}'
    )
    assert m.from_json(m.StepState, {"result": 2}).result == m.Result.RESULT_FAILURE
    t = m.parse_timestamp("2025-01-02T03:04:05.123456789+02:00")
    assert t == datetime(2025, 1, 2, 1, 4, 5, 123456, tzinfo=UTC)
    assert (
        m.format_timestamp(datetime(2025, 1, 2, 1, 4, 5, 120, tzinfo=UTC)) == "2025-01-02T01:04:05.000120Z"
    )
    assert (
        m.from_json(
            m.Task, {"workflowPayload": base64.urlsafe_b64encode(b"\xfb\xff").decode().rstrip("=")}
        ).workflow_payload
        == b"\xfb\xff"
    )
    with pytest.raises(m.CodecError, match="tasks_version"):
        m.from_json(m.FetchTaskResponse, {"tasksVersion": "x"})
    with pytest.raises(m.CodecError, match="unknown Result"):
        m.from_json(m.StepState, {"result": "RESULT_MAYBE"})


# --- client against the fake -----------------------------------------------------------------


@pytest.fixture(params=["forgejo", "gitea"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeForgejo]:
    with FakeForgejo(request.param, url_path="/forge") as f:
        yield f


def registered(fake: FakeForgejo, labels: list[str] | None = None) -> Client:
    client = Client(fake.url + "/")
    token = fake.create_registration_token()
    runner = client.register(name="solstice-1", token=token, version="0.1.0", labels=labels or ["debian-12"])
    client.credentials = Credentials(runner.uuid, runner.token)
    return client


def test_ping_register_declare(fake: FakeForgejo) -> None:
    client = Client(fake.url)
    assert client.ping("solstice").data == "Hello, solstice!"
    client = registered(fake)
    runner = client.declare(version="0.2.0", labels=["debian-12", "omnios-bloody"])
    assert runner is not None and runner.labels == ("debian-12", "omnios-bloody")
    fr = fake.runners[client.credentials.uuid]  # type: ignore[union-attr]
    assert fr.version == "0.2.0" and fr.labels == ["debian-12", "omnios-bloody"]
    proc, headers, body = fake.requests[-1]
    assert proc == "runner.v1.RunnerService/Declare" and headers["content-type"] == "application/json"
    assert body == {"version": "0.2.0", "labels": ["debian-12", "omnios-bloody"]}


def test_declare_on_an_old_server_is_skipped() -> None:
    with FakeForgejo("gitea", declare=False) as fake:
        assert registered(fake).declare(version="1", labels=["x"]) is None


def test_bad_registration_tokens(fake: FakeForgejo) -> None:
    client = Client(fake.url)
    with pytest.raises(ForgeError, match="registration token not found") as exc:
        client.register(name="n", token="nope", version="1", labels=["a"])
    assert not isinstance(exc.value, ForgeUnavailable | RegistrationGone)
    token = fake.create_registration_token()
    fake.invalidate_registration_token(token)
    with pytest.raises(ForgeError, match="invalidated"):
        client.register(name="n", token=token, version="1", labels=["a"])


def test_revoked_registration_is_registration_gone(fake: FakeForgejo) -> None:
    client = registered(fake)
    assert client.fetch_task(0).tasks_version == 1
    fake.delete_runner(client.credentials.uuid)  # type: ignore[union-attr]
    with pytest.raises(RegistrationGone, match="unregistered runner") as exc:
        client.fetch_task(0)
    assert isinstance(exc.value, SolsticeError)
    assert exc.value.status == (401 if fake.mode == "forgejo" else 500)
    wrong = Client(fake.url, Credentials(registered(fake).credentials.uuid, "wrong"))  # type: ignore[union-attr]
    with pytest.raises(RegistrationGone):
        wrong.update_log(m.UpdateLogRequest(task_id=1))


def test_server_down_is_unavailable_then_recovers(fake: FakeForgejo) -> None:
    client = registered(fake)
    fake.down()
    with pytest.raises(ForgeUnavailable, match="cannot connect") as exc:
        client.fetch_task(0)
    assert isinstance(exc.value, InfraError)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            fake.up()

    resp = retry(lambda: client.fetch_task(0), sleep=sleep, backoff=Backoff(initial=0.1, jitter=0))
    assert resp.tasks_version == 1 and sleeps == [0.1, 0.2, 0.4]


def test_retry_gives_up_and_passes_other_errors() -> None:
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise ForgeUnavailable("down")

    with pytest.raises(ForgeUnavailable):
        retry(down, attempts=4, sleep=lambda s: None)
    assert len(calls) == 4

    def gone() -> None:
        raise RegistrationGone("gone")

    with pytest.raises(RegistrationGone):
        retry(gone, sleep=lambda s: None)


def test_classification_table() -> None:
    def c(status: int, body: object, proc: str = "runner.v1.RunnerService/FetchTask") -> type:
        raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
        return type(classify(proc, status, raw))

    assert c(401, {"code": "unauthenticated", "message": "unregistered runner"}) is RegistrationGone
    assert (
        c(
            500,
            {"code": "unknown", "message": "rpc error: code = Unauthenticated desc = unregistered runner"},
        )
        is RegistrationGone
    )
    assert c(500, {"code": "unknown", "message": "rpc error: code = Internal desc = db"}) is ForgeUnavailable
    assert (
        c(500, {"code": "internal", "message": "request key is currently locked; retry soon"})
        is ForgeUnavailable
    )
    assert c(503, {"code": "unavailable", "message": "x"}) is ForgeUnavailable
    assert c(502, b"<html>Bad Gateway</html>") is ForgeUnavailable
    assert c(429, b"") is ForgeUnavailable
    assert c(400, {"code": "invalid_argument", "message": "x"}) is ForgeError
    assert c(500, {"code": "unknown", "message": "runner registration token not found"}) is ForgeError
    assert (
        c(
            409,
            {"code": "already_exists", "message": "log file has been archived"},
            "runner.v1.RunnerService/UpdateLog",
        )
        is LogArchived
    )
    assert (
        c(
            500,
            {
                "code": "unknown",
                "message": "rpc error: code = AlreadyExists desc = log file has been archived",
            },
            "runner.v1.RunnerService/UpdateLog",
        )
        is LogArchived
    )


def test_wrong_content_type_empty_body_and_unknown_procedure(fake: FakeForgejo) -> None:
    client = registered(fake)
    base = client.base
    r = client.session.post(
        base + "/runner.v1.RunnerService/FetchTask", data=b"", headers={"x-runner-uuid": "u"}
    )
    assert r.status_code in (400, 500) and "zero-length" in r.json()["message"]
    r = client.session.post(
        base + "/runner.v1.RunnerService/FetchTask", data=b"x", headers={"Content-Type": "application/xml"}
    )
    assert r.status_code == 415
    assert client.session.post(base + "/runner.v1.RunnerService/Nope", data=b"{}").status_code == 404


# --- enqueue / FetchTask ----------------------------------------------------------------------

MATRIX = """\
name: ci
on: [push]
jobs:
  test:
    runs-on: ${{ matrix.os }}
    strategy:
      matrix:
        os: [debian-12, omnios-bloody]
        py: ["3.11", "3.12"]
        exclude:
          - {os: omnios-bloody, py: "3.12"}
    steps:
      - uses: actions/checkout@v4
      - run: echo ${{ matrix.py }}
  report:
    needs: test
    runs-on: debian-12
    steps:
      - run: echo done
"""


def test_enqueue_matrix_one_task_per_combination(fake: FakeForgejo) -> None:
    jobs = fake.enqueue(MATRIX, secrets={"API_KEY": "s3cret"}, vars={"LEVEL": "2"})
    assert [j.name for j in jobs] == [
        "test (debian-12, 3.11)",
        "test (debian-12, 3.12)",
        "test (omnios-bloody, 3.11)",
        "report",
    ]
    assert [j.status for j in jobs] == ["waiting", "waiting", "waiting", "blocked"]
    client = registered(fake, ["debian-12", "omnios-bloody"])
    tasks: list[m.Task] = []
    version = 0
    for _ in range(6):
        resp = client.fetch_task(version)
        version = max(version, resp.tasks_version)
        if resp.task is not None:
            tasks.append(resp.task)
            version = 0  # a task came back: ask the database again next time (§3.3)
    assert len(tasks) == 3
    payloads = [yaml.safe_load(t.workflow_payload) for t in tasks]
    assert [list(p["jobs"]) for p in payloads] == [["test"]] * 3
    first = payloads[0]["jobs"]["test"]
    assert first["name"] == "test (debian-12, 3.11)" and first["runs-on"] == "debian-12"
    assert first["strategy"]["matrix"] == {"os": ["debian-12"], "py": ["3.11"]}
    t = tasks[0]
    token = t.context["token"]
    assert t.secrets["API_KEY"] == "s3cret" and t.secrets["GITHUB_TOKEN"] == token
    assert ("FORGEJO_TOKEN" in t.secrets) == (fake.mode == "forgejo")
    assert t.vars == {"LEVEL": "2"} and t.context["repository"] == "owner/repo"
    assert t.context["job"] == ("test" if fake.mode == "forgejo" else str(jobs[0].id))
    # the tasks finish: the dependent job becomes waiting with its needs (aggregated result, outputs)
    for i, task in enumerate(tasks):
        client.update_task(
            m.UpdateTaskRequest(
                state=m.TaskState(id=task.id, result=m.Result.RESULT_SUCCESS, stopped_at=datetime.now(UTC)),
                outputs={f"o{i}": str(i)},
            )
        )
    resp = client.fetch_task(0)
    assert (
        resp.task is not None
        and yaml.safe_load(resp.task.workflow_payload)["jobs"]["report"]["needs"] == "test"
    )
    assert resp.task.needs["test"].result == m.Result.RESULT_SUCCESS
    assert resp.task.needs["test"].outputs == {"o0": "0", "o1": "1", "o2": "2"}


def test_tasks_version_and_label_matching(fake: FakeForgejo) -> None:
    client = registered(fake, ["debian-12"])
    first = client.fetch_task(0)
    assert first.task is None and first.tasks_version == 1
    assert client.fetch_task(1).task is None  # same version: the server does not even look
    fake.enqueue("jobs:\n  a:\n    runs-on: [self-hosted, debian-12]\n    steps: [{run: x}]\n")
    assert client.fetch_task(1).task is None  # needs both labels
    fake.enqueue("jobs:\n  b:\n    runs-on: debian-12\n    steps: [{run: x}]\n")
    resp = client.fetch_task(2)
    assert resp.task is not None and resp.tasks_version == 3


def test_forgejo_request_key_resends_lost_tasks() -> None:
    with FakeForgejo("forgejo") as fake:
        client = registered(fake)
        fake.enqueue("jobs:\n  b:\n    runs-on: debian-12\n    steps: [{run: x}]\n")
        key = client._request_key
        first = client.fetch_task(0)
        assert first.task is not None and client._request_key != key
        client._request_key = key  # as if the answer had been lost and the call retried
        again = client.fetch_task(0)
        assert again.task is not None and again.task.id == first.task.id and again.tasks_version == 0
        assert again.task.context["token"] != first.task.context["token"]  # freshly minted


def test_update_log_ack_rules_and_archive(fake: FakeForgejo) -> None:
    client = registered(fake)
    fake.enqueue("jobs:\n  b:\n    runs-on: debian-12\n    steps: [{run: x}]\n")
    task = client.fetch_task(0).task
    assert task is not None

    def rows(*texts: str) -> tuple[m.LogRow, ...]:
        return tuple(m.LogRow(time=datetime.now(UTC), content=t) for t in texts)

    def log(index: int, *texts: str, no_more: bool = False) -> int:
        return client.update_log(
            m.UpdateLogRequest(task_id=task.id, index=index, rows=rows(*texts), no_more=no_more)
        ).ack_index

    assert log(0, "a", "b") == 2
    assert log(1, "b", "c") == 3  # overlap: only the new row is appended
    assert log(0, "a") == 3  # all duplicates
    assert log(5, "x") == 3  # a gap: nothing written, resend from the ack
    assert log(3) == 3  # empty
    assert log(3, "multi\nline", no_more=True) == 4
    assert fake.tasks[task.id].lines() == ["a", "b", "c", "multi\\nline"]
    with pytest.raises(LogArchived):
        log(4, "late")


def test_cancel_shows_in_update_task_and_outputs_first_write_wins(fake: FakeForgejo) -> None:
    client = registered(fake)
    fake.enqueue("jobs:\n  b:\n    runs-on: debian-12\n    steps: [{run: x}, {run: y}]\n")
    task = client.fetch_task(0).task
    assert task is not None
    resp = client.update_task(m.UpdateTaskRequest(state=m.TaskState(id=task.id), outputs={"a": "1"}))
    assert (
        resp.state is not None
        and resp.state.result == m.Result.RESULT_UNSPECIFIED
        and resp.sent_outputs == ("a",)
    )
    fake.cancel(task.id)
    resp = client.update_task(
        m.UpdateTaskRequest(state=m.TaskState(id=task.id), outputs={"a": "2", "b": "3"})
    )
    assert resp.state is not None and resp.state.result == m.Result.RESULT_CANCELLED
    assert set(resp.sent_outputs) == {"a", "b"} and fake.tasks[task.id].outputs == {"a": "1", "b": "3"}
    assert [s.status for s in fake.tasks[task.id].steps] == ["cancelled", "cancelled"]
