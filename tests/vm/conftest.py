"""Real-VM fixtures: the Debian test image made by scripts/build-test-image (cached by its stamp).

Tests that boot a guest are marked ``vm`` and run under TCG (KVM hangs on the build machines).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testimage import build_test_image
from tests.vm.sharedguest import SharedGuest

HERE = Path(__file__).resolve().parent
#: The modules that use ``shared_guest``: run next to each other, so it never idles in between.
SHARING = ("test_checkout.py", "test_machine.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    sharing = [i for i in items if i.path.parent == HERE and i.path.name in SHARING]
    if not sharing:
        return
    at = items.index(sharing[0])
    moved = set(sharing)
    rest = [i for i in items if i not in moved]
    before = sum(1 for i in items[:at] if i not in moved)
    items[:] = rest[:before] + sorted(sharing, key=lambda i: SHARING.index(i.path.name)) + rest[before:]


@pytest.fixture(scope="session")
def test_image() -> Path:
    """The image directory (``<images>/debian-12`` with base.qcow2, vmlinuz, initrd.img, cmdline),
    built when missing or out of date. SOLSTICE_TEST_IMAGES moves ``<images>``."""
    return build_test_image()


@pytest.fixture(scope="session")
def shared_guest(test_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedGuest]:
    """The guest the modules that can share one use (tests/vm/sharedguest.py); it boots on first
    use, so a run that selects none of them boots nothing."""
    shared = SharedGuest(test_image, tmp_path_factory.mktemp("shared-guest"))
    yield shared
    shared.close()
