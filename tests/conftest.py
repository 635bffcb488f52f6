import os
import random

import numpy as np
import pytest
import torch
from hypothesis import settings

# Property tests search at random locally, but CI runs the same examples every time (a failure there
# reproduces); ``CI=true`` selects the derandomized profile.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI", "").lower() in {"1", "true", "yes"} else "dev")

# Without a GPU, Triton kernels run in Triton's interpreter; it must be chosen before Triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True, scope="session")
def _private_cache_folder(tmp_path_factory):
    """Tests (and the CLI subprocesses they start) use a fresh disk cache, never the user's."""
    saved = os.environ.get("CUSTOMGRAD_CACHE_DIR")
    os.environ["CUSTOMGRAD_CACHE_DIR"] = str(tmp_path_factory.mktemp("customgrad-cache"))
    # The native engine's one solver library, built before any fit: otherwise the fits that run while its
    # background build is under way take the tensor engine, and which engine a fit ran would vary by run.
    from customgrad.backends.cpu import compiler
    from customgrad.fit import native_library

    if compiler() is not None:
        native_library.library(build=True)
    yield
    if saved is None:
        del os.environ["CUSTOMGRAD_CACHE_DIR"]
    else:
        os.environ["CUSTOMGRAD_CACHE_DIR"] = saved


@pytest.fixture(autouse=True)
def _seeded_random_state():
    """Every test starts from the same random state: an unseeded draw (``torch.randn``, NumPy's legacy
    global generator, ``random``) gives the same verdict on every run and whichever tests ran before."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture(autouse=True)
def _restore_registry():
    """Functions a test names stay out of later tests: the registry is restored after each test."""
    from customgrad.registry import REGISTRY

    saved = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)
