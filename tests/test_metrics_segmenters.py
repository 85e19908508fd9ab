import json

import pytest
import torch
import torchvision
from torch import nn

from ccfpse.errors import CCFPSEError, WeightsError
from ccfpse.metrics import weights as weights_mod
from ccfpse.metrics.segmenters import (
    CITYSCAPES_LABEL_TO_TRAIN_ID,
    DeepLabV2MSC,
    DRND105Seg,
    Segmenter,
    UPerNet101,
    build_segmenter,
)


pytestmark = pytest.mark.usefixtures("offline_weights")


def half(t: torch.Tensor) -> torch.Tensor:
    return t.half() if t.is_floating_point() else t


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Random-init state dicts of the three paper segmenters, in their releases' layouts."""
    folder = tmp_path_factory.mktemp("segmenters")
    torch.manual_seed(0)
    files = {}
    deeplab = DeepLabV2MSC().state_dict()
    files["deeplab"] = folder / "deeplab.pth"
    torch.save(deeplab, files["deeplab"])
    # A DeepLabV2 without the MSC wrapper, saved in half precision (smaller; loads as float32).
    files["deeplab_bare"] = folder / "deeplab_bare.pth"
    torch.save({k[len("base."):]: half(v) for k, v in deeplab.items()}, files["deeplab_bare"])
    del deeplab

    upernet = UPerNet101().state_dict()
    files["upernet"] = folder / "upernet.pth"
    torch.save(upernet, files["upernet"])
    csail = folder / "csail"  # CSAIL's two files, with its sync-BN's extra training buffers
    csail.mkdir()
    for part in ("encoder", "decoder"):
        state = {k[len(part) + 1:]: half(v) for k, v in upernet.items() if k.startswith(part + ".")}
        bn = "bn1" if part == "encoder" else "ppm_last_conv.1"
        state[f"{bn}._running_iter"] = torch.ones(1)
        torch.save(state, csail / f"{part}_epoch_50.pth")
    files["csail"] = csail
    del upernet

    files["drn"] = folder / "drn.pth"
    torch.save(DRND105Seg().state_dict(), files["drn"])
    files["wrong"] = folder / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), files["wrong"])
    return files


def check_prediction(seg, num_classes, size=(16, 24)):
    assert isinstance(seg, Segmenter)
    assert seg.num_classes == num_classes
    pred = seg.predict(torch.rand(1, 3, *size) * 2 - 1)
    assert pred.shape == (1, *size) and pred.dtype == torch.long
    assert 0 <= int(pred.min()) and int(pred.max()) < num_classes


def test_deeplab_from_created_file(weight_files):
    seg = build_segmenter("deeplabv2_cocostuff", weight_files["deeplab"])
    check_prediction(seg, 182)
    assert seg.weights_used == {str(weight_files["deeplab"]): weights_mod.sha256_file(weight_files["deeplab"])}
    bare = build_segmenter("deeplabv2_cocostuff", weight_files["deeplab_bare"])
    assert bare.net.base.aspp.c3.weight.dtype == torch.float32
    assert torch.equal(bare.net.base.aspp.c3.weight, seg.net.base.aspp.c3.weight.half().float())
    label = torch.tensor([[0, 181, 182]])
    assert seg.label_to_target(label).tolist() == [[0, 181, 255]]


def test_upernet_from_single_file_and_from_csail_folder(weight_files):
    seg = build_segmenter("upernet101_ade20k", weight_files["upernet"])
    check_prediction(seg, 150)
    folder = build_segmenter("upernet101_ade20k", weight_files["csail"])
    assert torch.equal(folder.net.decoder.conv_last[1].weight, seg.net.decoder.conv_last[1].weight.half().float())
    assert len(folder.weights_used) == 2
    assert seg.label_to_target(torch.tensor([[0, 149, 150]])).tolist() == [[0, 149, 255]]


def test_drn_from_created_file(weight_files):
    seg = build_segmenter("drn_d_105_cityscapes", weight_files["drn"], input_size=None)
    check_prediction(seg, 19)
    ids = torch.tensor([[0, 7, 8, 26, 33, 34, 6]])
    assert seg.label_to_target(ids).tolist() == [[255, 0, 1, 13, 18, 255, 255]]
    assert sorted(CITYSCAPES_LABEL_TO_TRAIN_ID.values()) == list(range(19))


@pytest.mark.parametrize(
    "name, what", [("deeplabv2_cocostuff", "DeepLabV2"), ("upernet101_ade20k", "UPerNet101"), ("drn_d_105_cityscapes", "DRN-D-105")]
)
def test_wrong_file_is_rejected(weight_files, name, what):
    with pytest.raises(WeightsError, match=f"is not {what}.*(missing|unexpected) keys"):
        build_segmenter(name, weight_files["wrong"])


def test_deeplab_file_is_not_a_drn(weight_files):
    with pytest.raises(WeightsError, match="is not DRN-D-105 Cityscapes weights"):
        build_segmenter("drn_d_105_cityscapes", weight_files["deeplab"])


def test_without_weights_offline():
    with pytest.raises(WeightsError, match="cannot download .*deeplabv2_resnet101_msc-cocostuff164k-100000.pth.*--segmenter-weights"):
        build_segmenter("deeplabv2_cocostuff")
    with pytest.raises(WeightsError, match="encoder_epoch_50.pth.*--segmenter-weights"):
        build_segmenter("upernet101_ade20k")
    with pytest.raises(WeightsError, match="no direct download exists .*--segmenter-weights PATH"):
        build_segmenter("drn_d_105_cityscapes")


class TinySeg(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 3, stride=2, padding=1)

    def forward(self, x):
        return {"out": self.conv(x)}


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # the test itself scripts and saves
def test_torchscript_segmenter(tmp_path):
    scripted = torch.jit.script(TinySeg(5))
    plain = tmp_path / "plain.pt"
    torch.jit.save(scripted, str(plain))
    seg = build_segmenter(f"torchscript:{plain}")
    check_prediction(seg, 5, size=(20, 30))  # classes found by a probe pass; logits upsampled
    assert seg.ignore_index is None
    described = tmp_path / "described.pt"
    meta = {"num_classes": 5, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "ignore_index": 255}
    torch.jit.save(scripted, str(described), _extra_files={"segmenter.json": json.dumps(meta)})
    seg = build_segmenter(f"torchscript:{described}")
    assert seg.ignore_index == 255 and seg.mean == (0.5, 0.5, 0.5)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    expected = torch.nn.functional.interpolate(scripted(x)["out"], size=(8, 8), mode="bilinear").argmax(1)
    assert torch.equal(seg.predict(x), expected)  # mean/std 0.5 leave [-1, 1] images unchanged


def test_bad_names_and_files(tmp_path, weight_files):
    not_script = tmp_path / "model.pt"
    torch.save({"w": torch.ones(1)}, not_script)
    with pytest.raises(WeightsError, match="is not a TorchScript model"):
        build_segmenter(f"torchscript:{not_script}")
    with pytest.raises(CCFPSEError, match="unknown segmenter"):
        build_segmenter("segformer")
    with pytest.raises(CCFPSEError, match="names its own model file"):
        build_segmenter(f"torchscript:{not_script}", weight_files["drn"])
