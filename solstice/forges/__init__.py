"""Forge runner protocols: one subpackage per forge (``forgejo``; ``github`` later).

Forge code turns a forge's task into a ``JobRequest`` and a job's ``JobEvent`` stream into the
forge's reporting calls. It never touches QEMU (DESIGN.md, "Boundaries").
"""
