"""The image catalog: which disk boots for a ``runs-on`` label, how, and with which guest profile;
and the machine plan (how big a job's VM is)."""

from solstice.images.catalog import Catalog, Image
from solstice.images.plan import MachinePlan, boot_timeout, plan_machine, requested_size

__all__ = ["Catalog", "Image", "MachinePlan", "boot_timeout", "plan_machine", "requested_size"]
