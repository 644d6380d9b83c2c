"""Forge runner protocols: the forge-neutral poller ``core`` and one backend per forge (``forgejo``;
``github`` later).

A backend turns a forge's task into a ``JobRequest`` and a job's ``JobEvent`` stream into the
forge's reporting calls; the core does the rest. Neither touches QEMU or images: a job is routed by
its label's queue (DESIGN.md, "Boundaries").
"""
