"""records.py: result files, progress lines without a terminal, the config record, one run per folder."""
import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_write_result_one_file_per_record(tmp_path):
    rec = dict(run="iboot_clip", dataset="ucf101", split="1", metric="top1", value=92.6)
    path = records.write_result(str(tmp_path), rec)
    assert json.load(open(path))["value"] == 92.6
    records.write_result(str(tmp_path), dict(rec, value=93.0))  # same cell: replaced, not duplicated
    assert len(os.listdir(tmp_path)) == 1


def test_progress_without_a_terminal_prints_plain_lines_every_log_every(capsys):
    """In a SLURM .out file (stderr not a terminal) progress is one plain line every log_every
    iterations and at the end, with no carriage returns."""
    progress = records.Progress(total=7, desc="epoch 1/2", log_every=3)
    for i in range(7):
        progress.update(loss=f"{i:.1f}")
    progress.close()
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split(" |")[0] for line in lines] == ["epoch 1/2 [3/7] loss 2.0", "epoch 1/2 [6/7] loss 5.0",
                                                        "epoch 1/2 [7/7] loss 6.0"]
    assert "\r" not in captured.out + captured.err


def test_config_records_code_packages_and_command(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pretrain.py", "--epochs", "3", "--teacher", "a b"])
    records.save_config(argparse.Namespace(epochs=3, teacher="a b"), str(tmp_path))
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    env = config["environment"]
    assert config["epochs"] == 3
    assert env["command"].endswith("pretrain.py --epochs 3 --teacher 'a b'")
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert env["git_commit"].split("+")[0] == (head or "unknown")
    assert env["versions"]["torch"] == torch.__version__ and set(env["versions"]) >= {"timm", "open_clip_torch", "av"}
    assert env["world_size"] == 1


# ----------------------------------------------------------------------------------------------
# One run per output folder
# ----------------------------------------------------------------------------------------------

HOLD_LOCK = ("import sys, time; sys.path.insert(0, sys.argv[1]); import records; "
             "records.lock_output_dir(sys.argv[2]); print('locked', flush=True); time.sleep(600)")


def test_a_folder_held_by_another_process_is_refused_and_freed_when_it_is_killed(tmp_path):
    """The lock is the kernel's: a process that holds it names itself (pid and host) to a second one,
    and once SIGKILLed leaves no stale lock behind."""
    folder = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, ROOT, folder], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError) as e:
            records.lock_output_dir(folder)
        assert str(e.value).startswith(f"--output_dir {folder} is in use by another run (pid {holder.pid} on "
                                       f"{socket.gethostname()} since ")
        assert str(e.value).endswith("); wait for it to end or stop it, or pass another --output_dir")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    records.lock_output_dir(folder)  # at once: nothing stale
    records.lock_output_dir(folder)  # and again: this process holds it already
    assert open(os.path.join(folder, ".lock")).read().startswith(f"pid {os.getpid()} on ")


def test_sha256_of_a_file_and_of_its_first_megabyte(tmp_path):
    blob = os.urandom(3 << 20)
    (tmp_path / "b").write_bytes(blob)
    assert records.sha256_file(str(tmp_path / "b"), 1 << 20) == hashlib.sha256(blob[: 1 << 20]).hexdigest()
    assert records.sha256_file(str(tmp_path / "b")) == hashlib.sha256(blob).hexdigest()
