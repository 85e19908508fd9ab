
import pytest
import torch
import torchvision

from ccfpse.errors import CCFPSEError, WeightsError
from ccfpse.metrics import weights as weights_mod
from ccfpse.metrics.lpips import BACKBONES, LPIPSMetric, mean_pairwise_lpips


pytestmark = pytest.mark.usefixtures("offline_weights")


@pytest.fixture(scope="module")
def backbone_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    alex = folder / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), alex)
    wrong = folder / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    return {"alex": alex, "wrong": wrong}


@pytest.fixture(scope="module")
def metric(backbone_files):
    return LPIPSMetric("alex", backbone_files["alex"])


def test_backbone_weights_are_loaded_from_the_file(metric, backbone_files):
    state = torch.load(backbone_files["alex"])
    assert torch.equal(metric.model.net.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(getattr(metric.model.net.slice5, "10").bias, state["features.10.bias"])
    assert metric.backbone_sha256 == weights_mod.sha256_file(backbone_files["alex"])


def test_identical_samples_give_zero_and_different_ones_more(metric):
    g = torch.Generator().manual_seed(1)
    layout = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    same = torch.stack([layout, layout, layout])
    assert metric.mean_pairwise(same) == pytest.approx(0.0, abs=1e-7)
    different = torch.rand(3, 2, 3, 32, 32, generator=g) * 2 - 1
    assert metric.mean_pairwise(different) > 0.01


def test_mean_over_pairs_then_layouts(metric):
    g = torch.Generator().manual_seed(2)
    samples = [torch.rand(2, 3, 32, 32, generator=g) * 2 - 1 for _ in range(3)]
    per_layout = metric.pairwise_per_layout(samples)
    assert per_layout.shape == (2,)
    pairs = [metric.distance(samples[i], samples[j]) for i, j in ((0, 1), (0, 2), (1, 2))]
    expected = torch.stack(pairs).mean(0)
    assert torch.allclose(per_layout, expected)
    assert mean_pairwise_lpips(torch.stack(samples), metric) == pytest.approx(float(expected.mean()), rel=1e-6)
    with pytest.raises(CCFPSEError, match="at least 2 samples"):
        metric.mean_pairwise(samples[:1])


def test_wrong_file_is_rejected(backbone_files):
    with pytest.raises(WeightsError, match=r"is not AlexNet ImageNet weights.*missing keys features\.0"):
        LPIPSMetric("alex", backbone_files["wrong"])
    with pytest.raises(CCFPSEError, match="unknown LPIPS backbone"):
        LPIPSMetric("resnet", backbone_files["alex"])


def test_torchvision_cache_is_used_and_checked(backbone_files, tmp_path):
    # A file under torchvision's cache name whose sha256 does not start with the name's prefix.
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / BACKBONES["alex"].filename).write_bytes(backbone_files["alex"].read_bytes())
    with pytest.raises(WeightsError, match="fails its checksum"):
        LPIPSMetric("alex")


def test_offline_without_path_names_the_option():
    with pytest.raises(WeightsError, match="--lpips-backbone-weights"):
        LPIPSMetric("alex")
