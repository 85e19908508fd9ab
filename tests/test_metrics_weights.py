import hashlib
import urllib.error

import pytest
import torch
from torch import nn

from ccfpse.errors import WeightsError
from ccfpse.metrics import weights as weights_mod
from ccfpse.metrics.weights import WeightSpec, load_state_dict_strict, read_state_dict, resolve_weights

PAYLOAD = b"pretend weights"
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def calls(tmp_path, monkeypatch):
    """Cache in tmp_path; downloads write PAYLOAD instead of using the network."""
    monkeypatch.setenv("CCFPSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    seen = []

    def fake_download(url, dest):
        seen.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(PAYLOAD)

    monkeypatch.setattr(weights_mod, "_download", fake_download)
    return seen


def spec(sha256):
    return WeightSpec("Test weights", "sub/test.pth", "https://example.invalid/test.pth", sha256, "--test-weights")


def test_download_once_then_cache(calls):
    first = resolve_weights(spec(DIGEST[:8]))
    assert first.source == "download" and first.sha256 == DIGEST
    assert first.path == weights_mod.cache_dir() / "sub/test.pth"
    second = resolve_weights(spec(DIGEST))
    assert second.source == "cache" and second.path == first.path
    assert calls == ["https://example.invalid/test.pth"]


def test_download_with_wrong_checksum_is_deleted(calls):
    with pytest.raises(WeightsError, match="fails its checksum"):
        resolve_weights(spec("deadbeef"))
    assert not (weights_mod.cache_dir() / "sub/test.pth").exists()


def test_local_path_skips_cache_and_download(calls, tmp_path):
    local = tmp_path / "mine.pth"
    local.write_bytes(b"other bytes")
    got = resolve_weights(spec("deadbeef"), local)
    assert got.source == "path" and got.path == local and calls == []


def test_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("CCFPSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, dest):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(weights_mod, "_download", no_network)
    with pytest.raises(WeightsError) as err:
        resolve_weights(spec(None))
    message = str(err.value)
    for part in ("Test weights", "https://example.invalid/test.pth", "--test-weights PATH", "Name or service not known"):
        assert part in message
    no_url = WeightSpec("Other weights", "x.pth", None, None, "--other", where_to_get="ask its authors")
    with pytest.raises(WeightsError, match="no direct download exists \\(ask its authors\\).*--other PATH"):
        resolve_weights(no_url)


def test_read_state_dict_unwraps_containers(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"module.w": torch.ones(2)}, "epoch": 3}, path)
    assert list(read_state_dict(path, "test net")) == ["w"]


def test_strict_load_tolerates_missing_batchnorm_counters_only(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = {k: v for k, v in nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict().items()
             if not k.endswith("num_batches_tracked")}
    load_state_dict_strict(net, state, "a test net", "file.pth")
    assert torch.equal(net[0].weight, state["0.weight"])
    del state["1.running_mean"]
    with pytest.raises(WeightsError, match="file file.pth is not a test net: missing keys 1.running_mean"):
        load_state_dict_strict(net, state, "a test net", "file.pth")
