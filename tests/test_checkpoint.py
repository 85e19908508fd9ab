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


def test_atomic_text_files_replace_whole_or_not_at_all(tmp_path):
    from ccfpse.atomic import atomic_file, atomic_write_text
    from ccfpse.config import preset

    target = tmp_path / "config.json"
    preset("landscapes").save(target)
    before = target.read_text()
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target, "w") as f:
            f.write("{half")
            raise KeyboardInterrupt
    assert target.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["config.json"]
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n" and oct(target.stat().st_mode & 0o777) == "0o644"
