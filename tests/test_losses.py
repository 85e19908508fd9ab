"""The perceptual loss's VGG19 weights: from a file (``--vgg-weights``) or through torchvision,
with one clear error when they cannot be had. No test downloads anything."""

import urllib.error

import pytest
import torch

from ccfpse.errors import WeightsError
from ccfpse.train.losses import VGGLoss, load_vgg19_features


def _vgg19_state_dict() -> dict[str, torch.Tensor]:
    """A full torchvision vgg19 state dict (random values, real shapes: ~0.55 GiB)."""
    from torchvision.models import vgg19

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in vgg19(weights=None).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=gen) * 0.01 for k, shape in shapes.items()}


def test_a_vgg_weights_file_becomes_the_perceptual_features(tmp_path):
    state = _vgg19_state_dict()
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    features = load_vgg19_features(str(path))
    assert len(features) == 30 and not any(p.requires_grad or p.is_meta for p in features.parameters())
    for i in (0, 2, 28):
        assert torch.equal(features[i].weight, state[f"features.{i}.weight"])
        assert torch.equal(features[i].bias, state[f"features.{i}.bias"])
    del state
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    loss = VGGLoss(features)(images, images.flip(0))
    assert loss.item() > 0 and VGGLoss(features)(images, images).item() == 0


def test_vgg_weights_files_that_cannot_serve_are_one_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="VGG19 weights file not found"):
        load_vgg19_features(str(tmp_path / "absent.pth"))

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint\n")
    with pytest.raises(WeightsError) as info:
        load_vgg19_features(str(garbage))
    message = str(info.value)
    assert str(garbage) in message and "not a readable weight file" in message
    assert "\n" not in message and "weights_only" not in message

    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, wrong)
    with pytest.raises(WeightsError, match=r"wrong\.pth is not a torchvision VGG19 state dict: missing keys"):
        load_vgg19_features(str(wrong))


def test_without_network_the_vgg_loss_says_how_to_go_on(monkeypatch, tmp_path):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached copy
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError) as info:
        load_vgg19_features(None)
    message = str(info.value)
    assert "could not be loaded through torchvision (URLError:" in message
    assert "--vgg-weights PATH" in message and "--no-vgg-loss" in message and "\n" not in message
