"""Solstice CI: run GitHub and Forgejo Actions jobs in a fresh QEMU virtual machine per job."""

__version__ = "0.1.0"
