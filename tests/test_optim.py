import copy

import pytest
import torch
import torch.nn as nn

from ccfpse import native
from ccfpse.train.optim import Adam


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))


def _loss(model: nn.Module, i: int) -> torch.Tensor:
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(i))
    return model(x).square().mean()


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for i in steps:
        opt.zero_grad(set_to_none=True)
        _loss(model, i).backward()
        opt.step()


@pytest.mark.parametrize("betas", [(0.0, 0.9), (0.5, 0.999)])
@pytest.mark.parametrize("in_backward", [False, True])
@pytest.mark.parametrize("path", ["torch", "compiled"])
def test_same_updates_as_torch_adam(betas, in_backward, path, monkeypatch):
    if path == "torch":
        monkeypatch.setenv("CCFPSE_NO_EXT", "1")
    elif native.lib() is None:
        pytest.skip("no compiled kernels here (CCFPSE_NO_EXT=1 or no C compiler)")
    ref, ours = _model(), _model()
    _train(ref, torch.optim.Adam(ref.parameters(), lr=1e-2, betas=betas), range(4))
    _train(ours, Adam(ours.parameters(), lr=1e-2, betas=betas, step_in_backward=in_backward), range(4))
    for a, b in zip(ref.parameters(), ours.parameters()):
        if path == "torch":  # the same tensor operations, bit for bit
            assert torch.equal(a, b)
        else:  # one C loop; its square root is correctly rounded, torch's is within an ulp
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compiled_step_skips_denormal_square_roots_without_changing_the_update():
    """Second moments below FLT_MIN enter the square root as zero: the same update in float32."""
    if native.lib() is None:
        pytest.skip("no compiled kernels here (CCFPSE_NO_EXT=1 or no C compiler)")
    torch.manual_seed(0)
    p = torch.randn(50_000)
    grads = torch.cat([torch.randn(25_000) * 1e-21, torch.randn(25_000)])  # squares: denormal, normal
    ref = p.clone().requires_grad_()
    ref.grad = grads.clone()
    torch_adam = torch.optim.Adam([ref], lr=1e-3, betas=(0.0, 0.9))
    torch_adam.step()
    ours = p.clone().requires_grad_()
    ours.grad = grads.clone()
    Adam([ours], lr=1e-3, betas=(0.0, 0.9)).step()
    assert bool((torch_adam.state[ref]["exp_avg_sq"][:25_000] < torch.finfo(torch.float32).tiny).all())
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-9)  # the last bit of the square root
    assert torch.equal(ours[:25_000], ref[:25_000])


def test_beta1_zero_keeps_no_first_moment_and_in_backward_frees_gradients():
    model = _model()
    opt = Adam(model.parameters(), lr=1e-3, betas=(0.0, 0.9), step_in_backward=True)
    before = [p.detach().clone() for p in model.parameters()]
    _loss(model, 0).backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(set(s) == {"step", "exp_avg_sq"} for s in opt.state.values())


def test_resumes_from_a_torch_adam_state_dict(monkeypatch):
    monkeypatch.setenv("CCFPSE_NO_EXT", "1")  # the torch path: bit-equal to torch.optim.Adam
    ref = _model()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2, betas=(0.0, 0.9))
    _train(ref, ref_opt, range(2))
    ours = copy.deepcopy(ref)
    ours_opt = Adam(ours.parameters(), lr=1e-2, betas=(0.0, 0.9), step_in_backward=True)
    ours_opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))  # as if read from a file
    _train(ref, ref_opt, range(2, 4))
    _train(ours, ours_opt, range(2, 4))
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(a, b)
    # And our own state dict round-trips.
    again = copy.deepcopy(ours)
    again_opt = Adam(again.parameters(), lr=1e-2, betas=(0.0, 0.9))
    again_opt.load_state_dict(copy.deepcopy(ours_opt.state_dict()))
    _train(ours, ours_opt, range(4, 5))
    _train(again, again_opt, range(4, 5))
    for a, b in zip(ours.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_moments_are_allocated_up_front_and_used_in_place():
    """Made with the optimiser (not amid the first backward pass), then updated in place; a
    loaded state is copied into them."""
    model = _model()
    opt = Adam(model.parameters(), lr=1e-3, betas=(0.0, 0.9), step_in_backward=True)
    made = {p: opt._fresh[p]["exp_avg_sq"].data_ptr() for p in model.parameters()}
    _loss(model, 0).backward()
    assert not opt._fresh
    assert all(opt.state[p]["exp_avg_sq"].data_ptr() == made[p] for p in model.parameters())
    other = _model()
    other_opt = Adam(other.parameters(), lr=1e-3, betas=(0.0, 0.9))
    buffers = {p: other_opt._fresh[p]["exp_avg_sq"].data_ptr() for p in other.parameters()}
    other_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for p, q in zip(other.parameters(), model.parameters()):
        assert other_opt.state[p]["exp_avg_sq"].data_ptr() == buffers[p]
        assert torch.equal(other_opt.state[p]["exp_avg_sq"], opt.state[q]["exp_avg_sq"])


def test_rejects_bad_betas():
    with pytest.raises(ValueError, match="betas"):
        Adam(_model().parameters(), betas=(1.0, 0.9))


def test_in_backward_follows_learning_rate_changes_after_loading_a_state_dict():
    ref, ours = _model(), _model()
    ref_opt = Adam(ref.parameters(), lr=1e-2, betas=(0.0, 0.9))
    ours_opt = Adam(ours.parameters(), lr=1e-2, betas=(0.0, 0.9), step_in_backward=True)
    ours_opt.load_state_dict(copy.deepcopy(ours_opt.state_dict()))
    for opt in (ref_opt, ours_opt):
        for group in opt.param_groups:
            group["lr"] = 5e-2
    _train(ref, ref_opt, range(2))
    _train(ours, ours_opt, range(2))
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(a, b)


def test_freed_memory_is_kept_on_glibc():
    import platform
    import sys

    from ccfpse.train.memory import keep_freed_memory

    ok = keep_freed_memory()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert ok
    else:
        assert ok is False


_RELEASE_SCRIPT = r"""
import torch
from ccfpse.train.memory import keep_freed_memory, release_freed_memory

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

assert keep_freed_memory()
base = rss_mib()
blocks = [torch.ones(2 * 2**20) for _ in range(40)]  # 40 x 8 MiB, below the 32 MiB mmap threshold
del blocks
kept = rss_mib()
release_freed_memory()
print(base, kept, rss_mib())
"""


def test_kept_memory_is_returned_when_training_ends():
    import platform
    import subprocess
    import sys

    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        pytest.skip("glibc's allocator settings apply on Linux with glibc only")
    out = subprocess.run([sys.executable, "-c", _RELEASE_SCRIPT], capture_output=True, text=True, check=True)
    base, kept, released = map(float, out.stdout.split())
    assert kept - base > 250  # the freed 320 MiB stayed with the process ...
    assert kept - released > 250  # ... until released


_LIBRARY_PAGES_SCRIPT = r"""
import torch
from ccfpse.train.memory import release_library_pages

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

before = rss_mib()
released = release_library_pages() / 2**20
after = rss_mib()
# torch still works, the CUDA parts included: whatever it touches again reads back from the files
x = torch.randn(2, 3, 16, 16, requires_grad=True)
y = torch.nn.functional.conv2d(x, torch.randn(4, 3, 3, 3), padding=1)
(y.square().mean() + (x.flatten(1) @ x.flatten(1).T).sum()).backward()
assert torch.isfinite(x.grad).all()
torch.cuda.is_available()
print(before, released, after)
"""


def test_the_libraries_read_only_pages_are_handed_back():
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/smaps: Linux only")
    out = subprocess.run([sys.executable, "-c", _LIBRARY_PAGES_SCRIPT], capture_output=True, text=True, check=True)
    before, released, after = map(float, out.stdout.split())
    assert released > 10  # MiB: libtorch_cpu's code alone has more resident after import torch
    assert before - after > 0.9 * released


def test_only_unmodified_read_only_file_pages_are_released():
    from ccfpse.train.memory import _releasable

    clean = {"perms": "r-xp", "path": "/venv/nvidia/cu13/lib/libcublasLt.so.13", "Rss": 4096,
             "Private_Dirty": 0, "Shared_Dirty": 0, "Anonymous": 0, "Swap": 0}
    assert _releasable(clean)
    assert _releasable({**clean, "path": "/venv/torch/lib/libtorch_cpu.so", "perms": "r--p"})
    assert not _releasable({**clean, "Private_Dirty": 4096})  # relocated: reading back would undo it
    assert not _releasable({**clean, "Anonymous": 4096})
    assert not _releasable({**clean, "perms": "rw-p"})
    assert not _releasable({**clean, "perms": "r-xs"})
    for path in ("", "[vdso]", "[heap]", "/dev/zero", "/memfd:buffer (deleted)", "/tmp/lib.so (deleted)"):
        assert not _releasable({**clean, "path": path})
    assert not _releasable({k: v for k, v in clean.items() if k != "Private_Dirty"})  # unknown: kept
    assert not _releasable({**clean, "Rss": 0})
