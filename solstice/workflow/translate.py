"""Actions workflow YAML -> ``JobSpec``s: validation with file:line problems, matrix expansion.

Expressions stay unevaluated in steps (they may read earlier steps' results at run time) but their
syntax is checked here. A job's ``strategy.matrix``, display name and ``runs-on`` are evaluated here
with the contexts GitHub allows there (github, needs, vars, inputs; strategy and matrix too for the
name and ``runs-on``), because a job is routed by its labels. A job whose matrix or ``runs-on``
reads ``needs`` while the needed jobs have not run yet is *deferred*: one placeholder JobSpec, and
``Workflow.deferred`` says what it waits for; ``solstice.workflow.deferred`` expands it later.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from solstice import expr
from solstice.errors import ExpressionError, WorkflowError
from solstice.model.core import JobSpec, Step, StepKind
from solstice.workflow import checkout as checkout_inputs
from solstice.workflow import inputs as inputs_mod
from solstice.workflow import loader, migrate
from solstice.workflow import matrix as matrix_mod
from solstice.workflow.loader import LineDict, LineList, LoadError, load

DEFAULT_TIMEOUT_MINUTES = 360

WORKFLOW_KEYS = ("name", "run-name", "on", "env", "defaults", "jobs", "permissions", "concurrency")
JOB_KEYS = (
    "name",
    "runs-on",
    "steps",
    "env",
    "defaults",
    "if",
    "needs",
    "outputs",
    "strategy",
    "timeout-minutes",
    "continue-on-error",
    "permissions",
    "concurrency",
    "environment",
)
STEP_KEYS = (
    "name",
    "id",
    "run",
    "uses",
    "with",
    "shell",
    "working-directory",
    "env",
    "if",
    "continue-on-error",
    "timeout-minutes",
)
STRATEGY_KEYS = ("matrix", "fail-fast", "max-parallel")
SHELLS = ("bash", "sh", "python")
UNAVAILABLE_SHELLS = ("pwsh", "powershell", "cmd")

UNSUPPORTED_USES = "Solstice runs only `run:` steps and actions/checkout"
#: ``actions/checkout@ref``, optionally behind any forge's URL (GitHub's, code.forgejo.org, your own).
CHECKOUT_RE = re.compile(r"^(?:https?://[^/\s]+/)?actions/checkout@(\S+)$", re.IGNORECASE)
_CHECKOUT_NO_REF_RE = re.compile(r"^(?:https?://[^/\s]+/)?actions/checkout$", re.IGNORECASE)
_ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workflow, at a 1-based line (0 when no line applies)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        if not self.line:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


class WorkflowProblems(WorkflowError):
    """A WorkflowError that also keeps each problem as a ``Problem`` (file, line, message)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.entries = tuple(problems)
        super().__init__([str(p) for p in self.entries])


@dataclass(frozen=True)
class Workflow:
    name: str
    file: str
    jobs: tuple[JobSpec, ...]  # matrix expanded, in file order (then matrix order)
    #: Job key -> what it waits for ("matrix from needs.gen.outputs.matrix"): its matrix or
    #: ``runs-on`` reads ``needs``, so its one JobSpec is a placeholder until the needed jobs ran.
    deferred: Mapping[str, str] = field(default_factory=dict)
    #: The ``inputs`` context: workflow_call/workflow_dispatch defaults overlaid by the given values.
    inputs: Mapping[str, Any] = field(default_factory=dict)
    #: What it was translated from and with, to translate a deferred job again at run time.
    text: str = field(default="", repr=False, compare=False)
    github: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    contexts: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def load_workflow(
    path: Path,
    *,
    job: str | None = None,
    github: Mapping[str, Any] | None = None,
    contexts: Mapping[str, Any] | None = None,
    labels: Sequence[str] | None = None,
) -> Workflow:
    """Read and translate the workflow file at ``path`` (see ``parse_workflow``)."""
    try:
        with path.open("rb") as fh:
            # no more than the loader accepts: a huge file is refused without reading it whole
            data = fh.read(loader.MAX_BYTES + 1)
        if len(data) > loader.MAX_BYTES:
            raise WorkflowProblems(
                [Problem(str(path), 0, f"the workflow is larger than {loader.MAX_BYTES // 1024} KiB")]
            )
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise WorkflowProblems([Problem(str(path), 0, f"cannot read the workflow: {reason}")]) from None
    return parse_workflow(text, str(path), job=job, github=github, contexts=contexts, labels=labels)


def parse_workflow(
    text: str,
    file: str,
    *,
    job: str | None = None,
    github: Mapping[str, Any] | None = None,
    matrix: Mapping[str, Any] | None = None,
    contexts: Mapping[str, Any] | None = None,
    labels: Sequence[str] | None = None,
) -> Workflow:
    """Translate workflow YAML to JobSpecs.

    ``job`` selects one job by key; only that job is checked and translated. ``github`` is the
    github context used for job names and ``runs-on``. ``matrix``, when given (even ``{}``), means a
    server already expanded the job (Forgejo's single-job payload): its values are used instead of
    expanding ``strategy.matrix``, the job's name is taken as the server wrote it, and ``needs`` may
    name jobs that are not in the payload. ``contexts`` holds ``vars``, ``inputs`` (the given
    values, over the workflow's input defaults) and, once the needed jobs ran, ``needs``; without
    ``needs``, jobs whose matrix or ``runs-on`` read it are deferred (``Workflow.deferred``).
    ``labels`` are this host's image labels, named when a step uses an action that runs its
    commands in a VM (vmactions, cross-platform-actions); None: not known.

    Raises ``WorkflowProblems`` (a ``WorkflowError``) listing every problem found.
    """
    tr = _Translator(file, github or {}, matrix, contexts or {})
    tr.labels = None if labels is None else list(labels)
    wf = tr.translate(text, job)
    if tr.problems:
        ordered = sorted(tr.problems, key=lambda p: p.line)  # stable: same-line problems keep their order
        raise WorkflowProblems(ordered)
    assert wf is not None
    return dataclasses.replace(
        wf,
        deferred=dict(tr.deferred),
        inputs=dict(tr.inputs),
        text=text,
        github=dict(github or {}),
        contexts=dict(contexts or {}),
    )


# --- helpers -------------------------------------------------------------------------------------


def scalar_to_string(value: Any) -> str:
    """A YAML scalar as the string Actions sees: null -> '', true -> 'true', 3.10 -> '3.1'."""
    return expr.to_string(value)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, Mapping | list)


def _accepted(keys: Sequence[str]) -> str:
    return ", ".join(keys)


def check_shell(shell: str) -> str | None:
    """Why ``shell`` cannot be used, or None if it can."""
    s = shell.strip()
    if not s:
        return "`shell:` is empty"
    if "${{" in s:
        return "`shell:` cannot contain expressions"
    if "{0}" in s or any(c.isspace() for c in s):
        if "{0}" not in s:
            return f"custom shell `{s}` must contain {{0}} (replaced by the path of the step's script)"
        program = s.split()[0]
        if program in UNAVAILABLE_SHELLS:
            return f"shell `{program}` is not available in Solstice guests (use bash, sh or python)"
        return None
    if s in SHELLS:
        return None
    if s in UNAVAILABLE_SHELLS:
        return f"shell `{s}` is not available in Solstice guests (use bash, sh or python)"
    return (
        f"unknown shell `{s}` (accepted: bash, sh, python, or a command containing {{0}} like `zsh {{0}}`)"
    )


def checkout_ref(uses: str) -> str | None:
    """The ref of an ``actions/checkout`` reference, or None if ``uses`` is another action."""
    m = CHECKOUT_RE.match(uses.strip())
    return m.group(1) if m else None


def _display_values(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _display_values(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _display_values(v)]
    return [expr.to_string(value)]


def matrix_suffix(combo: Mapping[str, Any]) -> str:
    """GitHub's default suffix for a matrix job's name: ``" (v1, v2)"``."""
    values = _display_values(dict(combo))
    return f" ({', '.join(values)})" if values else ""


def plain(value: Any) -> Any:
    """Nested mappings and sequences (LineDict/LineList included) -> plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


@dataclass
class _JobDefaults:
    shell: str | None = None
    working_directory: str | None = None


@dataclass
class _JobParts:
    """What a job translates to before matrix expansion."""

    key: str
    line: int
    steps: tuple[Step, ...]
    env: dict[str, str] = field(default_factory=dict)
    defaults: _JobDefaults = field(default_factory=_JobDefaults)
    if_: str = ""
    needs: tuple[str, ...] = ()
    outputs: dict[str, str] = field(default_factory=dict)
    timeout: float | str = DEFAULT_TIMEOUT_MINUTES
    continue_on_error: bool | str = False


# --- the translator ------------------------------------------------------------------------------


class _Translator:
    def __init__(
        self,
        file: str,
        github: Mapping[str, Any],
        server_matrix: Mapping[str, Any] | None,
        contexts: Mapping[str, Any],
    ) -> None:
        self.file = file
        self.github = github
        self.server_matrix = server_matrix
        self.contexts = contexts
        self.inputs: dict[str, Any] = dict(contexts.get("inputs") or {})
        self.callable = False  # `on: workflow_call`: its inputs come from a calling workflow
        self.deferred: dict[str, str] = {}
        self.labels: list[str] | None = None  # this host's image labels, for migration hints
        self.unset_inputs: dict[str, int] = {}  # required inputs without a value (reported): line
        self.problems: list[Problem] = []
        self.multi_job = False
        self.suffix = ""  # " (in job `x`)" while translating a step of a multi-job workflow

    def problem(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.file, line, message + self.suffix))

    # -- generic value checks --

    def check_template(self, line: int, where: str, text: str) -> None:
        try:
            expr.validate_template(text)
        except ExpressionError as exc:
            self.problem(line, f"{where}: {exc}")

    def check_condition(self, line: int, where: str, text: str) -> None:
        try:
            expr.validate_condition(text)
        except ExpressionError as exc:
            self.problem(line, f"{where}: {exc}")

    def mapping(self, value: Any, line: int, where: str) -> LineDict | None:
        """``value`` if it is a mapping; None (and a problem unless it is null) otherwise."""
        if isinstance(value, LineDict):
            return value
        if value is not None:
            self.problem(line, f"{where} must be a mapping")
        return None

    def unknown_keys(self, node: LineDict, allowed: Sequence[str], where: str) -> None:
        for key in node:
            if key not in allowed:
                self.problem(
                    node.line_of(key), f"{where}: unknown key `{key}` (accepted: {_accepted(allowed)})"
                )

    def string_map(self, node: Any, line: int, where: str, name: str) -> dict[str, str]:
        """``env:``/``with:``/``outputs:``: a mapping of scalars, stringified; expressions checked.

        ``where`` prefixes messages ("step 2: ", "job `x`: " or ""); ``name`` is the key.
        """
        out: dict[str, str] = {}
        m = self.mapping(node, line, f"{where}`{name}`")
        if m is None:
            return out
        for key, value in m.items():
            if not _is_scalar(value):
                self.problem(
                    m.line_of(key), f"{where}`{name}.{key}` must be a string, not a mapping or list"
                )
                continue
            text = scalar_to_string(value)
            self.check_template(m.line_of(key), f"{where}`{name}.{key}`", text)
            out[key] = text
        return out

    def condition(self, value: Any, line: int, where: str) -> str:
        if value is None:
            return ""
        if not _is_scalar(value):
            self.problem(line, f"{where}: `if:` must be a string or a boolean")
            return ""
        text = scalar_to_string(value)
        self.check_condition(line, f"{where}: `if:`", text)
        return text

    def bool_or_expression(self, value: Any, line: int, where: str) -> bool | str:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and expr.contains_expression(value):
            self.check_template(line, where, value)
            return value
        self.problem(line, f"{where} must be true, false or an expression, not {value!r}")
        return False

    def timeout(self, value: Any, line: int, where: str) -> float | str | None:
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            if value > 0:
                return value
            self.problem(line, f"{where} must be a positive number of minutes, not {value!r}")
            return None
        if isinstance(value, str) and expr.contains_expression(value):
            self.check_template(line, where, value)
            return value
        self.problem(line, f"{where} must be a number of minutes or an expression, not {value!r}")
        return None

    def defaults(self, node: Any, line: int, where: str, base: _JobDefaults) -> _JobDefaults:
        out = _JobDefaults(base.shell, base.working_directory)
        d = self.mapping(node, line, f"{where}`defaults`")
        if d is None:
            return out
        self.unknown_keys(d, ("run",), f"{where}`defaults`")
        run = self.mapping(d.get("run"), d.line_of("run"), f"{where}`defaults.run`")
        if run is None:
            return out
        self.unknown_keys(run, ("shell", "working-directory"), f"{where}`defaults.run`")
        if "shell" in run:
            shell = scalar_to_string(run["shell"])
            why = check_shell(shell)
            if why:
                self.problem(run.line_of("shell"), f"{where}`defaults.run.shell`: {why}")
            out.shell = shell.strip()
        if "working-directory" in run:
            wd = scalar_to_string(run["working-directory"])
            self.check_template(
                run.line_of("working-directory"), f"{where}`defaults.run.working-directory`", wd
            )
            out.working_directory = wd
        return out

    # -- workflow --

    def translate(self, text: str, selected: str | None) -> Workflow | None:
        try:
            root = load(text)
        except LoadError as exc:
            self.problem(exc.line, exc.message)
            return None
        if root is None:
            self.problem(1, "the workflow is empty")
            return None
        if not isinstance(root, LineDict):
            self.problem(1, "a workflow must be a mapping with a `jobs:` key")
            return None
        self.unknown_keys(root, WORKFLOW_KEYS, "workflow")
        self.inputs = inputs_mod.resolve(root.get("on"), self.inputs)
        self.callable = inputs_mod.is_callable(root.get("on"))
        # Only for a workflow run directly: a forge's job got its inputs from the forge.
        direct = self.server_matrix is None
        for input_name, input_line in inputs_mod.missing_required(
            root.get("on") if direct else None, self.inputs
        ):
            self.unset_inputs[input_name.lower()] = input_line
            self.problem(
                input_line,
                f"input `{input_name}` is required and has no value: this workflow is "
                "`on: workflow_call`, its inputs come from the calling workflow; run directly, give it "
                f"with `solstice run --input {input_name}=VALUE` (or `solstice plan`/`submit --input`)",
            )
        name = root.get("name")
        wf_name = scalar_to_string(name) if name is not None and _is_scalar(name) else ""
        env = self.string_map(root.get("env"), root.line_of("env"), "", "env")
        defaults = self.defaults(root.get("defaults"), root.line_of("defaults"), "", _JobDefaults())

        jobs = self.mapping(root.get("jobs"), root.line_of("jobs"), "`jobs`")
        if not jobs:
            if jobs is not None or root.get("jobs") is None:
                self.problem(root.line_of("jobs"), "the workflow has no jobs (`jobs:` is missing or empty)")
            return None
        self.multi_job = len(jobs) > 1
        for key in jobs:
            if not _ID_RE.match(key):
                self.problem(
                    jobs.line_of(key),
                    f"job id `{key}` must start with a letter or `_` and contain only letters, digits, "
                    "`-` and `_`",
                )
        keys = list(jobs)
        if selected is not None and selected not in jobs:
            self.problem(
                root.line_of("jobs"), f"no job `{selected}` in this workflow (jobs: {_accepted(keys)})"
            )
            return None
        if selected is None:
            self.check_cycles(jobs)

        specs: list[JobSpec] = []
        for key in [selected] if selected is not None else keys:
            specs.extend(
                self.job(key, jobs[key], jobs.line_of(key), keys, env, defaults, wf_name or self.file)
            )
        return Workflow(name=wf_name or self.file, file=self.file, jobs=tuple(specs))

    def needs_of(self, node: Any) -> list[str]:
        if not isinstance(node, LineDict):
            return []
        needs = node.get("needs")
        if isinstance(needs, str):
            return [needs]
        if isinstance(needs, list):
            return [n for n in needs if isinstance(n, str)]
        return []

    def check_cycles(self, jobs: LineDict) -> None:
        graph = {k: [n for n in self.needs_of(v) if n in jobs and n != k] for k, v in jobs.items()}
        state: dict[str, int] = {}  # 1 visiting, 2 done
        reported: set[str] = set()

        def visit(k: str, path: list[str]) -> None:
            state[k] = 1
            for n in graph[k]:
                if state.get(n) == 1:
                    cycle = path[path.index(n) :] + [n]
                    if not reported.intersection(cycle):
                        reported.update(cycle)
                        self.problem(
                            jobs.line_of(n), f"job `{n}`: `needs` form a cycle: {' -> '.join(cycle)}"
                        )
                elif n not in state:
                    visit(n, path + [n])
            state[k] = 2

        for k in graph:
            if k not in state:
                visit(k, [k])

    # -- jobs --

    def job(
        self,
        key: str,
        node: Any,
        line: int,
        all_keys: list[str],
        wf_env: dict[str, str],
        wf_defaults: _JobDefaults,
        wf_name: str,
    ) -> list[JobSpec]:
        where = f"job `{key}`"
        j = self.mapping(node, line, where)
        if j is None:
            if node is None:
                self.problem(line, f"{where} is empty")
            return []
        if "uses" in j:
            # A reusable-workflow call has no steps or runs-on of its own: one message says it all.
            self.problem(
                j.line_of("uses"),
                f"{where}: `uses:` calls a reusable workflow, which Solstice does not support",
            )
            return []
        for k in j:
            if k in ("container", "services"):
                self.problem(
                    j.line_of(k),
                    f"{where}: `{k}:` is not supported: Solstice runs each job directly in a virtual "
                    "machine, not in containers",
                )
            elif k in ("with", "secrets"):
                self.problem(
                    j.line_of(k),
                    f"{where}: `{k}:` is for reusable workflows, which Solstice does not support",
                )
            elif k not in JOB_KEYS:
                self.problem(j.line_of(k), f"{where}: unknown key `{k}` (accepted: {_accepted(JOB_KEYS)})")

        parts = _JobParts(key=key, line=line, steps=self.steps(key, j, line))
        parts.env = {**wf_env, **self.string_map(j.get("env"), j.line_of("env"), f"{where}: ", "env")}
        parts.defaults = self.defaults(j.get("defaults"), j.line_of("defaults"), f"{where}: ", wf_defaults)
        parts.if_ = self.condition(j.get("if"), j.line_of("if"), where)
        parts.needs = self.needs(j, key, all_keys)
        parts.outputs = self.string_map(j.get("outputs"), j.line_of("outputs"), f"{where}: ", "outputs")
        if "timeout-minutes" in j:
            timeout = self.timeout(
                j["timeout-minutes"], j.line_of("timeout-minutes"), f"{where}: `timeout-minutes`"
            )
            parts.timeout = DEFAULT_TIMEOUT_MINUTES if timeout is None else timeout
        if "continue-on-error" in j:
            parts.continue_on_error = self.bool_or_expression(
                j["continue-on-error"], j.line_of("continue-on-error"), f"{where}: `continue-on-error`"
            )

        waits = self.waits_for(j)
        combos: list[dict[str, Any] | None]
        if waits:
            self.deferred[key] = waits
            combos, strategy = [None], {"fail-fast": True, "max-parallel": 1}
        else:
            combos, strategy = self.combinations(key, j)
        specs = []
        for index, combo in enumerate(combos):
            strategy_ctx = {**strategy, "job-index": index, "job-total": len(combos)}
            ctx = self.job_context({"matrix": combo or {}, "strategy": strategy_ctx})
            if waits:  # a placeholder: its name and labels are known once the needed jobs ran
                name, runs_on = key, self.raw_labels(j)
            else:
                name = self.job_name(key, j, combo, ctx)
                runs_on = self.runs_on(key, j, line, ctx)
            specs.append(
                JobSpec(
                    key=key,
                    name=name,
                    runs_on=runs_on,
                    steps=parts.steps,
                    env=dict(parts.env),
                    shell=parts.defaults.shell,
                    working_directory=parts.defaults.working_directory,
                    matrix=plain(combo or {}),
                    timeout_minutes=parts.timeout,
                    continue_on_error=parts.continue_on_error,
                    if_=parts.if_,
                    needs=parts.needs,
                    outputs=dict(parts.outputs),
                    workflow_name=wf_name,
                    workflow_file=self.file,
                    line=line,
                )
            )
        return specs

    def job_context(self, extra: Mapping[str, Any]) -> expr.Context:
        """The contexts of job-level expressions (matrix, name, runs-on): github, needs, vars, inputs."""
        values = {
            "github": self.github,
            "vars": self.contexts.get("vars") or {},
            "needs": self.contexts.get("needs") or {},
            "inputs": self.inputs,
        }
        return expr.Context({**values, **extra})

    def waits_for(self, j: LineDict) -> str:
        """What the job's matrix or runs-on waits for ("matrix from needs.gen.outputs.m"), or ''
        when it can be expanded now (``needs`` is known, or neither reads it)."""
        if "needs" in self.contexts or self.server_matrix is not None or not self.needs_of(j):
            return ""  # a job without `needs:` has an empty needs context: evaluated now
        strategy = j.get("strategy")
        matrix = strategy.get("matrix") if isinstance(strategy, Mapping) else None
        for what, value in (("matrix", matrix), ("runs-on", j.get("runs-on"))):
            paths = [p for text in _strings(value) for p in _references(text) if p.startswith("needs")]
            if paths:
                return f"{what} from {', '.join(paths)}, expanded at run time"
        return ""

    @staticmethod
    def raw_labels(j: LineDict) -> tuple[str, ...]:
        raw = j.get("runs-on")
        if isinstance(raw, Mapping):
            raw = raw.get("labels")
        return tuple(_strings(raw))

    def input_hint(self, exc: ExpressionError, texts: Sequence[str]) -> str:
        """Why an expression failed when it read an input nobody gave (a workflow_call run directly)."""
        given = {k.lower() for k in self.inputs}
        missing = [
            p.split(".")[1]
            for text in texts
            for p in _references(text)
            if p.startswith("inputs.") and p.split(".")[1] not in given
        ]
        if not missing:
            return self.needs_hint(exc, texts)
        names = ", ".join(f"`{m}`" for m in missing)
        if all(m in self.unset_inputs for m in missing):  # said once, where the input is declared
            return f"input {names} has no value (line {self.unset_inputs[missing[0]]})"
        origin = (
            "this workflow is `on: workflow_call`: its inputs come from the calling workflow"
            if self.callable
            else "the workflow's inputs come from its trigger"
        )
        return (
            f"input {names} has no value ({origin}); give it with "
            f"`solstice run --input {missing[0]}=VALUE` (or `solstice submit --input`), or a `default:`"
        )

    def needs_hint(self, exc: ExpressionError, texts: Sequence[str]) -> str:
        """Name the needed job's output that is empty, the usual cause of a failing generated matrix."""
        needs = self.contexts.get("needs") or {}
        for text in texts:
            for path in _references(text):
                parts = path.split(".")
                if len(parts) == 4 and parts[0] == "needs" and parts[2] == "outputs":
                    job = next((v for k, v in needs.items() if k.lower() == parts[1]), None)
                    outputs = job.get("outputs") or {} if isinstance(job, Mapping) else {}
                    if not any(k.lower() == parts[3] and v for k, v in outputs.items()):
                        return f"`{path}` is empty (job `{parts[1]}` did not set output `{parts[3]}`): {exc}"
        return str(exc)

    def needs(self, j: LineDict, key: str, all_keys: list[str]) -> tuple[str, ...]:
        if "needs" not in j:
            return ()
        raw = j["needs"]
        line = j.line_of("needs")
        if isinstance(raw, str):
            names = [raw]
        elif isinstance(raw, list) and all(isinstance(n, str) for n in raw):
            names = list(raw)
        else:
            self.problem(line, f"job `{key}`: `needs` must be a job id or a list of job ids")
            return ()
        for n in names:
            if n == key:
                self.problem(line, f"job `{key}`: a job cannot need itself")
            elif n not in all_keys and self.server_matrix is None:
                self.problem(
                    line,
                    f"job `{key}`: `needs` names `{n}`, which is not a job in this workflow "
                    f"(jobs: {_accepted(all_keys)})",
                )
        return tuple(names)

    def combinations(self, key: str, j: LineDict) -> tuple[list[dict[str, Any] | None], dict[str, Any]]:
        """The job's matrix combinations ([None] without a matrix) and its ``strategy`` context."""
        where = f"job `{key}`"
        strategy_ctx: dict[str, Any] = {"fail-fast": True}
        s = self.mapping(j.get("strategy"), j.line_of("strategy"), f"{where}: `strategy`")
        if s is not None:
            self.unknown_keys(s, STRATEGY_KEYS, f"{where}: `strategy`")
            if "fail-fast" in s:
                strategy_ctx["fail-fast"] = s["fail-fast"]
            if "max-parallel" in s:
                strategy_ctx["max-parallel"] = s["max-parallel"]
        if self.server_matrix is not None:
            return [dict(self.server_matrix) or None], {"max-parallel": 1, **strategy_ctx}
        if s is None or "matrix" not in s:
            return [None], {"max-parallel": 1, **strategy_ctx}
        line = s.line_of("matrix")
        ctx = self.job_context({})
        try:
            raw = self.evaluate_whole(s["matrix"], ctx)
            if not isinstance(raw, Mapping):
                raise matrix_mod.MatrixError("`strategy.matrix` must be a mapping of vectors")
            # Every string inside, not only whole values: `os: ["${{ needs.x.outputs.v }}"]`.
            m = {k: self.evaluate_deep(v, ctx) for k, v in raw.items()}
            combos: list[dict[str, Any] | None] = list(matrix_mod.expand(m))
        except matrix_mod.MatrixError as exc:
            self.problem(line, f"{where}: {exc}")
            return [], strategy_ctx
        except ExpressionError as exc:
            self.problem(line, f"{where}: {self.input_hint(exc, _strings(s['matrix']))}")
            return [], strategy_ctx
        strategy_ctx.setdefault("max-parallel", len(combos))
        return combos, strategy_ctx

    @staticmethod
    def evaluate_whole(value: Any, ctx: expr.Context) -> Any:
        """Strings through ``expr.evaluate_value`` (``matrix: ${{ fromJSON(...) }}``); others as is."""
        return expr.evaluate_value(value, ctx) if isinstance(value, str) else value

    @classmethod
    def evaluate_deep(cls, value: Any, ctx: expr.Context) -> Any:
        """``evaluate_whole`` of every string in nested lists and mappings."""
        if isinstance(value, Mapping):
            return {k: cls.evaluate_deep(v, ctx) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [cls.evaluate_deep(v, ctx) for v in value]
        return cls.evaluate_whole(value, ctx)

    def job_name(self, key: str, j: LineDict, combo: Mapping[str, Any] | None, ctx: expr.Context) -> str:
        raw = j.get("name")
        if raw is None:
            base, templated = key, False
        elif not _is_scalar(raw):
            self.problem(j.line_of("name"), f"job `{key}`: `name` must be a string")
            base, templated = key, False
        else:
            text = scalar_to_string(raw)
            templated = expr.contains_expression(text)
            try:
                base = expr.interpolate(text, ctx)
            except ExpressionError as exc:
                self.problem(j.line_of("name"), f"job `{key}`: `name`: {exc}")
                base = text
        if combo is None or templated or self.server_matrix is not None:
            # A name with expressions, or one a server wrote, already says what it wants.
            return base
        suffix = matrix_suffix(combo)
        return base if base.endswith(suffix) else base + suffix

    def runs_on(self, key: str, j: LineDict, line: int, ctx: expr.Context) -> tuple[str, ...]:
        where = f"job `{key}`: `runs-on`"
        if "runs-on" not in j:
            self.problem(line, f"job `{key}` has no `runs-on` (the label of the image to run it in)")
            return ()
        raw = j["runs-on"]
        rline = j.line_of("runs-on")
        if isinstance(raw, LineDict):
            self.unknown_keys(raw, ("labels", "group"), where)
            if "group" in raw:
                self.problem(raw.line_of("group"), f"{where}: runner groups (`group:`) are not supported")
                return ()
            raw = raw.get("labels")
        items = raw if isinstance(raw, list) else [raw]
        labels: list[str] = []
        for item in items:
            if not _is_scalar(item) or item is None:
                self.problem(rline, f"{where} must be a label or a list of labels")
                return ()
            try:
                value = self.evaluate_whole(scalar_to_string(item), ctx)
            except ExpressionError as exc:
                self.problem(rline, f"{where}: {self.input_hint(exc, [scalar_to_string(item)])}")
                return ()
            for v in value if isinstance(value, list) else [value]:
                label = expr.to_string(v).strip()
                if not label:
                    self.problem(rline, f"{where}: {scalar_to_string(item)!r} evaluates to an empty label")
                    return ()
                labels.append(label)
        if not labels:
            self.problem(rline, f"{where} is empty")
        return tuple(labels)

    # -- steps --

    def steps(self, key: str, j: LineDict, key_line: int) -> tuple[Step, ...]:
        raw = j.get("steps")
        line = j.line_of("steps") if "steps" in j else key_line
        if raw is None:
            self.problem(line, f"job `{key}` has no steps")
            return ()
        if not isinstance(raw, LineList):
            self.problem(line, f"job `{key}`: `steps` must be a list")
            return ()
        if not raw:
            self.problem(line, f"job `{key}` has no steps")
            return ()
        steps: list[Step] = []
        ids: dict[str, int] = {}
        for index, node in enumerate(raw):
            step = self.step(key, index + 1, node, raw.line_of(index), ids)
            if step is not None:
                steps.append(step)
        return tuple(steps)

    def step(self, key: str, number: int, node: Any, line: int, ids: dict[str, int]) -> Step | None:
        self.suffix = f" (in job `{key}`)" if self.multi_job else ""
        try:
            return self._step(number, node, line, ids)
        finally:
            self.suffix = ""

    def _step(self, number: int, node: Any, line: int, ids: dict[str, int]) -> Step | None:
        label = f"step {number}"

        def problem(at: int, text: str) -> None:
            self.problem(at, f"{label}: {text}")

        if not isinstance(node, LineDict):
            problem(line, "a step must be a mapping with `run:` or `uses:`")
            return None
        s = node
        uses_raw = s.get("uses")
        if isinstance(uses_raw, str):
            label = f"step {number} (uses: {uses_raw})"
        for k in s:
            if k not in STEP_KEYS:
                problem(s.line_of(k), f"unknown key `{k}` (accepted: {_accepted(STEP_KEYS)})")

        if "run" in s and "uses" in s:
            problem(line, "a step has either `run:` or `uses:`, not both")
            return None
        if "run" not in s and "uses" not in s:
            problem(line, "a step needs `run:` (a command) or `uses: actions/checkout@...`")
            return None

        kind = StepKind.RUN
        run = ""
        with_: dict[str, str] = {}
        if "uses" in s:
            if not isinstance(uses_raw, str) or not uses_raw.strip():
                problem(s.line_of("uses"), "`uses:` must name an action, such as actions/checkout@v4")
                return None
            if checkout_ref(uses_raw) is None:
                if _CHECKOUT_NO_REF_RE.match(uses_raw.strip()):
                    problem(s.line_of("uses"), "`uses:` needs a version: actions/checkout@v4")
                else:
                    problem(
                        s.line_of("uses"),
                        migrate.suggestion(uses_raw, s.get("with"), self.labels) or UNSUPPORTED_USES,
                    )
                return None
            kind = StepKind.CHECKOUT
            with_ = self.string_map(s.get("with"), s.line_of("with"), f"{label}: ", "with")
            w = s.get("with")
            for key, message in checkout_inputs.problems(with_):
                problem(w.line_of(key) if isinstance(w, LineDict) else s.line_of("with"), message)
            for k in ("shell", "working-directory"):
                if k in s:
                    problem(s.line_of(k), f"`{k}:` applies only to `run:` steps")
        else:
            raw_run = s["run"]
            if not _is_scalar(raw_run) or raw_run is None or scalar_to_string(raw_run).strip() == "":
                problem(s.line_of("run"), "`run:` must be a non-empty command")
                return None
            run = scalar_to_string(raw_run)
            self.check_template(s.line_of("run"), f"{label}: `run`", run)
            if "with" in s:
                problem(s.line_of("with"), "`with:` applies only to `uses:` steps")

        step_id: str | None = None
        if "id" in s:
            step_id = scalar_to_string(s["id"])
            if not _ID_RE.match(step_id):
                problem(
                    s.line_of("id"),
                    f"step id `{step_id}` must start with a letter or `_` and contain only letters, digits, "
                    "`-` and `_`",
                )
            elif step_id in ids:
                problem(s.line_of("id"), f"step id `{step_id}` is already used by step {ids[step_id]}")
            else:
                ids[step_id] = number

        name = ""
        if "name" in s and s["name"] is not None:
            if _is_scalar(s["name"]):
                name = scalar_to_string(s["name"])
                self.check_template(s.line_of("name"), f"{label}: `name`", name)
            else:
                problem(s.line_of("name"), "`name` must be a string")
        if not name:
            name = "Checkout" if kind is StepKind.CHECKOUT else _run_title(run)

        shell: str | None = None
        if "shell" in s and kind is StepKind.RUN:
            shell = scalar_to_string(s["shell"]).strip()
            why = check_shell(shell)
            if why:
                problem(s.line_of("shell"), why)
        working_directory: str | None = None
        if "working-directory" in s and kind is StepKind.RUN:
            working_directory = scalar_to_string(s["working-directory"])
            self.check_template(
                s.line_of("working-directory"), f"{label}: `working-directory`", working_directory
            )

        env = self.string_map(s.get("env"), s.line_of("env"), f"{label}: ", "env")
        if_ = self.condition(s.get("if"), s.line_of("if"), label)
        continue_on_error: bool | str = False
        if "continue-on-error" in s:
            continue_on_error = self.bool_or_expression(
                s["continue-on-error"], s.line_of("continue-on-error"), f"{label}: `continue-on-error`"
            )
        timeout = self.timeout(
            s.get("timeout-minutes"), s.line_of("timeout-minutes"), f"{label}: `timeout-minutes`"
        )

        return Step(
            number=number,
            name=name,
            kind=kind,
            id=step_id,
            run=run,
            shell=shell,
            working_directory=working_directory,
            env=env,
            with_=with_,
            if_=if_,
            continue_on_error=continue_on_error,
            timeout_minutes=timeout,
            line=line,
        )


def _strings(value: Any) -> list[str]:
    """Every string in nested lists and mappings (keys excluded)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def _references(text: str) -> tuple[str, ...]:
    try:
        return expr.references(text)
    except ExpressionError:
        return ()  # reported where the text is evaluated


def _run_title(run: str) -> str:
    """GitHub's name for an unnamed `run:` step: "Run " and the script's first non-blank line."""
    first = next((ln.strip() for ln in run.splitlines() if ln.strip()), "")
    return f"Run {first}"
