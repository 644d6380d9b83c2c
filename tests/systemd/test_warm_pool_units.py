"""The warm pool under real systemd (the nspawn testbed) with a real guest: the dispatcher starts a
keeper unit ``solstice-pool@<vm-id>.service`` with the label's limits and none of the job units'
credentials; a submitted job takes its VM, and the VM's QEMU moves into the job's unit
(``systemctl status solstice-job@<uuid>`` lists it, the job's cgroup holds it); after the job the VM
and its keeper are gone; a dispatcher restarted without a pool stops the replacement keeper.

The installation is test_pipeline's (its module fixture, set up again for this module).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_pipeline import (  # type: ignore[import-not-found]
    BIG_IMAGE,
    BOOT_WAIT,
    DISPATCHER,
    DISPATCHER_CONFIG,
    HELLO_WORKFLOW,
    MEMORY_OVERHEAD_MIB,
    VM_MEMORY_MIB,
    Pipeline,
    config_text,
    replace_in_container,
)
from test_pipeline import pipeline as pipeline  # noqa: F401  (fixture)

from solstice.model import Result
from tests.waiting import wait_until

pytestmark = [pytest.mark.systemd, pytest.mark.vm]

POOL = "\n[pool]\nhealth_interval = 10\n[pool.debian-12]\nsize = 1\nmax_age = 3600\n"


def pool_records(pipeline: Pipeline) -> list[dict[str, object]]:
    out = pipeline.testbed.run(
        "sh", "-c", "cat /run/solstice/pool/*.json 2>/dev/null | sed 's/$/\\n/'", check=False
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def keeper_units(pipeline: Pipeline) -> list[str]:
    out = pipeline.testbed.run(
        "systemctl", "list-units", "--plain", "--no-legend", "--full", "solstice-pool@*"
    ).stdout
    return [line.split()[0] for line in out.splitlines() if " active " in f" {line} "]


def restart_dispatcher(pipeline: Pipeline, extra: str) -> None:
    text = config_text(pipeline.token, pipeline.broker, pipeline.database_url, None) + BIG_IMAGE + extra
    replace_in_container(pipeline.testbed, DISPATCHER_CONFIG, text, "root:solstice", "0640")
    done = pipeline.testbed.run("systemctl", "restart", DISPATCHER, check=False, timeout=90)
    assert done.returncode == 0, done.stderr + pipeline.explain()


#: The dispatcher runs with SOLSTICE_VM_BOOT_TIMEOUT=5 (test_pipeline's drop-in, for its deadline
#: test) and passes it on to every unit it starts; the keepers boot with the real one, as the job
#: units do (their drop-in).
POOL_DROPIN = "/run/systemd/system/solstice-pool@.service.d/pipeline-test.conf"


@pytest.fixture
def boot_timeout(pipeline: Pipeline) -> Iterator[None]:  # noqa: F811
    pipeline.testbed.write(POOL_DROPIN, "[Service]\nEnvironment=SOLSTICE_VM_BOOT_TIMEOUT=400\n")
    pipeline.testbed.run("systemctl", "daemon-reload")
    yield
    pipeline.testbed.run("rm", "-rf", str(Path(POOL_DROPIN).parent))
    pipeline.testbed.run("systemctl", "daemon-reload")


def test_a_job_takes_a_warm_vm_whose_qemu_joins_the_jobs_unit(
    pipeline: Pipeline, boot_timeout: None
) -> None:  # noqa: F811
    testbed = pipeline.testbed
    restart_dispatcher(pipeline, POOL)

    def ready() -> dict[str, object] | None:
        return next((r for r in pool_records(pipeline) if r["state"] == "ready"), None)

    vm = wait_until("a ready warm VM", ready, BOOT_WAIT)
    vm_id = str(vm["vm_id"])
    keeper = f"solstice-pool@{vm_id}.service"
    assert keeper_units(pipeline) == [keeper]
    shown = testbed.show(keeper, "MemoryMax", "User", "RuntimeMaxUSec", "Description")
    assert shown["MemoryMax"] == str((VM_MEMORY_MIB + MEMORY_OVERHEAD_MIB) * 1024 * 1024), shown
    assert shown["User"] == "solstice", shown
    # None of the job units' credentials (their transient unit file has them: checked below).
    keeper_file = testbed.run("systemctl", "cat", keeper).stdout
    assert "LoadCredential" not in keeper_file and "secrets-key" not in keeper_file, keeper_file
    assert shown["RuntimeMaxUSec"] == "infinity", shown
    assert shown["Description"] == f"Solstice CI warm VM {vm_id} (debian-12)", shown
    qemu = int(str(vm["qemu_pid"]))
    assert keeper in testbed.run("cat", f"/proc/{qemu}/cgroup").stdout

    submission = pipeline.submit("warm", HELLO_WORKFLOW, secret=True)
    job_id, unit = pipeline.started(submission)
    tap = pipeline.tap
    took = tap.wait("the take", lambda: tap.text_event(job_id, "Took warm VM"), 120)
    assert vm_id in took.text, took
    tap.wait("the step to start sleeping", lambda: tap.text_event(job_id, "before the sleep"), 120)

    def in_job_unit() -> bool:
        return unit in testbed.run("cat", f"/proc/{qemu}/cgroup", check=False).stdout

    wait_until("the VM's QEMU to join the job's unit", in_job_unit, 20)
    assert "LoadCredential=secrets-key" in testbed.run("systemctl", "cat", unit).stdout
    status = testbed.run("systemctl", "status", "--no-pager", "--full", "--lines=0", unit).stdout
    assert "qemu-system-x86_64" in status and f"solstice-{vm_id}" in status, status

    final = tap.wait("the job's final event", lambda: tap.final(job_id), 120)
    assert final.result is Result.SUCCESS, final
    assert submission.wait(60) == 0, submission.text()
    wait_until("the VM to be gone", lambda: not testbed.processes(f"solstice-{vm_id}"), 30)
    wait_until("its keeper to end", lambda: keeper not in keeper_units(pipeline), 30)
    journal = testbed.journal(unit)
    assert f"Took warm VM {vm_id}" in journal and "Boot console (warm VM" in journal, journal[-2000:]

    # The pool boots a replacement; a dispatcher restarted without a pool stops it.
    wait_until(
        "a replacement keeper", lambda: [u for u in keeper_units(pipeline) if u != keeper] or None, 60
    )
    restart_dispatcher(pipeline, "")
    wait_until("no keeper left", lambda: not keeper_units(pipeline), 60)
    loaded = testbed.run(
        "systemctl", "list-units", "--all", "--plain", "--no-legend", "solstice-pool@*"
    ).stdout
    assert "failed" not in loaded, loaded
    wait_until("no pool QEMU left", lambda: not testbed.processes("qemu-system"), 30)
