"""The image catalog: which disk boots for a ``runs-on`` label, how, and with which guest profile."""

from solstice.images.catalog import Catalog, Image

__all__ = ["Catalog", "Image"]
