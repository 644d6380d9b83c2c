"""Real-VM fixtures: the Debian test image made by scripts/build-test-image (cached by its stamp).

Tests that boot a guest are marked ``vm`` and run under TCG (KVM hangs on the build machines).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.testimage import build_test_image


@pytest.fixture(scope="session")
def test_image() -> Path:
    """The image directory (``<images>/debian-12`` with base.qcow2, vmlinuz, initrd.img, cmdline),
    built when missing or out of date. SOLSTICE_TEST_IMAGES moves ``<images>``."""
    return build_test_image()
