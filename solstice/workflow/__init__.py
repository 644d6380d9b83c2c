"""Actions workflow YAML -> ``JobSpec``s (see docs/workflow-syntax.md for what is supported).

``load_workflow``/``parse_workflow`` return a ``Workflow`` whose jobs are matrix-expanded
``JobSpec``s, or raise ``WorkflowProblems`` (a ``WorkflowError``) listing every problem as
``file:line: message``.
"""

from solstice.workflow import deferred
from solstice.workflow.orchestrate import job_if, needs_context, needs_result, order_jobs, should_run
from solstice.workflow.translate import (
    DEFAULT_TIMEOUT_MINUTES,
    Problem,
    Workflow,
    WorkflowProblems,
    check_shell,
    checkout_ref,
    load_workflow,
    matrix_suffix,
    parse_workflow,
    plain,
)

__all__ = [
    "DEFAULT_TIMEOUT_MINUTES",
    "Problem",
    "Workflow",
    "WorkflowProblems",
    "check_shell",
    "deferred",
    "job_if",
    "needs_context",
    "needs_result",
    "order_jobs",
    "should_run",
    "checkout_ref",
    "load_workflow",
    "matrix_suffix",
    "parse_workflow",
    "plain",
]
