"""``solstice pool list|keep``: the warm pool of booted, never-used VMs (docs/warm-pool.md)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from solstice import config as configmod
from solstice.images import poolstate, warm
from solstice.model.jobcontract import canonical_job_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="pool_verb", metavar="COMMAND", required=True)
    sub.add_parser("list", help="the warm VMs of this host: label, state, age, plan", allow_abbrev=False)
    keep = sub.add_parser(
        "keep",
        help="boot warm VM VM_ID and keep it for a job: the main process of solstice-pool@VM_ID.service "
        "(the dispatcher starts it)",
        allow_abbrev=False,
    )
    keep.add_argument("vm_id", metavar="VM_ID")
    keep.add_argument("--label", required=True, help="the image label to boot")


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _list(runtime_dir: Path) -> int:
    vms = poolstate.list_states(runtime_dir)
    if not vms:
        print("no warm VMs on this host (set [pool.<label>] size in the dispatcher's configuration)")
        return 0
    now = time.time()
    print(f"{'VM':36}  {'LABEL':20}  {'STATE':7}  {'AGE':>7}  {'READY FOR':>9}  PLAN")
    for vm in vms:
        ready = _age(now - vm.ready_at) if vm.ready_at and vm.state is poolstate.VMState.READY else "-"
        state = vm.state.value + (f" by {vm.job_id}" if vm.job_id else "")
        print(
            f"{vm.vm_id:36}  {vm.label[:20]:20}  {state:7}  {_age(now - vm.created):>7}  {ready:>9}  "
            f"{vm.plan.describe()}"
        )
    return 0


def main(args: argparse.Namespace) -> int:
    cfg = configmod.load(Path(args.config) if args.config else None)
    if args.pool_verb == "list":
        return _list(Path(cfg.paths.runtime_dir))
    if args.pool_verb == "keep":
        if canonical_job_id(args.vm_id) is None:  # it names directories and a unit
            print(f"solstice pool keep: {args.vm_id!r} is not a uuid in canonical form", file=sys.stderr)
            return 2
        # The keeper's stderr is its unit's journal: say what happens at INFO.
        logging.getLogger("solstice").setLevel(logging.INFO)
        return warm.run_keeper(cfg, args.vm_id, args.label)
    raise AssertionError(args.pool_verb)
