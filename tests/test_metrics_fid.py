import warnings

import numpy as np
import pytest
import torch
import torchvision
from scipy import linalg

from ccfpse.errors import WeightsError
from ccfpse.metrics import fid as fid_mod
from ccfpse.metrics import weights as weights_mod
from ccfpse.metrics.fid import (
    FeatureStatistics,
    FIDFeatureExtractor,
    feature_statistics,
    fid_from_features,
    frechet_distance,
)


pytestmark = pytest.mark.usefixtures("offline_weights")


def reference_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """Float64 Fréchet distance via the symmetric form Tr sqrt(S1^1/2 S2 S1^1/2)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def random_features(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift


def test_identical_feature_sets_give_zero():
    f = random_features(400, 64, 0)
    assert abs(fid_from_features(f, f.copy())) < 1e-6


def test_matches_float64_reference():
    f1, f2 = random_features(300, 48, 1), random_features(250, 48, 2, shift=0.3)
    ours = fid_from_features(f1, f2)
    assert ours > 1.0
    assert ours == pytest.approx(reference_fid(f1, f2), rel=1e-8)
    assert fid_from_features(f2, f1) == pytest.approx(ours, rel=1e-8)


def test_matches_pytorch_fid_distance():
    from pytorch_fid.fid_score import calculate_frechet_distance

    mu1, s1 = feature_statistics(random_features(300, 48, 1))
    mu2, s2 = feature_statistics(random_features(250, 48, 2, shift=0.3))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its sqrtm(disp=False)
            theirs = float(calculate_frechet_distance(mu1, s1, mu2, s2))
    except TypeError:
        pytest.skip("pytorch-fid's calculate_frechet_distance does not run with this SciPy")
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(theirs, rel=1e-10)


def test_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)


def test_streaming_statistics_equal_numpy():
    f = random_features(101, 16, 3)
    stats = FeatureStatistics(16)
    for chunk in np.array_split(f, 7):
        stats.update(torch.from_numpy(chunk))
    mu, sigma = stats.statistics()
    assert stats.count == 101
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def inception_files(tmp_path_factory):
    """A random-init FID Inception saved in both accepted layouts: pytorch-fid's weight file
    (torchvision-style keys with fc) and ``InceptionV3().state_dict()`` (``blocks.*``)."""
    import pytorch_fid.inception as pfi

    torch.manual_seed(0)
    net, rename = fid_mod._build_fid_inception()
    folder = tmp_path_factory.mktemp("inception")
    wrapper = folder / "inception_v3_wrapper.pth"
    torch.save(net.state_dict(), wrapper)
    inverse = {v: k for k, v in rename.items()}
    official = {}
    for key, value in net.state_dict().items():
        prefix = ".".join(key.split(".")[:3])
        official[inverse[prefix] + key[len(prefix):]] = value
    official["fc.weight"] = torch.randn(1008, 2048)
    official["fc.bias"] = torch.zeros(1008)
    official_path = folder / "pt_inception-like.pth"
    torch.save(official, official_path)
    wrong = folder / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    return {"wrapper": wrapper, "official": official_path, "wrong": wrong, "pfi": pfi}


def test_extractor_loads_both_layouts_and_matches_pytorch_fid(inception_files):
    from unittest import mock

    images = torch.rand(2, 3, 48, 48) * 2 - 1
    ext = FIDFeatureExtractor(inception_files["official"])
    feats = ext.features(images)
    assert feats.shape == (2, 2048) and feats.dtype == np.float64
    assert ext.weights_sha256 == weights_mod.sha256_file(inception_files["official"])
    # The same weights in the other layout give the same features.
    np.testing.assert_array_equal(FIDFeatureExtractor(inception_files["wrapper"]).features(images), feats)
    # pytorch-fid's own construction path (its loader handed the same file) agrees exactly.
    pfi = inception_files["pfi"]
    state = torch.load(inception_files["official"])
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: state):
        ref = pfi.InceptionV3([3]).eval()
    with torch.no_grad():
        ref_feats = ref(torch.round((images + 1) / 2 * 255) / 255)[0].reshape(2, -1).double().numpy()
    np.testing.assert_array_equal(feats, ref_feats)


def test_extractor_rejects_a_wrong_file(inception_files, tmp_path):
    with pytest.raises(WeightsError, match="is not Inception FID weights: missing keys"):
        FIDFeatureExtractor(inception_files["wrong"])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable weight file"):
        FIDFeatureExtractor(text)
    with pytest.raises(WeightsError, match="is not a file"):
        FIDFeatureExtractor(tmp_path / "missing.pth")


def test_without_path_and_network_a_clear_error():
    with pytest.raises(WeightsError) as err:
        FIDFeatureExtractor(None)
    message = str(err.value)
    assert "--inception-weights" in message and fid_mod.FID_WEIGHTS.url in message
    assert "cannot download" in message


def test_cached_file_with_wrong_checksum_is_rejected(inception_files, tmp_path):
    cached = weights_mod.cache_dir() / fid_mod.FID_WEIGHTS.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(inception_files["official"].read_bytes())
    with pytest.raises(WeightsError, match="fails its checksum"):
        FIDFeatureExtractor(None)
