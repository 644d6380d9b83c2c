"""Tasks fetched from the fake server -> JobRequests (or rejections with their reasons)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from solstice.config import ImageConfig
from solstice.forges.forgejo import messages as m
from solstice.forges.forgejo.client import Client, Credentials
from solstice.forges.forgejo.translate import (
    CHECKOUT_TOKEN_SECRET,
    Rejected,
    Skipped,
    Translated,
    job_uuid,
    translate,
)
from solstice.images.catalog import Catalog
from solstice.model import Source, StepKind, from_dict, to_dict
from solstice.model.core import JobRequest
from solstice.model.labels import route
from solstice.secrets import unseal
from tests.fakes.forgejo import FakeForgejo

KEY = Fernet.generate_key()


@pytest.fixture(params=["forgejo", "gitea"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeForgejo]:
    with FakeForgejo(request.param) as f:
        yield f


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog({"debian-12": ImageConfig(label="debian-12", path="debian-12.qcow2")}, tmp_path)


def fetch(fake: FakeForgejo, workflow: str, labels: list[str], **kw: object) -> list[m.Task]:
    runner = fake.add_runner("r", labels)
    client = Client(fake.url, Credentials(runner.uuid, runner.token))
    fake.enqueue(workflow, **kw)  # type: ignore[arg-type]
    tasks = []
    while (resp := client.fetch_task(0)).task is not None:
        tasks.append(resp.task)
    return tasks


def run(task: m.Task, fake: FakeForgejo, catalog: Catalog) -> Translated | Rejected | Skipped:
    return translate(
        task, server_url=fake.url, secrets_key=KEY, resolve_label=catalog.resolve, reply_to="q.r"
    )


WORKFLOW = """\
name: build
on: push
env:
  GREETING: hi
jobs:
  test:
    runs-on: [self-hosted, "${{ matrix.os }}"]
    needs: []
    strategy:
      matrix:
        os: [debian-12]
        py: ["3.11", "3.12"]
    steps:
      - uses: actions/checkout@v4
      - run: echo ${{ matrix.py }} ${{ vars.LEVEL }} ${{ secrets.API_KEY }}
      - run: echo ${{ github.repository }}
"""


def test_matrix_tasks_translate(fake: FakeForgejo, catalog: Catalog) -> None:
    tasks = fetch(
        fake, WORKFLOW, ["self-hosted", "debian-12"], secrets={"API_KEY": "s3cret"}, vars={"LEVEL": "2"}
    )
    assert len(tasks) == 2
    results = [run(t, fake, catalog) for t in tasks]
    assert all(isinstance(r, Translated) for r in results)
    first = results[0]
    assert isinstance(first, Translated)
    req = first.request
    assert req.job.name == "test (debian-12, 3.11)" and dict(req.job.matrix) == {
        "os": "debian-12",
        "py": "3.11",
    }
    assert [s.kind for s in req.job.steps] == [StepKind.CHECKOUT, StepKind.RUN, StepKind.RUN]
    assert first.step_count == 3
    assert req.label == "debian-12" and req.source == Source.FORGEJO and req.reply_to == "q.r"
    assert req.job_id == job_uuid(fake.url, tasks[0].id) and req.source_ids["task_id"] == str(tasks[0].id)
    assert req.job.env["GREETING"] == "hi"
    # secrets: sealed, with the automatic token; nothing secret in the plain request
    token = tasks[0].context["token"]
    assert req.secrets == {} and req.sealed_secrets
    plain = str(to_dict(req))
    assert "s3cret" not in plain and token not in plain
    opened = unseal(req, KEY).secrets
    assert opened["API_KEY"] == "s3cret" and opened[CHECKOUT_TOKEN_SECRET] == token
    assert opened["ACTIONS_RUNTIME_TOKEN"] == "runtime-" + token
    assert "s3cret" in first.mask and token in first.mask
    # checkout: clone URL without credentials, the commit and ref; the token is the sealed secret
    assert req.checkout_source == f"{fake.url}/owner/repo.git"
    assert req.commit == tasks[0].context["sha"] and req.ref == "refs/heads/main"
    assert req.source_ids["checkout_token_secret"] == CHECKOUT_TOKEN_SECRET
    # contexts for the expressions
    assert req.contexts["vars"] == {"LEVEL": "2"}
    assert req.contexts["github"]["repository"] == "owner/repo" and "token" not in req.contexts["github"]
    # the request survives the queue's JSON
    assert from_dict(JobRequest, to_dict(req)) == req


def test_needs_and_inputs_reach_the_contexts(fake: FakeForgejo, catalog: Catalog) -> None:
    runner = fake.add_runner("r", ["debian-12"])
    client = Client(fake.url, Credentials(runner.uuid, runner.token))
    fake.enqueue(
        "jobs:\n  a:\n    runs-on: debian-12\n    steps: [{run: x}]\n"
        "  b:\n    needs: a\n    runs-on: debian-12\n    steps: [{run: 'echo ${{ needs.a.outputs.v }}'}]\n",
        event_name="workflow_dispatch",
        event={"inputs": {"level": "3"}},
    )
    a = client.fetch_task(0).task
    assert a is not None
    client.update_task(
        m.UpdateTaskRequest(
            state=m.TaskState(id=a.id, result=m.Result.RESULT_SUCCESS, stopped_at=m.utcnow()),
            outputs={"v": "7"},
        )
    )
    b = client.fetch_task(0).task
    assert b is not None
    tr = run(b, fake, catalog)
    assert isinstance(tr, Translated)
    assert tr.request.contexts["needs"] == {"a": {"outputs": {"v": "7"}, "result": "success"}}
    assert tr.request.contexts["inputs"] == {"level": "3"}
    assert tr.request.job.needs == ("a",)


@pytest.mark.parametrize(
    ("workflow", "reason", "detail"),
    [
        (
            "jobs:\n  a:\n    runs-on: debian-12\n    steps:\n      - uses: actions/setup-go@v5\n",
            "cannot run in Solstice",
            "step 1 (uses: actions/setup-go@v5): Solstice runs only `run:` steps and actions/checkout",
        ),
        (
            "jobs:\n  a:\n    runs-on: freebsd-14\n    steps: [{run: x}]\n",
            "unknown label 'freebsd-14'",
            "hint:",
        ),
        (
            "jobs:\n  a:\n    runs-on: debian-12\n    container: node:20\n    steps: [{run: x}]\n",
            "cannot run in Solstice",
            "`container:` is not supported",
        ),
        (
            "jobs:\n  a:\n    runs-on: debian-12\n    steps:\n"
            "      - {uses: actions/checkout@v4, with: {ssh-key: k}}\n",
            "cannot run in Solstice",
            "`with.ssh-key`: Solstice fetches over HTTPS with a token",
        ),
    ],
)
def test_rejections_explain_themselves(
    fake: FakeForgejo, catalog: Catalog, workflow: str, reason: str, detail: str
) -> None:
    labels = ["debian-12", "freebsd-14"]
    (task,) = fetch(fake, workflow, labels)
    result = run(task, fake, catalog)
    assert isinstance(result, Rejected) and result.task_id == task.id
    text = "\n".join(result.log_lines())
    assert reason in text and detail in text
    assert result.log_lines()[0].startswith("Solstice cannot run this job: ")
    assert result.step_count == 1


def test_bad_payloads_are_rejected(fake: FakeForgejo, catalog: Catalog) -> None:
    def task(payload: bytes) -> m.Task:
        return m.Task(id=9, workflow_payload=payload, context={"token": "t"})

    bad_yaml = run(task(b"jobs:\n  a: [\n"), fake, catalog)
    assert isinstance(bad_yaml, Rejected) and "invalid YAML" in "\n".join(bad_yaml.lines)
    two = run(
        task(
            b"jobs:\n  a: {runs-on: debian-12, steps: [{run: x}]}\n"
            b"  b: {runs-on: debian-12, steps: [{run: y}]}\n"
        ),
        fake,
        catalog,
    )
    assert isinstance(two, Rejected) and "exactly one job" in two.reason
    assert isinstance(run(task(b""), fake, catalog), Rejected)
    assert isinstance(run(task(b"\xff\xfe"), fake, catalog), Rejected)


@pytest.mark.parametrize(
    ("condition", "runs"),
    [
        ("github.ref == 'refs/heads/main'", True),
        ("github.ref == 'refs/heads/release'", False),
        ("vars.DEPLOY == 'yes'", True),
        ("matrix.py == '3.12'", False),  # the only combination is 3.11
        ("failure()", False),  # no need failed
        ("always()", True),
        ("", True),
    ],
)
def test_the_jobs_if_is_evaluated_by_the_runner(
    fake: FakeForgejo, catalog: Catalog, condition: str, runs: bool
) -> None:
    workflow = (
        "jobs:\n  a:\n    runs-on: debian-12\n"
        f'    if: "{condition}"\n'
        "    strategy: {matrix: {py: ['3.11']}}\n    steps: [{run: x}, {run: y}]\n"
    )
    (task,) = fetch(fake, workflow, ["debian-12"], vars={"DEPLOY": "yes"})
    result = run(task, fake, catalog)
    if runs:
        assert isinstance(result, Translated), result
    else:
        assert isinstance(result, Skipped) and result.step_count == 2
        assert condition in result.reason


def test_a_bad_job_if_is_rejected_with_the_reason(fake: FakeForgejo, catalog: Catalog) -> None:
    (task,) = fetch(
        fake,
        "jobs:\n  a:\n    runs-on: debian-12\n    if: nosuch(1)\n    steps: [{run: x}]\n",
        ["debian-12"],
    )
    result = run(task, fake, catalog)
    assert isinstance(result, Rejected), result
    assert "nosuch" in "\n".join(result.log_lines())


def test_gitea_token_is_the_task_token_when_the_server_sends_none(
    fake: FakeForgejo, catalog: Catalog
) -> None:
    (sent,) = fetch(fake, "jobs:\n  a:\n    runs-on: debian-12\n    steps: [{run: x}]\n", ["debian-12"])
    token = str(sent.context["token"])
    bare = dataclasses.replace(sent, secrets={"API_KEY": "s3cret"})  # an old server: no token secrets
    tr = run(bare, fake, catalog)
    assert isinstance(tr, Translated)
    opened = unseal(tr.request, KEY).secrets
    assert opened["GITEA_TOKEN"] == opened["GITHUB_TOKEN"] == token
    assert token in tr.mask
    # the server's own value wins where it sends one
    tr2 = run(dataclasses.replace(sent, secrets={"GITEA_TOKEN": "from-server"}), fake, catalog)
    assert isinstance(tr2, Translated) and unseal(tr2.request, KEY).secrets["GITEA_TOKEN"] == "from-server"


def test_the_job_goes_to_the_queue_of_the_runners_label_without_a_catalog(fake: FakeForgejo) -> None:
    labels = ("self-hosted", "omnios-bloody")
    (task,) = fetch(
        fake, "jobs:\n  a:\n    runs-on: [self-hosted, omnios-bloody]\n    steps: [{run: x}]\n", list(labels)
    )
    tr = translate(task, server_url=fake.url, secrets_key=KEY, resolve_label=lambda r: route(r, labels))
    assert isinstance(tr, Translated) and tr.request.label == "omnios-bloody"
    (other,) = fetch(fake, "jobs:\n  a:\n    runs-on: [self-hosted]\n    steps: [{run: x}]\n", list(labels))
    refused = translate(
        other, server_url=fake.url, secrets_key=KEY, resolve_label=lambda r: route(r, labels)
    )
    assert isinstance(refused, Rejected) and "names no image label" in refused.reason


def test_runs_on_reads_needs_and_vars(fake: FakeForgejo, catalog: Catalog) -> None:
    # GitHub's contexts for runs-on include needs and vars: the label routes the job.
    payload = (
        b"jobs:\n  b:\n    needs: a\n"
        b"    runs-on: ${{ needs.a.outputs.os }}-${{ vars.V }}\n    steps: [{run: x}]\n"
    )
    task = m.Task(
        id=9,
        workflow_payload=payload,
        context={"token": "t"},
        needs={"a": m.TaskNeed(outputs={"os": "debian"}, result=m.Result.RESULT_SUCCESS)},
        vars={"V": "12"},
    )
    tr = run(task, fake, catalog)
    assert isinstance(tr, Translated), tr
    assert tr.request.job.runs_on == ("debian-12",) and tr.request.label == "debian-12"
