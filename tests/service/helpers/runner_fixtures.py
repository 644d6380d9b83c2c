"""Pipeline fixtures for a forge runner with the stand-in job, shared by the modules that run both
runners the same way (a module uses them by importing the names, as store_fixtures' are). A
module of their own: helpers.forgejo and helpers.github import helpers.pipeline, so pipeline.py
cannot import them back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers.forgejo import forgejo_config
from helpers.github import github_config
from helpers.pipeline import Pipeline, runner_pipeline
from solstice.config import BrokerConfig


@pytest.fixture
def forgejo_pipeline(broker_cfg: BrokerConfig, database_url: str) -> Iterator[Pipeline]:
    """A pipeline configured for ``solstice forgejo-runner`` (nothing registered or started)."""
    yield from runner_pipeline(broker_cfg, database_url, lambda key: forgejo_config(key))


@pytest.fixture
def github_pipeline(broker_cfg: BrokerConfig, database_url: str) -> Iterator[Pipeline]:
    """A pipeline configured for ``solstice github-runner`` (nothing registered or started)."""
    yield from runner_pipeline(broker_cfg, database_url, lambda key: github_config(key))
