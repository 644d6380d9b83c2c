"""The GitHub job message (as the fake builds it, like GitHub's server) -> a sealed JobRequest."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from solstice.forges.github import messages as m
from solstice.forges.github.translate import Refused, Translated, job_uuid, translate
from solstice.model import StepKind
from solstice.secrets import unseal
from tests.fakes.github import FakeGitHub

KEY = b"0" * 43 + b"="  # a Fernet key (32 zero bytes, urlsafe base64)

WORKFLOW = """
name: ci
on: push
env:
  LEVEL: workflow
defaults:
  run:
    shell: bash
    working-directory: src
jobs:
  build:
    runs-on: [self-hosted, debian-12]
    env:
      WHO: ${{ github.actor }}
    strategy:
      matrix:
        py: ["3.11", "3.12"]
    outputs:
      built: ${{ steps.b.outputs.built }}
    steps:
      - uses: actions/checkout@v4
        with:
          path: tree
          fetch-depth: 0
          ref: main
      - name: Build ${{ matrix.py }}
        id: b
        if: github.event_name == 'push'
        env:
          TOKEN: ${{ secrets.API_KEY }}
        continue-on-error: ${{ matrix.py == '3.12' }}
        timeout-minutes: 7
        run: echo "py ${{ matrix.py }}"
"""


def message(workflow: str = WORKFLOW, *, secrets: dict[str, str] | None = None, **kw: Any) -> Any:
    fake = FakeGitHub()
    fake.url = "https://github.example"
    jobs = fake.enqueue(workflow, secrets=secrets or {"API_KEY": "s3cret-value"}, **kw)
    job = jobs[0]
    job.token = "job-token-abc"
    data = json.loads(json.dumps(fake._job_message(job)))
    return m.AgentJobRequestMessage.from_dict(data), job


def run(msg: m.AgentJobRequestMessage) -> Translated | Refused:
    return translate(
        msg,
        github_url="https://github.example/octo/repo",
        label="debian-12",
        secrets_key=KEY,
        reply_to="poller",
    )


def test_steps_keep_the_expressions_the_server_left_for_the_runner() -> None:
    msg, _ = message()
    out = run(msg)
    assert isinstance(out, Translated), out
    job = out.request.job
    checkout, build = job.steps
    assert checkout.kind is StepKind.CHECKOUT
    assert dict(checkout.with_) == {"path": "tree", "fetch-depth": "0", "ref": "main"}
    assert build.kind is StepKind.RUN and build.id == "b"
    assert build.run == "${{ format('echo \"py {0}\"', matrix.py) }}"
    assert build.env == {"TOKEN": "${{ secrets.API_KEY }}"}
    assert build.if_ == "success() && (github.event_name == 'push')"
    assert build.continue_on_error == "${{ matrix.py == '3.12' }}"
    assert build.timeout_minutes == 7.0
    assert job.env == {"LEVEL": "workflow", "WHO": "${{ github.actor }}"}
    assert job.shell == "bash" and job.working_directory == "src"
    assert job.outputs == {"built": "${{ steps.b.outputs.built }}"}
    assert job.matrix == {"py": "3.11"} and job.name == "build (3.11)"
    assert [s.external_id for s in out.steps] == [s.id for s in msg.steps]


def test_secrets_are_sealed_and_masked_and_the_job_token_authenticates_checkout() -> None:
    msg, _ = message()
    out = run(msg)
    assert isinstance(out, Translated)
    req = out.request
    assert not req.secrets and req.sealed_secrets
    assert "s3cret-value" not in json.dumps(req.sealed_secrets)
    plain = unseal(req, KEY).secrets
    token = next(v.value for k, v in msg.variables.items() if k == "system.github.token")
    assert plain == {"API_KEY": "s3cret-value", "GITHUB_TOKEN": token}
    assert req.source_ids["checkout_token_secret"] == "GITHUB_TOKEN"
    assert req.checkout_source == "https://github.example/octo/repo.git"
    assert req.commit == msg.context_data["github"]["sha"] and req.ref == "refs/heads/main"
    assert "s3cret-value" in out.mask and token in out.mask and "job-token-abc" in out.mask
    assert req.job_id == job_uuid("https://github.example/octo/repo", msg.job_id)
    assert req.contexts["github"]["repository"] == "octo/repo"
    assert req.contexts["strategy"]["job-total"] == 2


@pytest.mark.parametrize(
    ("uses", "named"),
    [
        ("actions/setup-node@v4", "actions/setup-node@v4"),
        ("docker/build-push-action@v6", "docker/build-push-action@v6"),
    ],
)
def test_any_other_action_is_refused_with_its_name(uses: str, named: str) -> None:
    msg, _ = message(uses={2: uses})
    out = run(msg)
    assert isinstance(out, Refused)
    assert named in out.reason and "is not supported" in out.reason and "step 2" in out.reason
    assert len(out.steps) == 2  # the reporter still shows the steps (as skipped)


def test_an_unusable_shell_is_refused() -> None:
    msg, _ = message()
    out = run(dataclasses.replace(msg, defaults=({"run": {"shell": "pwsh"}},)))
    assert isinstance(out, Refused) and "pwsh" in out.reason


def test_a_checkout_input_solstice_cannot_honour_is_refused() -> None:
    msg, _ = message()
    first = dataclasses.replace(msg.steps[0], inputs={"path": "tree", "filter": "blob:none"})
    out = run(dataclasses.replace(msg, steps=(first, *msg.steps[1:])))
    assert isinstance(out, Refused), out
    assert "`with.filter`: partial clones are not supported" in out.reason and "step 1" in out.reason
