"""The per-host dispatcher: JobRequests from RabbitMQ -> PostgreSQL -> one unit per job.

    contract    what the dispatcher and the job process agree on: files, unit names, exit codes,
                the synthetic final event
    spawner     the Spawner protocol, UnitStatus, and judging how a unit ended
    systemd     transient solstice-job@<uuid>.service units via systemd-run/systemctl
    process     child processes (machines without systemd, tests), each under a small supervisor
    supervise   that supervisor (stdlib only: it starts fast)
    dispatcher  the loop: consume, record, ack, claim, start, follow, finish, reconcile, cancel

This package imports nothing heavy itself, so ``python -m solstice.dispatch.supervise`` starts
quickly; import the modules. See docs/dispatcher.md.
"""
