from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SPEC_DIR = SHARED / "spec"
FIXTURES = SHARED / "fixtures"

# One thread: the test models are tiny, and on a shared machine more threads only contend.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def recompute_every_checkpointed_block(monkeypatch):
    """Under checkpointing only blocks with kernel maps of 32 MiB and more are recomputed; the
    tests' maps are far smaller, so without this their checkpointing would recompute nothing.
    (``test_only_large_blocks_are_recomputed`` tests the threshold itself.)"""
    import ccfpse.nn.blocks

    monkeypatch.setattr(ccfpse.nn.blocks, "RECOMPUTE_MIN_BYTES", 0)


@pytest.fixture
def coco_fixture_root() -> Path:
    root = FIXTURES / "coco_stuff"
    if not root.is_dir():
        pytest.skip(f"real COCO-Stuff fixtures not found at {root}")
    return root


@pytest.fixture
def spec_dir() -> Path:
    if not SPEC_DIR.is_dir():
        pytest.skip(f"official state-dict listings not found at {SPEC_DIR}")
    return SPEC_DIR


@pytest.fixture
def offline_weights(tmp_path, monkeypatch):
    """Empty weight caches, and any download fails the way it does without a network."""
    import urllib.error

    from ccfpse.metrics import weights as weights_mod

    monkeypatch.setenv("CCFPSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, dest):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(weights_mod, "_download", no_network)
