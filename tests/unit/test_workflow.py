"""Actions YAML -> JobSpecs: translation, matrix expansion, line numbers and every error."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from solstice.errors import WorkflowError
from solstice.model.core import JobSpec, StepKind, from_dict, to_dict
from solstice.workflow import Workflow, WorkflowProblems, load_workflow, parse_workflow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "workflows"
FILE = "wf.yml"


def parse(text: str, **kwargs: Any) -> Workflow:
    return parse_workflow(textwrap.dedent(text), FILE, **kwargs)


def problems(text: str, **kwargs: Any) -> list[str]:
    with pytest.raises(WorkflowError) as info:
        parse(text, **kwargs)
    return info.value.problems


def one_problem(text: str, **kwargs: Any) -> str:
    found = problems(text, **kwargs)
    assert len(found) == 1, found
    return found[0]


def job(text: str, **kwargs: Any) -> JobSpec:
    wf = parse(text, **kwargs)
    assert len(wf.jobs) == 1
    return wf.jobs[0]


MINIMAL = """\
name: CI
on: push
jobs:
  build:
    runs-on: debian-12
    steps:
      - run: make
"""


# --- basics --------------------------------------------------------------------------------------


def test_minimal_workflow() -> None:
    wf = parse(MINIMAL)
    assert wf.name == "CI" and wf.file == FILE
    (j,) = wf.jobs
    assert j.key == "build" and j.name == "build"
    assert j.runs_on == ("debian-12",)
    assert j.timeout_minutes == 360
    assert j.workflow_name == "CI" and j.workflow_file == FILE
    assert j.line == 4
    (s,) = j.steps
    assert (s.number, s.name, s.kind, s.run, s.line) == (1, "Run make", StepKind.RUN, "make", 7)
    assert s.if_ == "" and s.continue_on_error is False and s.timeout_minutes is None and s.shell is None


def test_workflow_name_defaults_to_the_file() -> None:
    wf = parse(MINIMAL.replace("name: CI\n", ""))
    assert wf.name == FILE and wf.jobs[0].workflow_name == FILE


def test_on_is_a_key_not_a_boolean() -> None:
    # YAML 1.1 reads `on` as true; the translator must accept it under every spelling.
    wf = parse(MINIMAL.replace("on: push", "on:\n  push:\n    branches: [main]\n  workflow_dispatch:"))
    assert wf.jobs[0].key == "build"
    assert parse(MINIMAL.replace("on: push", "'on': [push]")).jobs


def test_jobs_in_file_order_and_steps_numbered_from_one() -> None:
    wf = parse(
        """\
        on: push
        jobs:
          zeta:
            runs-on: a
            steps:
              - run: one
              - run: two
              - run: three
          alpha:
            runs-on: b
            steps:
              - run: x
        """
    )
    assert [j.key for j in wf.jobs] == ["zeta", "alpha"]
    assert [s.number for s in wf.jobs[0].steps] == [1, 2, 3]
    assert [s.run for s in wf.jobs[0].steps] == ["one", "two", "three"]


def test_line_numbers_of_jobs_and_steps() -> None:
    wf = parse(
        """\
        name: lines
        on: push

        jobs:
          first:
            runs-on: x
            steps:
              - name: A
                run: a

              - run: |
                  b
                  c
              -   run: d
          second:
            runs-on: y
            steps:
              - uses: actions/checkout@v4
        """
    )
    first, second = wf.jobs
    assert first.line == 5 and second.line == 15
    assert [s.line for s in first.steps] == [8, 11, 14]
    assert second.steps[0].line == 18


def test_yaml_core_schema_scalars() -> None:
    # GitHub types plain scalars by YAML 1.2: yes/on/off stay strings, 3.10 is the number 3.1.
    j = job(
        """\
        on: push
        env:
          A: yes
          B: off
          C: 3.10
          D: 010
          E: 2024-01-01
          F: ~
          G: true
          H: 0x1f
          I: "quoted 3.10"
          J: 1e3
        jobs:
          build:
            runs-on: x
            steps:
              - run: make
        """
    )
    assert j.env == {
        "A": "yes",
        "B": "off",
        "C": "3.1",
        "D": "10",
        "E": "2024-01-01",
        "F": "",
        "G": "true",
        "H": "31",
        "I": "quoted 3.10",
        "J": "1000",
    }


def test_jobspec_round_trips_through_the_model_json() -> None:
    wf = load_workflow(FIXTURES / "ci.yml")
    for j in wf.jobs:
        assert from_dict(JobSpec, to_dict(j)) == j


# --- env and defaults ----------------------------------------------------------------------------


def test_env_layering() -> None:
    j = job(
        """\
        on: push
        env:
          SHARED: workflow
          ONLY_WF: 1
        jobs:
          build:
            runs-on: x
            env:
              SHARED: job
              ONLY_JOB: "${{ github.sha }}"
            steps:
              - run: make
                env:
                  SHARED: step
                  ONLY_STEP: true
        """
    )
    # Workflow env overlaid by job env; the step keeps its own env (applied last at run time).
    assert j.env == {"SHARED": "job", "ONLY_WF": "1", "ONLY_JOB": "${{ github.sha }}"}
    assert j.steps[0].env == {"SHARED": "step", "ONLY_STEP": "true"}


def test_env_values_must_be_scalars() -> None:
    p = one_problem(
        """\
        on: push
        jobs:
          build:
            runs-on: x
            env:
              OK: 1
              BAD: [1, 2]
            steps:
              - run: make
        """
    )
    assert p == "wf.yml:7: job `build`: `env.BAD` must be a string, not a mapping or list"


def test_defaults_workflow_overridden_by_job_per_key() -> None:
    wf = parse(
        """\
        on: push
        defaults:
          run:
            shell: sh
            working-directory: src
        jobs:
          a:
            runs-on: x
            defaults:
              run:
                shell: bash -e {0}
            steps:
              - run: make
          b:
            runs-on: x
            steps:
              - run: make
                shell: python
                working-directory: ${{ matrix.dir }}
        """
    )
    a, b = wf.jobs
    assert (a.shell, a.working_directory) == ("bash -e {0}", "src")
    assert (b.shell, b.working_directory) == ("sh", "src")
    assert (b.steps[0].shell, b.steps[0].working_directory) == ("python", "${{ matrix.dir }}")


def test_defaults_unknown_key_and_bad_shell() -> None:
    found = problems(
        """\
        on: push
        defaults:
          run:
            shell: pwsh
            cwd: x
          other: 1
        jobs:
          build:
            runs-on: x
            steps:
              - run: make
        """
    )
    assert found == [
        "wf.yml:4: `defaults.run.shell`: shell `pwsh` is not available in Solstice guests "
        "(use bash, sh or python)",
        "wf.yml:5: `defaults.run`: unknown key `cwd` (accepted: shell, working-directory)",
        "wf.yml:6: `defaults`: unknown key `other` (accepted: run)",
    ]


# --- runs-on -------------------------------------------------------------------------------------


def test_runs_on_list_and_labels_mapping() -> None:
    j = job(MINIMAL.replace("runs-on: debian-12", "runs-on: [self-hosted, omnios-bloody]"))
    assert j.runs_on == ("self-hosted", "omnios-bloody")
    j = job(MINIMAL.replace("runs-on: debian-12", "runs-on:\n      labels: [a, b]"))
    assert j.runs_on == ("a", "b")


def test_runs_on_expressions() -> None:
    wf = parse(
        """\
        on: push
        jobs:
          build:
            runs-on: ${{ matrix.os }}
            strategy:
              matrix:
                os: [omnios-bloody, freebsd-14]
            steps:
              - run: make
          deploy:
            runs-on: ["${{ github.event_name == 'push' && 'prod' || 'staging' }}", "x-${{ matrix.arch }}"]
            steps:
              - run: make
        """,
        github={"event_name": "push"},
    )
    assert [j.runs_on for j in wf.jobs] == [("omnios-bloody",), ("freebsd-14",), ("prod", "x-")]


def test_runs_on_expression_yielding_a_list() -> None:
    j = job(
        """\
        on: push
        jobs:
          build:
            runs-on: ${{ matrix.labels }}
            strategy:
              matrix:
                labels: [[self-hosted, debian-12]]
            steps:
              - run: make
        """
    )
    assert j.runs_on == ("self-hosted", "debian-12")


def test_runs_on_errors() -> None:
    assert one_problem(MINIMAL.replace("    runs-on: debian-12\n", "")) == (
        "wf.yml:4: job `build` has no `runs-on` (the label of the image to run it in)"
    )
    assert one_problem(MINIMAL.replace("runs-on: debian-12", "runs-on: ${{ matrix.os }}")) == (
        "wf.yml:5: job `build`: `runs-on`: '${{ matrix.os }}' evaluates to an empty label"
    )
    assert one_problem(MINIMAL.replace("runs-on: debian-12", "runs-on:\n      group: big")) == (
        "wf.yml:6: job `build`: `runs-on`: runner groups (`group:`) are not supported"
    )


# --- step names and checkout ---------------------------------------------------------------------


def test_step_display_names() -> None:
    j = job(
        """\
        on: push
        jobs:
          build:
            runs-on: x
            steps:
              - name: Named
                run: make
              - run: |

                  ./configure --prefix=/usr
                  make
              - uses: actions/checkout@v4
              - name: Get the code
                uses: actions/checkout@v4
              - name: Build ${{ matrix.os }}
                run: make
        """
    )
    assert [s.name for s in j.steps] == [
        "Named",
        "Run ./configure --prefix=/usr",
        "Checkout",
        "Get the code",
        "Build ${{ matrix.os }}",  # evaluated at run time
    ]


@pytest.mark.parametrize(
    "uses",
    [
        "actions/checkout@v4",
        "actions/checkout@main",
        "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683",
        "Actions/Checkout@v3",
        "https://github.com/actions/checkout@v4",
        "https://code.forgejo.org/actions/checkout@v4",
        "https://git.example.org/actions/checkout@v4",
    ],
)
def test_checkout_forms(uses: str) -> None:
    j = job(MINIMAL.replace("- run: make", f"- uses: {uses}"))
    (s,) = j.steps
    assert s.kind is StepKind.CHECKOUT and s.name == "Checkout" and s.run == ""


def test_checkout_inputs_are_kept_as_strings() -> None:
    j = job(
        MINIMAL.replace(
            "- run: make",
            "- uses: actions/checkout@v4\n"
            "        with:\n"
            "          fetch-depth: 0\n"
            "          lfs: true\n"
            "          path: src/${{ matrix.os }}\n"
            "          token: ${{ secrets.TOKEN }}",
        )
    )
    assert j.steps[0].with_ == {
        "fetch-depth": "0",
        "lfs": "true",
        "path": "src/${{ matrix.os }}",
        "token": "${{ secrets.TOKEN }}",
    }


def test_checkout_needs_a_version() -> None:
    assert one_problem(MINIMAL.replace("- run: make", "- uses: actions/checkout")) == (
        "wf.yml:7: step 1 (uses: actions/checkout): `uses:` needs a version: actions/checkout@v4"
    )


def test_unsupported_uses_exact_message_and_line() -> None:
    found = problems(
        """\
        on: push
        jobs:
          build:
            runs-on: debian-12
            steps:
              - uses: actions/checkout@v4
              - run: make
              - name: Node
                uses: actions/setup-node@v4
                with:
                  node-version: 20
        """
    )
    assert found == [
        "wf.yml:9: step 3 (uses: actions/setup-node@v4): "
        "Solstice runs only `run:` steps and actions/checkout"
    ]


@pytest.mark.parametrize("uses", ["./.github/actions/local", "docker://alpine:3.20", "actions/cache@v4"])
def test_other_uses_forms_are_rejected(uses: str) -> None:
    p = one_problem(MINIMAL.replace("- run: make", f"- uses: {uses}"))
    assert p == f"wf.yml:7: step 1 (uses: {uses}): Solstice runs only `run:` steps and actions/checkout"


def test_step_problems_name_the_job_when_there_are_several() -> None:
    found = problems(
        """\
        on: push
        jobs:
          a:
            runs-on: x
            steps:
              - run: ok
          b:
            runs-on: x
            steps:
              - uses: actions/setup-python@v5
        """
    )
    assert found == [
        "wf.yml:10: step 1 (uses: actions/setup-python@v5): Solstice runs only `run:` steps and "
        "actions/checkout (in job `b`)"
    ]


# --- step errors ---------------------------------------------------------------------------------


def test_step_needs_run_or_uses() -> None:
    assert one_problem(MINIMAL.replace("- run: make", "- name: nothing")) == (
        "wf.yml:7: step 1: a step needs `run:` (a command) or `uses: actions/checkout@...`"
    )


def test_step_cannot_have_both_run_and_uses() -> None:
    assert one_problem(MINIMAL.replace("- run: make", "- run: make\n        uses: actions/checkout@v4")) == (
        "wf.yml:7: step 1 (uses: actions/checkout@v4): a step has either `run:` or `uses:`, not both"
    )


def test_step_run_must_not_be_empty() -> None:
    assert one_problem(MINIMAL.replace("- run: make", "- run: ''")) == (
        "wf.yml:7: step 1: `run:` must be a non-empty command"
    )


def test_unknown_step_key() -> None:
    assert one_problem(MINIMAL.replace("- run: make", "- run: make\n        timeout: 5")) == (
        "wf.yml:8: step 1: unknown key `timeout` (accepted: name, id, run, uses, with, shell, "
        "working-directory, env, if, continue-on-error, timeout-minutes)"
    )


def test_with_only_on_uses_and_shell_only_on_run() -> None:
    found = problems(
        MINIMAL.replace(
            "- run: make",
            "- run: make\n        with: {a: 1}\n      - uses: actions/checkout@v4\n        shell: bash",
        )
    )
    assert found == [
        "wf.yml:8: step 1: `with:` applies only to `uses:` steps",
        "wf.yml:10: step 2 (uses: actions/checkout@v4): `shell:` applies only to `run:` steps",
    ]


def test_step_must_be_a_mapping() -> None:
    assert one_problem(MINIMAL.replace("- run: make", "- make")) == (
        "wf.yml:7: step 1: a step must be a mapping with `run:` or `uses:`"
    )


def test_step_ids() -> None:
    found = problems(
        MINIMAL.replace(
            "- run: make",
            "- run: a\n        id: build\n      - run: b\n        id: build\n"
            "      - run: c\n        id: 2fast",
        )
    )
    assert found == [
        "wf.yml:10: step 2: step id `build` is already used by step 1",
        "wf.yml:12: step 3: step id `2fast` must start with a letter or `_` and contain only letters, "
        "digits, `-` and `_`",
    ]


@pytest.mark.parametrize("shell", ["bash", "sh", "python", "bash -e {0}", "zsh {0}", "perl {0}"])
def test_accepted_shells(shell: str) -> None:
    j = job(MINIMAL.replace("- run: make", f"- run: make\n        shell: {shell}"))
    assert j.steps[0].shell == shell


@pytest.mark.parametrize(
    ("shell", "message"),
    [
        ("pwsh", "shell `pwsh` is not available in Solstice guests (use bash, sh or python)"),
        ("powershell", "shell `powershell` is not available in Solstice guests (use bash, sh or python)"),
        ("cmd", "shell `cmd` is not available in Solstice guests (use bash, sh or python)"),
        ("pwsh -command {0}", "shell `pwsh` is not available in Solstice guests (use bash, sh or python)"),
        ("bash -e", "custom shell `bash -e` must contain {0} (replaced by the path of the step's script)"),
        (
            "fish",
            "unknown shell `fish` (accepted: bash, sh, python, or a command containing {0} like `zsh {0}`)",
        ),
        ("${{ matrix.shell }}", "`shell:` cannot contain expressions"),
    ],
)
def test_rejected_shells(shell: str, message: str) -> None:
    assert one_problem(MINIMAL.replace("- run: make", f"- run: make\n        shell: '{shell}'")) == (
        f"wf.yml:8: step 1: {message}"
    )


# --- expressions stay unevaluated, but are checked -----------------------------------------------


def test_expressions_are_kept_unevaluated() -> None:
    j = job(
        """\
        on: push
        jobs:
          build:
            runs-on: x
            steps:
              - id: a
                run: echo "${{ github.sha }}" > out
                if: ${{ github.event_name == 'push' }}
                env:
                  V: ${{ steps.a.outputs.v }}
                working-directory: ${{ env.DIR }}
                continue-on-error: ${{ matrix.experimental }}
                timeout-minutes: ${{ matrix.minutes }}
              - run: echo after
                if: failure() && steps.a.outcome == 'failure'
        """
    )
    a, b = j.steps
    assert a.run == 'echo "${{ github.sha }}" > out'
    assert a.if_ == "${{ github.event_name == 'push' }}"
    assert a.env == {"V": "${{ steps.a.outputs.v }}"}
    assert a.working_directory == "${{ env.DIR }}"
    assert a.continue_on_error == "${{ matrix.experimental }}"
    assert a.timeout_minutes == "${{ matrix.minutes }}"
    assert b.if_ == "failure() && steps.a.outcome == 'failure'"


def test_expression_errors_are_reported_with_their_line() -> None:
    found = problems(
        """\
        on: push
        jobs:
          build:
            runs-on: x
            steps:
              - run: echo ${{ toJson(github) }} ${{ tojsn(github) }}
              - run: make
                if: sucess()
              - run: make
                env:
                  A: ${{ github.sha == }}
              - run: tar czf x.tgz ${{ hashFiles('**/lock') }}
              - run: echo ${{ github.sha
        """
    )
    assert len(found) == 5, found
    assert found[0].startswith(
        "wf.yml:6: step 1: `run`: Unrecognized function: 'tojsn' is not supported by Solstice"
    )
    assert found[1].startswith("wf.yml:8: step 2: `if:`: Unrecognized function: 'sucess' is not")
    assert found[2].startswith("wf.yml:11: step 3: `env.A`: Unexpected end of expression.")
    assert found[3].startswith("wf.yml:12: step 4: `run`: hashFiles is not supported by Solstice.")
    assert found[4].startswith("wf.yml:13: step 5: `run`: An expression is not closed")


def test_if_values() -> None:
    j = job(
        MINIMAL.replace(
            "- run: make", "- run: a\n        if: false\n      - run: b\n        if: ${{ always() }}"
        )
    )
    assert [s.if_ for s in j.steps] == ["false", "${{ always() }}"]


def test_if_starting_with_bang_must_be_quoted() -> None:
    p = one_problem(MINIMAL.replace("- run: make", "- run: make\n        if: !cancelled()"))
    assert p.startswith("wf.yml:8: YAML tag `!cancelled()` is not supported")
    assert "must be quoted" in p
    j = job(MINIMAL.replace("- run: make", "- run: make\n        if: ${{ !cancelled() }}"))
    assert j.steps[0].if_ == "${{ !cancelled() }}"


def test_continue_on_error_and_timeout_types() -> None:
    j = job(
        MINIMAL.replace(
            "- run: make",
            "- run: a\n        continue-on-error: true\n        timeout-minutes: 5\n"
            "      - run: b\n        timeout-minutes: 2.5",
        ).replace(
            "    runs-on", "    timeout-minutes: 30\n    continue-on-error: ${{ matrix.x }}\n    runs-on"
        )
    )
    a, b = j.steps
    assert a.continue_on_error is True and a.timeout_minutes == 5 and isinstance(a.timeout_minutes, int)
    assert b.timeout_minutes == 2.5
    assert j.timeout_minutes == 30 and j.continue_on_error == "${{ matrix.x }}"


def test_continue_on_error_and_timeout_errors() -> None:
    found = problems(
        MINIMAL.replace(
            "- run: make",
            "- run: a\n        continue-on-error: yes\n        timeout-minutes: -1\n"
            "      - run: b\n        timeout-minutes: soon",
        )
    )
    assert found == [
        "wf.yml:8: step 1: `continue-on-error` must be true, false or an expression, not 'yes'",
        "wf.yml:9: step 1: `timeout-minutes` must be a positive number of minutes, not -1",
        "wf.yml:11: step 2: `timeout-minutes` must be a number of minutes or an expression, not 'soon'",
    ]


# --- jobs ----------------------------------------------------------------------------------------


def test_needs_if_outputs() -> None:
    wf = parse(
        """\
        on: push
        jobs:
          build:
            runs-on: x
            outputs:
              version: ${{ steps.v.outputs.version }}
              fixed: 1
            steps:
              - run: make
          test:
            needs: build
            runs-on: x
            steps:
              - run: make
          deploy:
            needs: [build, test]
            if: github.ref == 'refs/heads/main'
            runs-on: x
            steps:
              - run: make
        """
    )
    build, test, deploy = wf.jobs
    assert build.outputs == {"version": "${{ steps.v.outputs.version }}", "fixed": "1"}
    assert test.needs == ("build",) and deploy.needs == ("build", "test")
    assert deploy.if_ == "github.ref == 'refs/heads/main'"


def test_needs_errors() -> None:
    found = problems(
        """\
        on: push
        jobs:
          a:
            runs-on: x
            needs: [b]
            steps:
              - run: make
          b:
            runs-on: x
            needs: a
            steps:
              - run: make
          c:
            runs-on: x
            needs: [c, nope]
            steps:
              - run: make
        """
    )
    assert found == [
        "wf.yml:3: job `a`: `needs` form a cycle: a -> b -> a",
        "wf.yml:15: job `c`: a job cannot need itself",
        "wf.yml:15: job `c`: `needs` names `nope`, which is not a job in this workflow (jobs: a, b, c)",
    ]


@pytest.mark.parametrize("key", ["container", "services"])
def test_containers_and_services_are_not_supported(key: str) -> None:
    value = "ubuntu:24.04" if key == "container" else "\n      pg:\n        image: postgres"
    p = one_problem(MINIMAL.replace("    steps:", f"    {key}: {value}\n    steps:"))
    assert p == (
        f"wf.yml:6: job `build`: `{key}:` is not supported: Solstice runs each job directly in a virtual "
        "machine, not in containers"
    )


def test_reusable_workflows_are_not_supported() -> None:
    found = problems(
        """\
        on: push
        jobs:
          call:
            uses: octo/repo/.github/workflows/x.yml@main
            with:
              a: 1
        """
    )
    assert found == [
        "wf.yml:4: job `call`: `uses:` calls a reusable workflow, which Solstice does not support"
    ]
    p = one_problem(MINIMAL.replace("    steps:", "    secrets: inherit\n    steps:"))
    assert (
        p == "wf.yml:6: job `build`: `secrets:` is for reusable workflows, which Solstice does not support"
    )


def test_unknown_keys_at_every_level() -> None:
    found = problems(
        """\
        on: push
        triggers: x
        jobs:
          build:
            runs-on: x
            timeout: 5
            strategy:
              matrix:
                a: [1]
              parallel: 2
            steps:
              - run: make
        """
    )
    assert found == [
        "wf.yml:2: workflow: unknown key `triggers` (accepted: name, run-name, on, env, defaults, jobs, "
        "permissions, concurrency)",
        "wf.yml:6: job `build`: unknown key `timeout` (accepted: name, runs-on, steps, env, defaults, if, "
        "needs, outputs, strategy, timeout-minutes, continue-on-error, permissions, concurrency, "
        "environment)",
        "wf.yml:10: job `build`: `strategy`: unknown key `parallel` "
        "(accepted: matrix, fail-fast, max-parallel)",
    ]


def test_ignored_keys_are_accepted() -> None:
    j = job(
        """\
        on: push
        run-name: Deploy by @${{ github.actor }}
        permissions: read-all
        concurrency: ci-${{ github.ref }}
        jobs:
          build:
            runs-on: x
            permissions:
              contents: read
            environment: production
            concurrency: build
            strategy:
              fail-fast: false
              max-parallel: 2
              matrix:
                a: [1]
            steps:
              - run: make
        """
    )
    assert j.key == "build"


def test_job_id_must_be_valid() -> None:
    p = one_problem(MINIMAL.replace("  build:", "  1build:"))
    assert p.startswith("wf.yml:4: job id `1build` must start with a letter or `_`")


def test_job_without_steps() -> None:
    assert one_problem(MINIMAL.replace("    steps:\n      - run: make\n", "")) == (
        "wf.yml:4: job `build` has no steps"
    )
    assert one_problem(MINIMAL.replace("      - run: make\n", "")) == "wf.yml:6: job `build` has no steps"


# --- job selection -------------------------------------------------------------------------------

TWO_JOBS = """\
on: push
jobs:
  a:
    runs-on: x
    steps:
      - run: a
  b:
    runs-on: y
    needs: a
    steps:
      - run: b
"""


def test_select_one_job() -> None:
    wf = parse(TWO_JOBS, job="b")
    assert [j.key for j in wf.jobs] == ["b"] and wf.jobs[0].needs == ("a",)


def test_select_unknown_job_lists_the_available_ones() -> None:
    assert one_problem(TWO_JOBS, job="c") == "wf.yml:2: no job `c` in this workflow (jobs: a, b)"


def test_selecting_a_job_ignores_problems_in_the_others() -> None:
    text = TWO_JOBS.replace("- run: a", "- uses: actions/setup-go@v5")
    assert parse(text, job="b").jobs[0].key == "b"
    assert len(problems(text)) == 1


# --- malformed documents -------------------------------------------------------------------------


def test_malformed_yaml_reports_the_line() -> None:
    p = one_problem("on: push\njobs:\n  build:\n    runs-on: x\n    steps:\n      - run: [a, b\n")
    assert p.startswith("wf.yml:7: invalid YAML:")
    p = one_problem("on: push\njobs:\n  build:\n    runs-on: x\n   steps: 1\n")
    assert p.startswith("wf.yml:5: invalid YAML:")


def test_duplicate_keys() -> None:
    p = one_problem(MINIMAL.replace("    runs-on: debian-12\n", "    runs-on: a\n    runs-on: b\n"))
    assert p == "wf.yml:6: duplicate key `runs-on` (first on line 5)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "wf.yml:1: the workflow is empty"),
        ("# only a comment\n", "wf.yml:1: the workflow is empty"),
        ("- a\n- b\n", "wf.yml:1: a workflow must be a mapping with a `jobs:` key"),
        ("on: push\n", "wf.yml:1: the workflow has no jobs (`jobs:` is missing or empty)"),
        ("on: push\njobs:\n", "wf.yml:2: the workflow has no jobs (`jobs:` is missing or empty)"),
        ("on: push\njobs: {}\n", "wf.yml:2: the workflow has no jobs (`jobs:` is missing or empty)"),
        ("on: push\njobs: [a]\n", "wf.yml:2: `jobs` must be a mapping"),
    ],
)
def test_documents_without_jobs(text: str, message: str) -> None:
    assert one_problem(text) == message


def test_all_problems_are_collected_in_line_order() -> None:
    with pytest.raises(WorkflowProblems) as info:
        parse(
            """\
            on: push
            jobs:
              build:
                runs-on: x
                services: {}
                steps:
                  - uses: actions/upload-artifact@v4
                  - run: make
                    shell: fish
                  - name: empty
            """
        )
    entries = info.value.entries
    assert [e.line for e in entries] == [5, 7, 9, 10]
    assert all(e.file == FILE for e in entries)
    assert str(info.value).count("\n") == 3  # one line per problem


def test_load_workflow_from_a_file(tmp_path: Path) -> None:
    wf = load_workflow(FIXTURES / "ci.yml")
    assert wf.name == "CI" and wf.file.endswith("ci.yml")
    assert len(wf.jobs) == 4
    with pytest.raises(WorkflowError, match="cannot read the workflow"):
        load_workflow(tmp_path / "missing.yml")


# --- matrix --------------------------------------------------------------------------------------


def matrix_jobs(matrix: str, name: str = "") -> list[JobSpec]:
    text = "on: push\njobs:\n  test:\n" + (f"    name: {name}\n" if name else "")
    text += "    runs-on: x\n    strategy:\n      matrix:\n" + textwrap.indent(
        textwrap.dedent(matrix), "        "
    )
    text += "    steps:\n      - run: make\n"
    return list(parse_workflow(text, FILE).jobs)


def combos(matrix: str) -> list[dict[str, Any]]:
    return [dict(j.matrix) for j in matrix_jobs(matrix)]


def test_matrix_product_order_follows_the_docs() -> None:
    # docs.github.com: "the first variable you define will be the first job that is created".
    assert combos("version: [10, 12, 14]\nos: [ubuntu-latest, windows-latest]\n") == [
        {"version": 10, "os": "ubuntu-latest"},
        {"version": 10, "os": "windows-latest"},
        {"version": 12, "os": "ubuntu-latest"},
        {"version": 12, "os": "windows-latest"},
        {"version": 14, "os": "ubuntu-latest"},
        {"version": 14, "os": "windows-latest"},
    ]


def test_matrix_job_names() -> None:
    jobs = matrix_jobs("version: [10, 12]\nos: [linux]\n")
    assert [j.name for j in jobs] == ["test (10, linux)", "test (12, linux)"]
    jobs = matrix_jobs("version: [10]\n", name="Unit tests")
    assert [j.name for j in jobs] == ["Unit tests (10)"]
    # A name with expressions is evaluated and gets no suffix.
    jobs = matrix_jobs("version: [10, 12]\n", name="'Node ${{ matrix.version }} #${{ strategy.job-index }}'")
    assert [j.name for j in jobs] == ["Node 10 #0", "Node 12 #1"]
    # Object values show their leaves.
    jobs = matrix_jobs("cfg: [{os: omnios, cc: gcc}]\n")
    assert jobs[0].name == "test (omnios, gcc)"


def test_matrix_exclude_docs_example() -> None:
    result = combos(
        """\
        os: [macos-latest, windows-latest]
        version: [12, 14, 16]
        environment: [staging, production]
        exclude:
          - os: macos-latest
            version: 12
            environment: production
          - os: windows-latest
            version: 16
        """
    )
    assert len(result) == 12 - 1 - 2
    assert {"os": "macos-latest", "version": 12, "environment": "production"} not in result
    assert not [c for c in result if c["os"] == "windows-latest" and c["version"] == 16]
    assert {"os": "macos-latest", "version": 12, "environment": "staging"} in result


def test_matrix_include_docs_example() -> None:
    # docs.github.com "Expanding or adding matrix configurations".
    assert combos(
        """\
        fruit: [apple, pear]
        animal: [cat, dog]
        include:
          - color: green
          - color: pink
            animal: cat
          - fruit: apple
            shape: circle
          - fruit: banana
          - fruit: banana
            animal: cat
        """
    ) == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_matrix_include_expands_one_combination() -> None:
    assert combos(
        """\
        os: [windows-latest, ubuntu-latest]
        node: [14, 16]
        include:
          - os: windows-latest
            node: 16
            npm: 6
        """
    ) == [
        {"os": "windows-latest", "node": 14},
        {"os": "windows-latest", "node": 16, "npm": 6},
        {"os": "ubuntu-latest", "node": 14},
        {"os": "ubuntu-latest", "node": 16},
    ]


def test_matrix_include_that_matches_nothing_is_appended() -> None:
    result = combos(
        """\
        os: [macos-latest, windows-latest]
        version: [12, 14]
        include:
          - os: windows-latest
            version: 17
        """
    )
    assert len(result) == 5 and result[-1] == {"os": "windows-latest", "version": 17}


def test_matrix_only_include() -> None:
    jobs = matrix_jobs(
        """\
        include:
          - site: production
            datacenter: site-a
          - site: staging
            datacenter: site-b
        """
    )
    assert [dict(j.matrix) for j in jobs] == [
        {"site": "production", "datacenter": "site-a"},
        {"site": "staging", "datacenter": "site-b"},
    ]
    assert [j.name for j in jobs] == ["test (production, site-a)", "test (staging, site-b)"]


def test_matrix_exclude_then_include_values_are_compared_by_type() -> None:
    # `true` is not the string 'true' and 1 is not '1': exclude needs the same value.
    assert combos("a: [1, '1', true]\nexclude:\n  - a: 1\n") == [{"a": "1"}, {"a": True}]


def test_matrix_from_expressions() -> None:
    assert combos('os: ${{ fromJSON(\'["a", "b"]\') }}\n') == [{"os": "a"}, {"os": "b"}]
    jobs = parse(
        """\
        on: push
        jobs:
          t:
            runs-on: x
            strategy:
              matrix: '${{ fromJSON(''{"v": [1, 2]}'') }}'
            steps:
              - run: make
        """
    ).jobs
    assert [dict(j.matrix) for j in jobs] == [{"v": 1}, {"v": 2}]


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ("os: []\n", "matrix vector `os` does not contain any values"),
        ("os: linux\n", "matrix vector `os` must be a list of values"),
        (
            "os: [a]\nexclude:\n  - arch: x\n",
            "matrix exclude key `arch` does not match any key within the matrix",
        ),
        ("os: [a]\nexclude:\n  - os: a\n", "the matrix produces no job: every combination is excluded"),
        ("include: [a]\n", "every `include` entry must be a mapping of matrix keys to values"),
        (
            "a: [1, 2, 3, 4, 5, 6, 7, 8]\nb: [1, 2, 3, 4, 5, 6, 7, 8]\nc: [1, 2, 3, 4, 5]\n",
            "more than GitHub's limit",
        ),
        ("os: ${{ needs.setup.outputs.list }}\n", "matrix vector `os` must be a list of values"),
    ],
)
def test_matrix_errors(matrix: str, message: str) -> None:
    text = "on: push\njobs:\n  test:\n    runs-on: x\n    strategy:\n      matrix:\n"
    text += textwrap.indent(matrix, "        ") + "    steps:\n      - run: make\n"
    found = problems(text)
    assert len(found) == 1 and found[0].startswith("wf.yml:6: job `test`: ") and message in found[0], found


def test_server_expanded_matrix() -> None:
    # Forgejo sends a single job with its combination already chosen and named (protocol notes §3.4).
    payload = """\
        name: test
        jobs:
          job1:
            name: job1 (ubuntu-20.04, 1.17)
            runs-on: ubuntu-20.04
            needs: [setup]
            steps:
              - run: go version
            strategy:
              fail-fast: "true"
              max-parallel: "5"
              matrix:
                os: [ubuntu-20.04]
                version: [1.17]
        """
    j = job(payload, matrix={"os": "ubuntu-20.04", "version": "1.17"})
    assert j.name == "job1 (ubuntu-20.04, 1.17)" and dict(j.matrix) == {
        "os": "ubuntu-20.04",
        "version": "1.17",
    }
    assert j.needs == ("setup",)  # needs of a single-job payload name jobs that are not in it
    # Without the server's matrix the same file still yields the one combination, named once.
    j = job(payload.replace("needs: [setup]", "needs: []"))
    assert j.name == "job1 (ubuntu-20.04, 1.17)" and dict(j.matrix) == {
        "os": "ubuntu-20.04",
        "version": 1.17,
    }


def test_mangled_workflows_raise_only_workflow_errors() -> None:
    import random

    base = (FIXTURES / "ci.yml").read_text()
    pieces = list("-:[]{}'\"!&*#|> \n\t$") + ["${{", "}}", "uses: x", "run:", "matrix:", "  ", "- "]
    rnd = random.Random(3)
    translated = 0
    for _ in range(400):
        text = list(base)
        for _ in range(rnd.randint(1, 5)):
            k = rnd.randrange(len(text))
            r = rnd.random()
            if r < 0.4:
                del text[k]
            elif r < 0.8:
                text.insert(k, rnd.choice(pieces))
            else:
                text[k] = rnd.choice(pieces)
        try:
            parse_workflow("".join(text), FILE)
            translated += 1
        except WorkflowError as exc:
            assert all(p.startswith(f"{FILE}:") for p in exc.problems), exc.problems
    assert 0 < translated < 400  # both outcomes were exercised


# --- expressions in matrix and runs-on, deferred jobs, inputs (issue 15 §2) ----------------------

GENERATED = FIXTURES / "generate-matrix.yml"


def test_a_matrix_from_needs_outputs_is_deferred_until_the_needed_job_ran() -> None:
    wf = load_workflow(GENERATED)
    assert [j.key for j in wf.jobs] == ["gen", "test"]
    assert wf.deferred == {"test": "matrix from needs.gen.outputs.matrix, expanded at run time"}
    placeholder = wf.jobs[1]
    assert placeholder.matrix == {} and placeholder.needs == ("gen",)


def test_a_deferred_matrix_expands_with_the_needed_jobs_outputs() -> None:
    from solstice.workflow import deferred

    wf = load_workflow(GENERATED)
    outputs = {"matrix": '{"os":["a","b"],"include":[{"os":"b","extra":"x"}]}', "image": "debian-12"}
    jobs = deferred.expand(wf, "test", {"gen": {"result": "success", "outputs": outputs}})
    assert [dict(j.matrix) for j in jobs] == [{"os": "a"}, {"os": "b", "extra": "x"}]
    assert [j.name for j in jobs] == ["test (a)", "test (b, x)"]
    assert {j.runs_on for j in jobs} == {("debian-12",)}


def test_a_deferred_matrix_that_is_not_json_blames_the_needed_output() -> None:
    from solstice.workflow import deferred

    wf = load_workflow(GENERATED)
    with pytest.raises(
        WorkflowProblems,
        match=r"job `test`: `needs.gen.outputs.matrix` is empty \(job `gen` did not set output `matrix`\)",
    ):
        deferred.expand(wf, "test", {"gen": {"result": "success", "outputs": {"image": "x"}}})


def test_runs_on_from_needs_outputs_is_deferred() -> None:
    wf = parse(
        """\
        on: push
        jobs:
          pick: {runs-on: debian-12, steps: [{run: "true"}]}
          use:
            needs: pick
            runs-on: ${{ needs.pick.outputs.label }}
            steps: [{run: "true"}]
        """
    )
    assert wf.deferred == {"use": "runs-on from needs.pick.outputs.label, expanded at run time"}


MATRIX_ENTRIES = """\
    on: push
    jobs:
      gen: {runs-on: debian-12, steps: [{run: "true"}]}
      test:
        needs: gen
        runs-on: ${{ matrix.os }}-${{ github.event_name }}-${{ vars.FLAVOUR }}
        strategy:
          matrix:
            os: ["${{ needs.gen.outputs.v }}", fixed]
            include: ${{ fromJSON(inputs.extra) }}
            exclude: ${{ fromJSON('[{"os":"fixed"}]') }}
        steps: [{run: "true"}]
    """


def test_expressions_inside_matrix_entries_and_runs_on_see_needs_vars_inputs_and_github() -> None:
    contexts = {
        "needs": {"gen": {"result": "success", "outputs": {"v": "omnios"}}},
        "vars": {"FLAVOUR": "bloody"},
        "inputs": {"extra": '[{"os":"omnios","cc":"gcc"}]'},
    }
    wf = parse(MATRIX_ENTRIES, github={"event_name": "push"}, contexts=contexts)
    assert [dict(j.matrix) for j in wf.jobs[1:]] == [{"os": "omnios", "cc": "gcc"}]
    assert wf.jobs[1].runs_on == ("omnios-push-bloody",)
    assert wf.deferred == {}


WORKFLOW_CALL = """\
    on:
      workflow_call:
        inputs:
          oses: {type: string, required: true}
          fast: {type: boolean, default: false}
      workflow_dispatch:
        inputs:
          level: {default: "3"}
    jobs:
      test:
        runs-on: debian-12
        strategy:
          matrix:
            os: ${{ fromJSON(inputs.oses) }}
        steps: [{run: "echo ${{ inputs.fast }}"}]
    """


def test_a_workflow_call_run_directly_says_where_its_inputs_come_from() -> None:
    required, matrix = problems(WORKFLOW_CALL)
    assert required.startswith("wf.yml:4: input `oses` is required and has no value")
    assert "its inputs come from the calling workflow" in required
    assert "`solstice run --input oses=VALUE`" in required
    # The matrix that reads it points there instead of failing on fromJSON('').
    assert matrix == "wf.yml:13: job `test`: input `oses` has no value (line 4)"


def test_an_optional_input_without_a_value_is_explained_where_it_is_read() -> None:
    message = one_problem(WORKFLOW_CALL.replace("required: true", "required: false"))
    assert message.startswith("wf.yml:13: job `test`: input `oses` has no value")
    assert "inputs come from the calling workflow" in message
    assert "solstice run --input oses=VALUE" in message
    assert "not valid JSON" not in message


def test_workflow_inputs_take_defaults_and_given_values_typed_as_declared() -> None:
    wf = parse(WORKFLOW_CALL, contexts={"inputs": {"oses": '["a","b"]', "fast": "true"}})
    assert [dict(j.matrix) for j in wf.jobs] == [{"os": "a"}, {"os": "b"}]
    assert wf.inputs == {"oses": '["a","b"]', "fast": True, "level": "3"}


# --- coming from vmactions and cross-platform-actions (issue 15 §4) -------------------------------

VMACTIONS = FIXTURES / "vmactions.yml"


def test_vmactions_and_cross_platform_actions_say_what_to_write_instead() -> None:
    labels = ["debian-12", "freebsd-14", "freebsd-13", "omnios-bloody", "omnios-r151058"]
    with pytest.raises(WorkflowError) as info:
        load_workflow(VMACTIONS, labels=labels)
    freebsd, omnios, openbsd = info.value.problems
    assert freebsd.startswith(f"{VMACTIONS}:9: step 2 (uses: vmactions/freebsd-vm@v1): ")
    assert (
        "write `runs-on: freebsd-14.1` for the job (labels for freebsd on this host: freebsd-14, freebsd-13)"
        in freebsd
    )
    assert "`prepare:` as a `run:` step, then `run:` as a `run:` step" in freebsd
    assert "`usesh: true` becomes `shell: sh`" in freebsd and "`sync`/`copyback` are not needed" in freebsd
    assert "runs-on: omnios-<release>" in omnios and "omnios-bloody, omnios-r151058" in omnios
    assert "freebsd" not in omnios
    assert "cross-platform-actions/action runs its commands in a VM (openbsd)" in openbsd
    assert "`runs-on: openbsd-7.5`" in openbsd and "this host has no openbsd image yet" in openbsd


def test_without_known_labels_the_migration_message_uses_a_placeholder() -> None:
    with pytest.raises(WorkflowError) as info:
        load_workflow(VMACTIONS, job="omnios")
    (message,) = info.value.problems
    assert "write `runs-on: omnios-<release>` for the job" in message
    assert "(the label of your omnios image in this host's catalog)" in message
    assert "Solstice runs only `run:` steps" not in message


def test_other_actions_keep_the_plain_message() -> None:
    message = one_problem(
        """\
        on: push
        jobs:
          a: {runs-on: x, steps: [{uses: actions/setup-python@v5}]}
        """
    )
    assert message.endswith("Solstice runs only `run:` steps and actions/checkout")


def test_a_forge_payload_of_a_called_workflow_is_not_asked_for_its_inputs() -> None:
    # The forge called it and expanded the matrix: its inputs are the forge's business.
    wf = parse(WORKFLOW_CALL, matrix={"os": "a"})
    assert [dict(j.matrix) for j in wf.jobs] == [{"os": "a"}]
