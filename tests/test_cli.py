"""cli.py: every bad flag value of every script is one line naming it, before anything is written;
the flags a script reads are read-only, and main() leaves the parsed args as they were; a data-loading
worker that dies ends the run within seconds in one line."""
import argparse
import copy
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import cli
import eval_knn
import eval_linear
import finetune
import pretrain
import semisup
from helpers import EVAL_TINY, PRETRAIN_TINY, children, free_port, run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRETRAIN_BAD = [("--epochs", "0"), ("--epochs", "-1"), ("--batch_size_per_gpu", "0"), ("--batch_size_per_gpu", "-2"),
                ("--base_lr", "0"), ("--base_lr", "-0.1"), ("--base_lr", "nan"), ("--base_lr", "inf"),
                ("--warmup_epochs", "-1"), ("--warmup_epochs", "1000"), ("--weight_decay", "-1e-06"),
                ("--momentum", "2.0"), ("--momentum", "-0.5"), ("--clip_grad", "-1.0"), ("--saveckp_freq", "-1"),
                ("--log_every", "0"), ("--max_iters_per_epoch", "-1"), ("--num_frames", "0"), ("--stride", "0"),
                ("--crop_size", "0"), ("--crop_size", "16"), ("--crop_size", "100000"), ("--num_workers", "-1"),
                ("--seed", "-1"), ("--num_clips", "0"), ("--num_clips", "4"), ("--split", "4"),
                ("--max_skip_share", "1.5"), ("--max_skip_share", "-0.1"), ("--num_frames", "-1"), ("--stride", "-1"),
                ("--weight_decay", "nan"), ("--momentum", "nan"), ("--momentum", "1.5"), ("--clip_grad", "nan"),
                ("--warmup_epochs", "nan"), ("--max_skip_share", "nan"), ("--base_lr", "-inf")]
KNN_BAD = [("--nb_knn", "0"), ("--nb_knn", "-5"), ("--temperature", "0.0"), ("--temperature", "-0.07"),
           ("--temperature", "nan"), ("--batch_size_per_gpu", "0"), ("--num_frames", "0"), ("--stride", "0"),
           ("--crop_size", "0"), ("--crop_size", "5000"), ("--test_clips", "0"), ("--test_crops", "2"),
           ("--test_crops", "0"), ("--num_workers", "-1"), ("--seed", "-1"), ("--log_every", "0"),
           ("--max_skip_share", "2.0"), ("--pretrain_epochs", "-1"), ("--test_clips", "-1"), ("--crop_size", "16"),
           ("--stride", "-1"), ("--num_frames", "-1"), ("--temperature", "inf"), ("--test_crop_size", "0"),
           ("--test_crop_size", "100000")]
TRAINING_BAD = [(finetune, "--dropout", "1.0"), (finetune, "--dropout", "-0.1"), (finetune, "--lr", "0.0"),
                (finetune, "--epochs", "0"), (finetune, "--eval_freq", "-1"), (finetune, "--warmup_epochs", "500.0"),
                (finetune, "--weight_decay", "-1.0"), (finetune, "--max_iters_per_epoch", "-3"),
                (semisup, "--fraction", "0.0"), (semisup, "--fraction", "150.0"), (eval_linear, "--lr", "-1.0"),
                (eval_linear, "--warmup_start_lr", "-0.5"), (finetune, "--lr", "nan"), (finetune, "--lr", "inf"),
                (finetune, "--dropout", "nan"), (finetune, "--epochs", "-1"), (finetune, "--weight_decay", "nan"),
                (finetune, "--bn_weight_decay", "-1.0"), (finetune, "--warmup_start_lr", "nan"),
                (semisup, "--fraction", "-1.0"), (semisup, "--fraction", "nan"), (semisup, "--epochs", "0"),
                (semisup, "--lr", "0.0"), (eval_linear, "--epochs", "0"), (eval_linear, "--lr", "inf"),
                (eval_linear, "--eval_freq", "-2"), (eval_linear, "--batch_size_per_gpu", "0")]
CASES = ([(pretrain, f, v) for f, v in PRETRAIN_BAD] + [(eval_knn, f, v) for f, v in KNN_BAD] + TRAINING_BAD)


@pytest.mark.parametrize("module,flag,value", CASES, ids=[f"{m.__name__}{f}={v}" for m, f, v in CASES])
def test_every_bad_flag_value_is_one_line_naming_it_before_anything_is_written(module, flag, value, small_root, tmp_path):
    out = tmp_path / "out"
    bad = [f"{flag}={value}"] if flag != "--nb_knn" else [flag, "20", value]  # one bad k among good ones
    if module is pretrain:
        argv = PRETRAIN_TINY + ["--data_root", str(small_root / "data"), "--output_dir", str(out)] + bad
    else:
        argv = ["--pretrained", "scratch", "--output_dir", str(out)] + EVAL_TINY + ["--data_root", str(small_root / "data")] + bad
    with pytest.raises(ValueError) as e:
        run_script(module, argv)
    message = str(e.value)
    assert message.startswith(f"{flag} ") and value.strip("-.0") in message and "\n" not in message, message
    assert not out.exists()


FOLDER_FLAGS = [(pretrain, "--output_dir"), (eval_knn, "--output_dir"), (eval_knn, "--results_dir"),
                (eval_knn, "--dump_features"), (finetune, "--output_dir"), (semisup, "--subset_dir")]


@pytest.mark.parametrize("module,flag", FOLDER_FLAGS, ids=[f"{m.__name__}{f}" for m, f in FOLDER_FLAGS])
@pytest.mark.parametrize("inside", [False, True], ids=["file", "inside_a_file"])
def test_a_folder_flag_naming_a_file_is_one_line(module, flag, inside, small_root, tmp_path):
    """--output_dir (or another folder flag) naming an existing file, or a path inside one, stops at
    start-up with one line naming the flag; the file is left as it was."""
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    path = str(existing / "run" if inside else existing)
    if module is pretrain:
        argv = PRETRAIN_TINY + ["--data_root", str(small_root / "data"), flag, path]
    else:
        argv = ["--pretrained", "scratch", "--output_dir", str(tmp_path / "out")] + EVAL_TINY + [
            "--data_root", str(small_root / "data"), "--results_dir", str(tmp_path / "res"), flag, path]
        argv += ["--fraction", "50"] if module is semisup else []
    with pytest.raises(ValueError) as e:
        run_script(module, argv)
    assert str(e.value) == f"{flag} {path}: must be a folder, not a file (or inside one)"
    assert existing.read_text() == "mine" and not (tmp_path / "out").exists()


def test_flags_are_read_only_and_copies_carry_new_values():
    flags = cli.freeze(argparse.Namespace(epochs=3, lr=0.1))
    with pytest.raises(AttributeError, match="--epochs"):
        flags.epochs = 4
    more = cli.freeze(flags, epochs=4)
    assert (flags.epochs, more.epochs, more.lr) == (3, 4, 0.1)


@pytest.mark.slow
@pytest.mark.parametrize("module", [pretrain, eval_knn, eval_linear, finetune, semisup])
def test_main_leaves_the_parsed_args_as_they_were(module, small_root, tmp_path):
    if module is pretrain:
        argv = PRETRAIN_TINY + ["--data_root", str(small_root / "data"), "--output_dir", str(tmp_path / "out")]
    else:
        argv = ["--pretrained", str(small_root / "A.pth"), "--output_dir", str(tmp_path / "out"), "--results_dir",
                str(tmp_path / "res")] + EVAL_TINY + ["--data_root", str(small_root / "data")]
        argv += ["--nb_knn", "3"] if module is eval_knn else ["--epochs", "1", "--max_iters_per_epoch", "1"]
        argv += ["--fraction", "50", "--subset_dir", str(tmp_path / "splits")] if module is semisup else []
    args = module.get_args_parser().parse_args(argv)
    before = copy.deepcopy(vars(args))
    module.main(args)
    assert vars(args) == before


@pytest.mark.slow
def test_under_torchrun_a_bad_flag_is_the_root_cause_of_torchruns_report(small_root, tmp_path):
    """A user's own torchrun command with a bad flag: each rank stops with the one line, which is also
    the root cause of the report torchrun prints last (its error file), not a pointer to torchrun's docs."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
            "pretrain.py"] + PRETRAIN_TINY + ["--data_root", str(small_root / "data"), "--output_dir",
                                              str(tmp_path / "out"), "--epochs", "0"]
    proc = subprocess.run(argv, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.splitlines().count("error: --epochs 0: must be >= 1") == 2  # once per rank
    assert "  traceback : error: --epochs 0: must be >= 1\n" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# A data-loading worker that dies
# ----------------------------------------------------------------------------------------------



class _Writes:
    """A stderr that records each write call."""

    def __init__(self):
        self.calls = []

    def write(self, text):
        self.calls.append(text)

    def flush(self):
        pass


@pytest.mark.parametrize("error", [ValueError("--epochs 0: must be >= 1"), cli.Stopped("stopped by SIGTERM", 15),
                                   KeyboardInterrupt()])
def test_the_one_line_is_one_write_so_ranks_sharing_a_pipe_do_not_run_together(error, monkeypatch):
    """Under torchrun the ranks share one stderr pipe; a line written in two calls (text, then newline)
    ran into the other rank's line in CI ('error: ...error: ...'). Each line is one write of text + newline."""
    writes = _Writes()
    monkeypatch.setattr(sys, "stderr", writes)
    with pytest.raises(SystemExit):
        cli._end(error, cli.WorkerWatch())
    assert len(writes.calls) == 1 and writes.calls[0].endswith("\n") and writes.calls[0].count("\n") == 1


@pytest.mark.slow
def test_a_killed_data_worker_ends_the_run_within_seconds_in_one_line(small_root, tmp_path):
    """What the kernel's OOM killer does on a long run: SIGKILL to one of pretrain.py's two data-loading
    workers in the middle of training. The run ends within seconds (no hang), with no traceback and one
    last line that names the worker, the signal, what it usually means and how to resume; no worker is
    left behind."""
    out = tmp_path / "run"
    argv = [sys.executable, "pretrain.py"] + PRETRAIN_TINY + [
        "--data_root", str(small_root / "data"), "--output_dir", str(out), "--num_workers", "2", "--epochs", "50",
        "--max_iters_per_epoch", "0", "--log_every", "1", "--monitor_videos", "0"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, log, workers = time.time() + 300, out / "log.jsonl", []
    while time.time() < deadline and proc.poll() is None and len(workers) != 2:
        time.sleep(0.02)  # mid-epoch (9 iterations each), where no worker is starting or ending
        if log.exists() and any(r.get("kind") == "step" and r["iter"] in (2, 3) for r in map(
                json.loads, log.read_text().splitlines()[-1:])):
            workers = [w for w in children(proc.pid) if open(f"/proc/{w}/stat").read().split()[2] != "Z"]
    assert len(workers) == 2, proc.communicate()[1][-2000:]
    os.kill(workers[1], signal.SIGKILL)
    killed = time.time()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running 60 s after a data worker was killed: {proc.communicate()[1][-2000:]}")
    seconds = time.time() - killed
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: a data-loading worker \(pid {workers[1]}\) was killed by SIGKILL, which usually "
                        rf"means the machine ran out of memory \(the kernel's OOM killer\): lower --num_workers or "
                        rf"--batch_size_per_gpu; run the same command again to resume from the last checkpoint",
                        last), err
    assert proc.returncode == 1 and "Traceback" not in err and "Exception ignored" not in err, err
    assert seconds < 15, seconds
    time.sleep(0.5)
    assert not os.path.exists(f"/proc/{workers[0]}") or "Z" in open(f"/proc/{workers[0]}/stat").read().split()[2]


def _stop_worker(rank, port, out_dir):
    """One of two gloo ranks; only rank 0 gets the signal. Then a collective of another kind, as the
    mid-epoch checkpoint's gather: a rank that skipped the stop's all-reduce would pair it with this one."""
    import datetime

    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=20))
    stop = cli.GracefulStop()
    if rank == 0:
        stop._handle(signal.SIGTERM, None)
    asked = [stop.requested(torch.device("cpu")) for _ in range(2)]
    gathered = [None, None]
    dist.all_gather_object(gathered, rank)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(dict(asked=asked, signum=stop.signum, gathered=gathered), f)
    dist.destroy_process_group()


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """GracefulStop.requested is a collective: every rank joins it at every step, the signalled one
    too, so all of them see the stop at once and then write one checkpoint together."""
    import torch.multiprocessing as mp
    mp.spawn(_stop_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == dict(asked=[True, True], signum=int(signal.SIGTERM), gathered=[0, 1])


def test_a_signal_handled_just_after_the_all_reduce_counts_at_the_next_step(monkeypatch):
    """The handler can run between the all-reduce's return and the answer: the other ranks reduced no
    signal, so this rank must not stop at this step either (it would wait in the checkpoint's gather while
    they train on); it stops at the next one, with them."""
    import distributed
    stop = cli.GracefulStop()

    def reduce_then_signal(value, device):
        stop._handle(signal.SIGTERM, None)  # lands after the ranks agreed on `value`
        return value

    monkeypatch.setattr(distributed, "all_reduce_max", reduce_then_signal)
    assert stop.requested(torch.device("cpu")) is False
    monkeypatch.setattr(distributed, "all_reduce_max", lambda value, device: value)
    assert stop.requested(torch.device("cpu")) is True and stop.signum == signal.SIGTERM


def test_pytorchs_words_for_a_dead_worker_name_its_pid_and_signal():
    """A worker that dies before the watch first sees it is reaped by PyTorch at once; its error names it
    (torch/csrc/DataLoader.cpp, utils/data/dataloader.py)."""
    killed = RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")
    killed.__cause__ = RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")
    assert cli._death_named_by_pytorch(killed) == (4242, -signal.SIGKILL)
    assert cli._death_named_by_pytorch(RuntimeError(
        "DataLoader worker (pid 7) is killed by signal: Bus error. It is possible that dataloader's workers are "
        "out of shared memory.")) == (7, -signal.SIGBUS)
    assert cli._death_named_by_pytorch(RuntimeError("DataLoader worker (pid 8) exited unexpectedly with exit code 3. "
                                                    "Details are lost due to multiprocessing.")) == (8, 3)
    assert cli._death_named_by_pytorch(RuntimeError("DataLoader worker (pid(s) 5, 6) exited unexpectedly")) == (5, None)
    assert cli._death_named_by_pytorch(ValueError("--epochs 0: must be >= 1")) is None
