"""``runs-on`` labels -> bootable images.

The catalog is, weakest first: the test image ``debian-12`` (made by ``scripts/build-test-image``),
the built-in entries (solstice/data/images.toml), the operator's ``[paths] images_d`` files, and
solstice.toml's ``[images.<label>]`` tables; a later entry replaces an earlier one of the same label
whole. The operator's names always win over built-in ones: a built-in alias (or built-in entry)
whose name the operator uses for something else is left out (docs/images.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from solstice.config import Config, ImageConfig, SizePreset, parse_size_gib, parse_size_mib
from solstice.errors import ConfigError, ImageError
from solstice.images import catalog_files
from solstice.images.prepared import find_prepared
from solstice.model.labels import match
from solstice.vm.argv import BootMode
from solstice.vm.profiles import PROFILES, GuestProfile, get_profile

TEST_IMAGE_LABEL = "debian-12"
#: The second test image (build-test-image --variant metadata): no cloud-init, the metadata-agent's
#: cpio disk, root login; the OpenIndiana provisioner proven on Linux.
METADATA_TEST_IMAGE_LABEL = "debian-12-metadata"
TEST_IMAGE_CMDLINE = "root=/dev/vda rw console=ttyS0"
BUILD_HINT = "build it with: sudo scripts/build-test-image"
#: The test image's ``source``: built on this host, not pulled (solstice.images.state).
LOCAL_BUILD = "build-test-image"
TEST_IMAGE_VERIFIED = "booted by the VM tests on every CI run (TCG)"
METADATA_TEST_IMAGE_VERIFIED = (
    "booted under TCG on the build machine, 2026-12-01: image selftest and the VM job tests pass"
)


@dataclass(frozen=True)
class Image:
    label: str
    base_image: Path
    image_format: str
    boot: BootMode
    kernel: Path | None
    initrd: Path | None
    cmdline: str
    profile: GuestProfile
    cpus: int | None
    memory_mib: int | None
    disk_gib: int | None = None
    #: The catalog entry it was built from and the file that defined it.
    config: ImageConfig | None = field(default=None, compare=False)
    origin: str = ""
    #: <images_dir>/<label>: its state.json (solstice.images.state) and selftest.json.
    state_dir: Path | None = None
    #: The catalog's setup commands (``solstice image prepare``).
    setup: tuple[str, ...] = ()
    #: The base before preparation when ``base_image`` is the prepared copy, else None.
    unprepared: Path | None = None

    @property
    def pristine(self) -> Path:
        """The base as pulled or built, before any preparation: what is verified, pulled, removed."""
        return self.unprepared or self.base_image

    def check(self) -> None:
        """Raise ImageError when a file the image needs is missing."""
        for what, path in (("disk", self.base_image), ("kernel", self.kernel), ("initrd", self.initrd)):
            if path is not None and not path.is_file():
                hint = (
                    BUILD_HINT
                    if self.label in (TEST_IMAGE_LABEL, METADATA_TEST_IMAGE_LABEL)
                    else "check [images] in the configuration"
                )
                raise ImageError(f"image {self.label!r}: {what} {path} does not exist", hint=hint)


def test_image_config(
    images_dir: Path, label: str = TEST_IMAGE_LABEL, profile: str = "debian"
) -> ImageConfig:
    root = images_dir / label
    cmdline_file = root / "cmdline"
    cmdline = cmdline_file.read_text().strip() if cmdline_file.is_file() else TEST_IMAGE_CMDLINE
    return ImageConfig(
        label=label,
        path=str(root / "base.qcow2"),
        profile=profile,
        boot="kernel",
        kernel=str(root / "vmlinuz"),
        initrd=str(root / "initrd.img"),
        cmdline=cmdline,
        source=LOCAL_BUILD,
        os="Debian 12 (Solstice test image)"
        if label == TEST_IMAGE_LABEL
        else "Debian 12 (metadata-agent test image)",
        verified=TEST_IMAGE_VERIFIED if label == TEST_IMAGE_LABEL else METADATA_TEST_IMAGE_VERIFIED,
    )


def image_from_directory(path: Path, profile: str = "debian") -> ImageConfig:
    """A directory laid out like build-test-image's output (base.qcow2, vmlinuz, initrd.img, cmdline)."""
    cfg = test_image_config(path.parent)
    cmdline_file = path / "cmdline"
    return ImageConfig(
        label=str(path),
        path=str(path / "base.qcow2"),
        profile=profile,
        boot="kernel",
        kernel=str(path / "vmlinuz"),
        initrd=str(path / "initrd.img"),
        cmdline=cmdline_file.read_text().strip() if cmdline_file.is_file() else cfg.cmdline,
    )


def image_from_file(path: Path, profile: str = "ubuntu") -> ImageConfig:
    """A bare disk image that boots with BIOS firmware."""
    fmt = "raw" if path.suffix in (".raw", ".img") else "qcow2"
    return ImageConfig(label=str(path), path=str(path), profile=profile, boot="bios", format=fmt)


def _apply_size(cfg: ImageConfig, sizes: Mapping[str, SizePreset], where: str) -> ImageConfig:
    if not cfg.size:
        return cfg
    preset = sizes.get(cfg.size)
    if preset is None:
        raise ConfigError(
            f"{where}: [images.{cfg.label}] size = {cfg.size!r}: no such size preset",
            hint=f"presets: {', '.join(sorted(sizes))} (add one as [sizes.<name>])",
        )
    return dataclasses.replace(
        cfg,
        cpus=cfg.cpus if cfg.cpus is not None else preset.cpus,
        memory=cfg.memory if cfg.memory is not None else preset.memory,
        disk=cfg.disk if cfg.disk is not None else preset.disk,
    )


class Catalog:
    def __init__(
        self,
        images: Mapping[str, ImageConfig],
        images_dir: Path,
        labels: Mapping[str, str] | None = None,
        *,
        sizes: Mapping[str, SizePreset] | None = None,
        images_d: Path | None = None,
        builtin: bool = False,
        origin: str = "the configuration",
    ) -> None:
        self._images_dir = images_dir
        labels = dict(labels or {})
        base = catalog_files.builtin() if builtin else catalog_files.CatalogFiles()
        local = catalog_files.directory(images_d) if images_d is not None else catalog_files.CatalogFiles()
        operator = {**local.images, **images}
        self._origins: dict[str, str] = {
            TEST_IMAGE_LABEL: "the built-in test image",
            METADATA_TEST_IMAGE_LABEL: "the built-in test image",
            **base.origins,
            **local.origins,
            **dict.fromkeys(images, origin),
        }
        # The operator's names hide built-in entries and aliases of the same name.
        taken = set(operator) | set(labels) | {a for cfg in operator.values() for a in cfg.aliases}
        builtins = {
            TEST_IMAGE_LABEL: test_image_config(images_dir),
            METADATA_TEST_IMAGE_LABEL: test_image_config(
                images_dir, METADATA_TEST_IMAGE_LABEL, "metadata-agent-test"
            ),
            **base.images,
        }
        builtins = {k: v for k, v in builtins.items() if k not in taken}
        presets = {**base.sizes, **local.sizes, **(sizes or {})}
        #: entries of the built-in catalog (not the test image) that the operator did not replace
        # The metadata-agent test image is for the test suite: served only where it was built.
        self._builtin = ({METADATA_TEST_IMAGE_LABEL} | set(base.images)) - set(operator)
        self._configs: dict[str, ImageConfig] = {}
        for label, cfg in {**builtins, **operator}.items():
            where = self._origins.get(label, origin)
            if cfg.profile not in PROFILES:
                raise ConfigError(
                    f"{where}: [images.{label}] profile = {cfg.profile!r}: no such guest profile",
                    hint=f"profiles: {', '.join(sorted(PROFILES))}",
                )
            self._configs[label] = _apply_size(cfg, presets, where)
        self._aliases: dict[str, str] = {}
        for label, cfg in self._configs.items():
            for alias in cfg.aliases:
                if label in operator or (alias not in taken and alias not in self._configs):
                    self._aliases[alias] = label
        # [labels] mapped names resolve like aliases, so dispatchers also consume their queues.
        for label, target in labels.items():
            canon = self.canonical(target)
            if canon is None:
                raise ConfigError(
                    f"[labels] {label} = {target!r}: no image has that label",
                    hint=f"images: {', '.join(self.labels)}",
                )
            if label in self._configs or label in self._aliases:
                raise ConfigError(f"[labels] {label}: already a label of image {self.canonical(label)!r}")
            self._aliases[label] = canon

    @classmethod
    def from_config(cls, config: Config) -> Catalog:
        return cls(
            config.images,
            config.paths.images_dir,
            config.labels,
            sizes=config.sizes,
            images_d=Path(config.paths.images_d),
            builtin=True,
            origin=config.source,
        )

    @property
    def images_dir(self) -> Path:
        return self._images_dir

    @property
    def entries(self) -> list[str]:
        """The images' own labels (no aliases), sorted."""
        return sorted(self._configs)

    def config(self, label: str) -> ImageConfig:
        canon = self.canonical(label)
        if canon is None:
            raise ImageError(
                f"no image for label {label!r}; this host has images for: {', '.join(self.labels)}"
            )
        return self._configs[canon]

    def origin(self, label: str) -> str:
        """The file that defined the image of ``label``."""
        return self._origins.get(self.config(label).label, "")

    @property
    def labels(self) -> list[str]:
        return sorted([*self._configs, *self._aliases])

    def served_labels(self) -> list[str]:
        """The labels a dispatcher consumes when ``[dispatcher] labels`` is empty: the operator's
        entries, the test image, and the built-in entries whose disk is on this host (pulled),
        each with its aliases and ``[labels]`` names. A built-in entry nobody pulled is left out,
        so its jobs are not routed to a host that cannot run them."""
        kept = {
            label
            for label, cfg in self._configs.items()
            if label not in self._builtin or self.build(cfg).base_image.is_file()
        }
        return sorted([*kept, *(alias for alias, target in self._aliases.items() if target in kept)])

    def canonical(self, label: str) -> str | None:
        if label in self._configs:
            return label
        return self._aliases.get(label)

    def resolve(self, runs_on: Iterable[str]) -> str:
        """Pick the image for a job's ``runs-on``: every label must be an image label or a generic one,
        and they must name exactly one image."""
        labels = list(runs_on)
        chosen, unknown = match(labels, self.canonical)
        known = ", ".join(self.labels)
        if unknown:
            raise ImageError(
                f"runs-on: unknown label {', '.join(repr(u) for u in unknown)}; "
                f"this host has images for: {known}",
                hint="add an [images.<label>] table to the configuration, or use one of those labels",
            )
        if not chosen:
            raise ImageError(f"runs-on {labels!r} names no image; this host has images for: {known}")
        if len(chosen) > 1:
            raise ImageError(f"runs-on {labels!r} names several images ({', '.join(chosen)}); name one")
        return chosen[0]

    def get(self, label: str, *, prepared: bool = True) -> Image:
        return self.build(self.config(label), prepared=prepared)

    def build(self, cfg: ImageConfig, *, prepared: bool = True) -> Image:
        """The image of ``cfg``; its prepared copy as the base when one exists for its setup
        commands (unless ``prepared`` is false: ``image prepare`` starts from the plain base)."""

        def path(p: str) -> Path:
            q = Path(p).expanduser()
            return q if q.is_absolute() else self._images_dir / q

        base = path(cfg.path or f"{cfg.label}/disk.{cfg.format}")
        ready = find_prepared(self._images_dir, cfg.label, base, cfg.setup) if prepared else None
        return Image(
            label=cfg.label,
            base_image=ready or base,
            image_format="qcow2" if ready else cfg.format,
            boot=BootMode(cfg.boot),
            kernel=path(cfg.kernel) if cfg.kernel else None,
            initrd=path(cfg.initrd) if cfg.initrd else None,
            cmdline=cfg.cmdline,
            profile=get_profile(cfg.profile),
            cpus=cfg.cpus,
            memory_mib=parse_size_mib(cfg.memory) if cfg.memory else None,
            disk_gib=parse_size_gib(cfg.disk) if cfg.disk else None,
            config=cfg,
            origin=self._origins.get(cfg.label, ""),
            state_dir=None if "/" in cfg.label else self._images_dir / cfg.label,
            setup=cfg.setup,
            unprepared=base if ready else None,
        )
