"""Shared test fixtures. Real-VM tests are marked ``vm``; CI runs them (see .ci/run)."""
