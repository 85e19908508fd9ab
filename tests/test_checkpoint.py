import pytest
import torch

from ccfpse.train import checkpoint as ckpt


def test_pruning_keeps_the_newest_k_and_best_and_removes_half_written_files(tmp_path):
    for step in (2, 4, 6, 8, 10):
        ckpt.save_checkpoint(tmp_path, step, {"x": torch.tensor(step)})
    ckpt.atomic_save({"x": torch.tensor(0)}, tmp_path / "checkpoints" / "best.pt")
    folder = tmp_path / "checkpoints"
    (folder / ".step_000000012.pt.abcd.tmp").write_bytes(b"half")  # saves killed half-way
    (folder / ".best.pt.efgh.tmp").write_bytes(b"half")
    ckpt.prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "step_000000008.pt", "step_000000010.pt"]
    assert ckpt.latest_checkpoint(tmp_path) == folder / "step_000000010.pt"


def test_a_failed_save_leaves_neither_a_partial_file_nor_its_temporary(tmp_path):
    target = tmp_path / "checkpoints" / "step_000000001.pt"
    ckpt.atomic_save({"x": torch.tensor(1)}, target)
    before = target.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        ckpt.atomic_save({"x": Unpicklable()}, target)
    assert target.read_bytes() == before  # the old checkpoint is untouched
    assert [p.name for p in target.parent.iterdir()] == [target.name]
