"""checkpoint.py: atomic files, run fingerprints and resume checks, weight-file formats."""
import os

import pytest
import torch

import checkpoint


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    checkpoint.save({"epoch": 1, "w": torch.ones(3)}, str(path))
    assert checkpoint.load(str(path))["epoch"] == 1

    real_save = torch.save

    def crash_half_way(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"epoch": 2}, str(path))
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoint.load(str(path))["epoch"] == 1  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["checkpoint.pth"]  # and no temporary file is left behind


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        checkpoint.load(str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        checkpoint.load(str(bad))


def test_files_get_the_permissions_the_umask_gives(tmp_path):
    """Checkpoints are readable by the group like any file the user creates (mkstemp alone gives 0600)."""
    old = os.umask(0o027)
    try:
        checkpoint.save({"a": 1}, str(tmp_path / "c.pth"))
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "c.pth").st_mode & 0o777 == 0o640 == os.stat(tmp_path / "plain.txt").st_mode & 0o777


def test_disk_full_leaves_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    import errno
    import cli
    path = tmp_path / "checkpoint.pth"
    checkpoint.save({"epoch": 1}, str(path))

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:  # torch.save reports a failed write as a RuntimeError
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from e

    monkeypatch.setattr(torch, "save", full_disk)
    message = f"no space left on the device of {tmp_path}.*previous checkpoint is intact"
    with pytest.raises(cli.SetupError, match=message):
        checkpoint.save({"epoch": 2}, str(path))
    monkeypatch.undo()
    assert checkpoint.load(str(path))["epoch"] == 1 and os.listdir(tmp_path) == ["checkpoint.pth"]


def test_fingerprint_ignores_logging_flags_and_names_every_difference(tmp_path):
    import argparse
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"0123")
    a = argparse.Namespace(arch="slow_tiny", seed=0, log_every=10, output_dir="x", pretrained=str(weights))
    b = argparse.Namespace(arch="slow_small", seed=1, log_every=1, output_dir="y", pretrained=str(weights))
    fa = checkpoint.run_fingerprint(a, files=("pretrained",))
    assert fa["pretrained"]["size"] == 4 and len(fa["pretrained"]["sha256"]) == 64
    assert "log_every" not in fa and "output_dir" not in fa
    diff = checkpoint.fingerprint_difference(fa, checkpoint.run_fingerprint(b, files=("pretrained",)))
    assert diff == "--arch slow_tiny -> slow_small; --seed 0 -> 1"
    weights.write_bytes(b"0124")  # same path and size, other content
    diff = checkpoint.fingerprint_difference(fa, checkpoint.run_fingerprint(a, files=("pretrained",)))
    assert diff.startswith("--pretrained ") and "sha256" in diff


def test_resume_refuses_another_run_and_removes_stale_temporaries(tmp_path):
    import argparse
    args = argparse.Namespace(arch="slow_tiny", seed=0)
    fp = checkpoint.run_fingerprint(args)
    checkpoint.save_run(str(tmp_path), dict(epoch=1, fingerprint=fp))
    (tmp_path / ".tmp_abc123.pth").write_bytes(b"half a checkpoint")
    assert checkpoint.resume_run(str(tmp_path), fp)["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth"]
    with pytest.raises(ValueError, match=f"--output_dir {tmp_path} holds a run with other settings: --seed 0 -> 1"):
        checkpoint.resume_run(str(tmp_path), checkpoint.run_fingerprint(argparse.Namespace(arch="slow_tiny", seed=1)))
    assert checkpoint.resume_run(str(tmp_path / "empty"), fp) is None


def test_detect_format_of_each_weights_file():
    conv2d, conv3d = torch.zeros(4, 3, 7, 7), torch.zeros(4, 3, 1, 7, 7)
    assert checkpoint.detect_format({"encoder": {"conv1.weight": conv3d}}) == "iboot"
    assert checkpoint.detect_format({"model_state": {}}) == "pyslowfast"
    assert checkpoint.detect_format({"module.backbone.s1.pathway0_stem.conv.weight": conv3d}) == "pyslowfast"
    assert checkpoint.detect_format({"state_dict": {"module.conv1.weight": conv2d}}) == "torchvision"
    assert checkpoint.detect_format({"conv1.weight": conv3d}) == "raw"
    with pytest.raises(ValueError, match="odd.pth: unknown weights format"):
        checkpoint.detect_format({"foo": conv2d}, "odd.pth")
    assert checkpoint.strip_prefix({"module.a": 1, "b": 2}, "module.") == {"a": 1, "b": 2}
