"""The catalog's files: the built-in set shipped with the package (solstice/data/images.toml) and the
operator's ``[paths] images_d`` directory (``*.toml``, read in name order). Each file holds
``[images.<label>]`` and ``[sizes.<name>]`` tables, the same as solstice.toml; every error names the
file and the key."""

from __future__ import annotations

import importlib.resources
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from solstice.config import ImageConfig, SizePreset, image_tables, size_tables
from solstice.errors import ConfigError

BUILTIN = "the built-in catalog (solstice/data/images.toml)"


@dataclass
class CatalogFiles:
    images: dict[str, ImageConfig] = field(default_factory=dict)
    sizes: dict[str, SizePreset] = field(default_factory=dict)
    #: label or size name -> the file that defined it, for messages
    origins: dict[str, str] = field(default_factory=dict)


def parse(text: str, where: str) -> CatalogFiles:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - {"images", "sizes"})
    if unknown:
        raise ConfigError(
            f"{where}: unknown table [{unknown[0]}]", hint="a catalog file holds [images.*] and [sizes.*]"
        )
    images = image_tables(raw.get("images", {}), where)
    sizes = size_tables(raw.get("sizes", {}), where)
    origins = {**{f"sizes.{n}": where for n in sizes}, **dict.fromkeys(images, where)}
    return CatalogFiles(images, sizes, origins)


def builtin() -> CatalogFiles:
    ref = importlib.resources.files("solstice") / "data" / "images.toml"
    return parse(ref.read_text(), BUILTIN)


def directory(path: Path) -> CatalogFiles:
    """Every ``*.toml`` of ``path`` (none when it does not exist). A label defined in two of them
    is an error naming both: which one should win is not obvious from the file names."""
    out = CatalogFiles()
    if not path.is_dir():
        return out
    for file in sorted(path.glob("*.toml")):
        try:
            text = file.read_text()
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
        part = parse(text, str(file))
        for key, where in part.origins.items():
            if key in out.origins:
                what = f"[{key}]" if key.startswith("sizes.") else f"[images.{key}]"
                raise ConfigError(f"{where}: {what} is also defined in {out.origins[key]}")
        out.images.update(part.images)
        out.sizes.update(part.sizes)
        out.origins.update(part.origins)
    return out
