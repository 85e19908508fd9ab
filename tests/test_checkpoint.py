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


@pytest.mark.parametrize("content, reason", [
    (b"garbage\n", "the safe loader stopped at: Unsupported operand"),
    (b"", "the file is empty or cut short"),
    ("half", "cut short or damaged: its zip archive has no central directory"),
])
def test_an_unreadable_checkpoint_is_one_line_that_names_the_file_and_the_damage(tmp_path, content, reason):
    from ccfpse.errors import CheckpointError
    from ccfpse.model_io import read_training_checkpoint

    path = tmp_path / "step_000000004.pt"
    if content == "half":
        torch.save({"format": "ccfpse-train-1", "w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:3000])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_training_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable ccfpse training checkpoint") and reason in message
    # torch's advice to load with weights_only=False would run any code a hostile file holds
    assert "\n" not in message and "weights_only" not in message
