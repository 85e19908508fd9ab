import pytest
import torch
import torch.nn.functional as F

from ccfpse.nn import CCFPSEGenerator, FPSEDiscriminator
from ccfpse.nn import label_conv as lc
from ccfpse.nn.label_conv import LabelMap, label_conv


def _semantics(n, classes, h, w, edges=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    # blocky regions plus scattered single pixels: many distinct neighbourhoods
    index = torch.randint(0, classes, (n, 1, h // 3 + 1, w // 3 + 1), generator=g).double()
    index = F.interpolate(index, scale_factor=3, mode="nearest")[:, 0, :h, :w].long()
    noise = torch.rand(n, h, w, generator=g) < 0.1
    index[noise] = torch.randint(0, classes, (int(noise.sum()),), generator=g)
    onehot = F.one_hot(index, classes).permute(0, 3, 1, 2).double()
    extra = (torch.rand(n, edges, h, w, generator=g) < 0.3).double()
    return torch.cat([onehot, extra], 1)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("edges,feat_ch,bias", [(0, 0, True), (0, 5, False), (1, 4, True), (1, 0, False)])
def test_lookup_equals_the_dense_conv_with_gradients(k, edges, feat_ch, bias):
    classes, out_ch = 7, 6
    sem = _semantics(2, classes, 11, 9, edges)
    feats = torch.randn(2, feat_ch, 11, 9, dtype=torch.double, requires_grad=True) if feat_ch else None
    weight = torch.randn(out_ch, classes + edges + feat_ch, k, k, dtype=torch.double, requires_grad=True)
    b = torch.randn(out_ch, dtype=torch.double, requires_grad=True) if bias else None
    labels = LabelMap(sem, classes)
    assert labels.index is not None
    got = label_conv(weight, b, labels, feats)
    dense_in = torch.cat([sem] + ([feats] if feats is not None else []), 1)
    want = F.conv2d(dense_in, weight, b, padding=k // 2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(want)
    inputs = [t for t in (weight, b, feats) if t is not None]
    for g_got, g_want in zip(torch.autograd.grad(got, inputs, grad), torch.autograd.grad(want, inputs, grad)):
        torch.testing.assert_close(g_got, g_want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("rows", [None, (0, 4), (3, 8), (7, 11)])
@pytest.mark.parametrize("compiled", [True, False])
def test_float32_lookup_of_rows_against_float64_dense_conv(k, rows, compiled, monkeypatch):
    """float32 takes the compiled look-ups (ccfpse/csrc/lookup.c) where the library builds, and the
    PyTorch path without it; both against the dense convolution in float64, for windows of rows
    and a weight that is a slice of a larger one (the predictors read theirs so)."""
    from ccfpse import native

    if compiled and native.lib() is None:
        pytest.skip("the compiled kernels are unavailable here")
    if not compiled:
        monkeypatch.setattr(lc.native, "lib", lambda: None)
    classes, out_ch, feat_ch = 12, 19, 3
    sem = _semantics(2, classes, 11, 9, edges=1, seed=1)
    big = torch.randn(2 * out_ch, classes + 1 + feat_ch, k, k, dtype=torch.double)
    weight = big[out_ch:].float().requires_grad_()  # rows out_ch.. of a larger weight
    feats = torch.randn(2, feat_ch, 11, 9, dtype=torch.double)
    labels = LabelMap(sem.float(), classes)
    assert labels.index is not None
    got = label_conv(weight, None, labels, feats.float(), rows)
    want = F.conv2d(torch.cat([sem, feats], 1), big[out_ch:], padding=k // 2)
    if rows is not None:
        want = want[:, :, rows[0] : rows[1]]
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    grad = torch.randn(want.shape, dtype=torch.double)
    (g_got,) = torch.autograd.grad(got, weight, grad.float())
    w64 = big[out_ch:].clone().requires_grad_()
    g_want = torch.autograd.grad(F.conv2d(torch.cat([sem, feats], 1), w64, padding=k // 2)[
        :, :, slice(*rows) if rows else slice(None)], w64, grad)[0]
    torch.testing.assert_close(g_got.double(), g_want, rtol=1e-5, atol=1e-4)


def test_compiled_lookup_gives_the_pytorch_paths_values(monkeypatch):
    from ccfpse import native

    if native.lib() is None:
        pytest.skip("the compiled kernels are unavailable here")
    classes = 150
    sem = _semantics(2, classes, 40, 33, seed=2).float()
    weight = torch.randn(128, classes + 32, 3, 3, requires_grad=True)
    labels = LabelMap(sem, classes)
    grad = torch.randn(2, 128, 13, 33)

    def run():
        out = label_conv(weight[:, :classes], None, labels, None, (20, 33))
        return out, torch.autograd.grad(out, weight, grad)[0]

    out_c, g_c = run()
    monkeypatch.setattr(lc.native, "lib", lambda: None)
    out_t, g_t = run()
    torch.testing.assert_close(out_c, out_t, rtol=0, atol=2e-6)
    torch.testing.assert_close(g_c, g_t, rtol=1e-5, atol=1e-5)
    assert g_c[:, classes:].abs().max() == 0


def test_many_classes_renumber_neighbourhood_codes_without_overflow():
    classes = 183  # 184**9 > 2**62: the codes are renumbered on the way
    sem = _semantics(1, classes, 13, 12)
    weight = torch.randn(3, classes, 3, 3, dtype=torch.double)
    got = label_conv(weight, None, LabelMap(sem, classes))
    torch.testing.assert_close(got, F.conv2d(sem, weight, padding=1), rtol=1e-12, atol=1e-12)


def test_soft_labels_take_the_dense_path():
    sem = _semantics(1, 5, 8, 8)
    sem[0, :, 2, 3] = 0.2
    labels = LabelMap(sem, 5)
    assert labels.index is None
    weight = torch.randn(4, 5, 3, 3, dtype=torch.double)
    torch.testing.assert_close(label_conv(weight, None, labels), F.conv2d(sem, weight, padding=1))


def test_resized_map_is_nearest_interpolation():
    sem = _semantics(2, 6, 16, 12, edges=1)
    small = LabelMap(sem, 6).resized((5, 7))
    torch.testing.assert_close(small.dense, F.interpolate(sem, size=(5, 7), mode="nearest"))
    assert torch.equal(F.one_hot(small.index, 6).permute(0, 3, 1, 2).double(), small.dense[:, :6])


def test_generator_and_discriminator_match_their_dense_paths(monkeypatch):
    classes = 9
    sem = _semantics(2, classes, 64, 64, edges=1).float()
    torch.manual_seed(0)
    G = CCFPSEGenerator(classes + 1, ngf=4, crop_size=64, use_vae=False, predictor_hidden=8,
                        label_channels=classes).eval()
    D = FPSEDiscriminator(classes + 1, ndf=4, label_channels=classes).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fake = G(sem)
        _, preds = D(image, sem)
        monkeypatch.setattr(lc, "onehot_index", lambda onehot: None)
        torch.testing.assert_close(fake, G(sem), rtol=1e-4, atol=1e-5)
        for got, want in zip(preds, D(image, sem)[1]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
