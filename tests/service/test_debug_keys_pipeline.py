"""Debug SSH's keys through the real pipeline with the stand-in job (helpers/fake_job.py ``FAKE:
access``): both runners fetch the public keys of the user who triggered an opt-in job from the
fake forge's users API and carry them in the JobRequest; a job without the switch costs no
request and carries nothing. The VM side is test_debug_ssh_vm.py."""

from __future__ import annotations

from helpers.forgejo import RunnerProcess, wait_done
from helpers.forgejo import register as register_forgejo
from helpers.github import register as register_github
from helpers.github import runner, wait_completed
from helpers.pipeline import Pipeline, wait_until
from helpers.runner_fixtures import forgejo_pipeline as forgejo_pipeline  # noqa: F401  (fixture)
from helpers.runner_fixtures import github_pipeline as github_pipeline  # noqa: F401  (fixture)
from store_fixtures import database_url as database_url  # noqa: F401  (fixture)
from store_fixtures import pg_databases as pg_databases  # noqa: F401  (fixture)

from tests.fakes.forgejo import FakeForgejo
from tests.fakes.github import FakeGitHub

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh0ZXN0a2V5Zm9yZGVidWdzc2hpbnNvbHN0aWNlY2k1 mona@laptop"


def workflow(runs_on: str, *, switch: bool) -> str:
    env = "      SOLSTICE_DEBUG_SSH: on-failure\n" if switch else ""
    return (
        f"name: ci\non: push\njobs:\n  build:\n    runs-on: {runs_on}\n"
        f"    env:\n      FAKE: access\n{env}    steps:\n      - run: echo one\n"
    )


def test_forgejo_runner_carries_the_triggering_users_keys_only_for_opt_in_jobs(
    forgejo_pipeline: Pipeline,
) -> None:
    with FakeForgejo() as forge:
        forge.user_keys["mona"] = [KEY, "not a key", KEY]  # junk and duplicates are dropped
        register_forgejo(forgejo_pipeline, forge)
        forgejo_pipeline.dispatcher(capacity=3)
        proc = RunnerProcess(forgejo_pipeline).start()
        (opted,) = forge.enqueue(workflow("debian-12", switch=True), actor="mona")
        (keyless,) = forge.enqueue(workflow("debian-12", switch=True), actor="nokeys")
        (plain,) = forge.enqueue(workflow("debian-12", switch=False), actor="mona")
        tasks = {}
        for name, job in (("opted", opted), ("keyless", keyless), ("plain", plain)):
            task_id = wait_until("the runner to take the task", lambda j=job: j.task_id, 30, 0.2)
            tasks[name] = "\n".join(wait_done(forge, task_id, 60, proc).lines())
        proc.terminate()
        assert "debug access: user=mona keys=1" in tasks["opted"], tasks["opted"]
        assert f"debug key: {KEY}" in tasks["opted"]
        assert "debug access: user=nokeys keys=0" in tasks["keyless"], tasks["keyless"]
        assert "debug problem: the forge has no user nokeys" in tasks["keyless"]
        assert "debug access: none" in tasks["plain"], tasks["plain"]
        with forge.lock:
            asked = sorted(body for what, _, body in forge.requests if what == "GET /api/v1/users/keys")
        assert asked == ["mona", "nokeys"]  # the plain job cost no request


def test_github_runner_carries_the_triggering_users_keys(github_pipeline: Pipeline) -> None:
    with FakeGitHub(poll_hold=2.0) as fake:
        fake.user_keys["mona"] = [KEY]
        register_github(github_pipeline, fake)
        github_pipeline.dispatcher()
        proc = runner(github_pipeline).start()
        (job,) = fake.enqueue(workflow("[self-hosted, debian-12]", switch=True), actor="mona")
        done = wait_completed(fake, job, 60, proc)
        assert done.completed is not None and done.completed["conclusion"] == "failed", done.completed
        log = fake.log_text(job)
        assert "debug access: user=mona keys=1" in log, log
        assert f"debug key: {KEY}" in log
        (unknown,) = fake.enqueue(workflow("[self-hosted, debian-12]", switch=True), actor="ghost")
        wait_completed(fake, unknown, 60, proc)
        log = fake.log_text(unknown)
        assert "debug access: user=ghost keys=0" in log and "the forge has no user ghost" in log, log
        proc.terminate()
