"""Shared fixtures of the harm-evaluation tests: the model under evaluation and rigged tiny judges."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import factories, judge_models
from support.judge_models import WILDGUARD_REFUSES


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    """The model under evaluation: a tiny random Llama with a chat template."""
    return factories.save(factories.tiny_model(seed=1), tmp_path_factory.mktemp("subject") / "tiny")


@pytest.fixture(scope="module")
def guard(tmp_path_factory) -> Path:
    """A rigged tiny WildGuard that calls every request unharmful and every reply a refusal, not harmful."""
    return judge_models.wildguard_dir(tmp_path_factory.mktemp("wildguard") / "wg", WILDGUARD_REFUSES)


@pytest.fixture(scope="module")
def always_yes(tmp_path_factory) -> Path:
    """A rigged tiny HarmBench classifier that answers Yes to everything."""
    return judge_models.harmbench_dir(tmp_path_factory.mktemp("harmbench") / "hb", "Yes")
