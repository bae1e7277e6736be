"""trainer.py: the one loop of pretraining and of every classifier protocol. The lr schedule by hand;
resume after SIGKILL, SIGTERM and Ctrl-C ends with the weights of an uninterrupted run, bit for bit,
for pretrain.py and for finetune.py alike, and so do a rank killed under torchrun (torchrun restarts the
run) and SIGTERM to torchrun; two torchrun agents train as two nodes; a run resumes only with its own
flags and alone in its folder; a checkpoint of earlier versions says how to go on; undecodable videos
are counted, listed and, when too many, stop the run."""
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import augment
import cli
import eval_linear
import pretrain
import records
import trainer
from helpers import EVAL_TINY, PRETRAIN_TINY, children, free_port, run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_warmup_cosine_lr_hand_values():
    # 10 warm-up steps to 2.0, then cosine over 90 steps to 0.
    assert trainer.warmup_cosine_lr(0, 100, 10, 2.0) == 0.0
    assert trainer.warmup_cosine_lr(5, 100, 10, 2.0) == pytest.approx(1.0)
    assert trainer.warmup_cosine_lr(10, 100, 10, 2.0) == pytest.approx(2.0)
    assert trainer.warmup_cosine_lr(55, 100, 10, 2.0) == pytest.approx(1.0)  # half-way: cos(pi/2)=0
    assert trainer.warmup_cosine_lr(40, 100, 10, 2.0) == pytest.approx(1.0 + math.cos(math.pi / 3))
    assert trainer.warmup_cosine_lr(100, 100, 10, 2.0) == pytest.approx(0.0)
    # SSv2 fine-tuning: 0.08 -> 0.15 over the warm-up
    assert trainer.warmup_cosine_lr(3, 40, 6, 0.15, warmup_start_lr=0.08) == pytest.approx(0.115)


def test_schedule_steps_and_rates():
    s = trainer.Schedule(base_lr=2.0, epochs=10, iters_per_epoch=10, warmup_epochs=1.0)
    assert (s.total_steps, s.warmup_steps) == (100, 10)
    assert [s.lr(step) for step in (0, 5, 10, 100)] == pytest.approx([0.0, 1.0, 2.0, 0.0])
    ssv2 = trainer.Schedule(base_lr=0.15, epochs=40, iters_per_epoch=1, warmup_epochs=3.0, warmup_start_lr=0.08)
    assert ssv2.lr(0) == pytest.approx(0.08) and ssv2.lr(3) == pytest.approx(0.15)


# ----------------------------------------------------------------------------------------------
# Resume after SIGKILL, SIGTERM, SIGINT: pretraining and fine-tuning, one loop
# ----------------------------------------------------------------------------------------------

ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
# 18 training videos, batch 2: 9 steps per epoch cut to 8, 3 epochs, a data-loading worker. The signal
# tests send theirs at iteration 0-4 of an epoch: at least 3 steps (~0.25 s) before its end, the time the
# test has to see the step in the log and the run to handle the signal (with 6 steps, SIGTERM's 2 steps
# were once not enough in a loaded test run, and the signal landed after the last epoch).
COMMON = ["--crop_size", "32", "--num_frames", "2", "--stride", "4", "--batch_size_per_gpu", "2",
          "--num_workers", "1", "--epochs", "3", "--max_iters_per_epoch", "8", "--log_every", "1"]
JOBS = {
    "pretrain": (["pretrain.py", "--arch", "slow_tiny", "--warmup_epochs", "0", "--knn_eval", "no",
                  "--teacher_weights", "random", "--extra_ssl"], "encoder"),
    "finetune": (["finetune.py", "--dataset", "synthetic", "--device", "cpu", "--test_clips", "1",
                  "--test_crops", "1", "--eval_freq", "1"], "model"),
}


def job_argv(job, small_root, output_dir):
    argv, _ = JOBS[job]
    extra = ["--pretrained", str(small_root / "A.pth"), "--results_dir", output_dir + "_results"] if job == "finetune" else []
    return [sys.executable] + argv + COMMON + extra + ["--data_root", str(small_root / "data"),
                                                      "--output_dir", output_dir]


def _final_weights(job, output_dir):
    return torch.load(os.path.join(output_dir, "checkpoint.pth"), weights_only=True)[JOBS[job][1]]


def read_log(output_dir):
    with open(os.path.join(output_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module", params=list(JOBS))
def uninterrupted(request, small_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp(f"uninterrupted_{request.param}"))
    subprocess.run(job_argv(request.param, small_root, out), cwd=ROOT, env=ENV, check=True, capture_output=True)
    return request.param, _final_weights(request.param, out)


def _start_and_signal(argv, output_dir, sig, epoch, iteration):
    """Start a script and send `sig` once the log shows (epoch, iteration) under way."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log_path, deadline = os.path.join(output_dir, "log.jsonl"), time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(log_path) and any(r.get("epoch") == epoch and r.get("iter", -1) >= iteration
                                            and r.get("kind") == "step" for r in read_log(output_dir)):
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between the resumed and the uninterrupted run"


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(small_root, tmp_path, uninterrupted):
    job, weights = uninterrupted
    resumed = str(tmp_path / "killed")
    argv = job_argv(job, small_root, resumed)
    code, _, _ = _start_and_signal(argv, resumed, signal.SIGKILL, epoch=2, iteration=2)
    assert code == -signal.SIGKILL, "the run finished before it could be killed mid-epoch"
    assert torch.load(os.path.join(resumed, "checkpoint.pth"), weights_only=True)["epoch"] == 1
    out = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stdout
    _assert_same_weights(weights, _final_weights(job, resumed))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_a_mid_epoch_checkpoint_that_resumes_exactly(sig, small_root, tmp_path, uninterrupted):
    """SIGTERM (SLURM's notice before preemption) or Ctrl-C at a random step: the run finishes that step,
    writes a checkpoint that resumes mid-epoch, exits with one line and 128 + the signal; started
    again, it ends with the uninterrupted run's weights, bit for bit."""
    job, weights = uninterrupted
    epoch, iteration = [int(v) for v in np.random.default_rng(int(sig)).integers((1, 0), (4, 5))]
    resumed = str(tmp_path / "signalled")
    argv = job_argv(job, small_root, resumed)
    code, _, err = _start_and_signal(argv, resumed, sig, epoch, iteration)
    assert code == 128 + sig, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"stopped by {sig.name} at epoch {epoch}, iteration \d+; checkpoint written to "
                        rf"{re.escape(resumed)}: run the same command again to resume", last), last
    ckpt = torch.load(os.path.join(resumed, "checkpoint.pth"), weights_only=True)
    assert ckpt["epoch"] == epoch - 1 and ckpt["iteration"] > iteration
    out = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"iterations into epoch {epoch}" in out.stdout
    _assert_same_weights(weights, _final_weights(job, resumed))


def test_a_signal_after_the_last_steps_check_stops_before_the_closing_work(small_root, tmp_path, monkeypatch):
    """A signal handled after the last step's check (here: while the last epoch's checkpoint is written)
    was dropped: the run went on to its closing work and ended with status 0 as if not asked. It stops
    after that checkpoint, in one line; the same command then finishes the run without training again."""
    out = str(tmp_path / "late")
    argv = PRETRAIN_TINY + ["--data_root", str(small_root / "data"), "--output_dir", out, "--epochs", "2"]
    save = trainer.Trainer.save

    def save_then_signal(self, state):
        save(self, state)
        if state.epoch == 2 and state.iteration == 0:
            self.stop._handle(signal.SIGTERM, None)

    monkeypatch.setattr(trainer.Trainer, "save", save_then_signal)
    with pytest.raises(cli.Stopped) as stop:
        run_script(pretrain, argv)
    assert str(stop.value) == (f"stopped by SIGTERM after the last epoch (2); checkpoint written to {out}: run the "
                               f"same command again to finish") and stop.value.signum == signal.SIGTERM
    assert torch.load(os.path.join(out, "checkpoint.pth"), weights_only=True)["epoch"] == 2
    monkeypatch.undo()
    run_script(pretrain, argv)
    assert [r["epoch"] for r in read_log(out) if r.get("kind") == "epoch"] == [1, 2]


# ----------------------------------------------------------------------------------------------
# Under torchrun (gloo on the CPU): a rank killed and restarted, SIGTERM to torchrun, two nodes
# ----------------------------------------------------------------------------------------------

def torchrun_argv(small_root, output_dir, *torchrun_flags, script="pretrain.py"):
    """pretrain.py's job of the single-process tests on 2 ranks (4 iterations per epoch), under torchrun."""
    argv = job_argv("pretrain", small_root, output_dir)[2:] + ["--num_workers", "0"]
    return [sys.executable, "-m", "torch.distributed.run", *torchrun_flags, script] + argv


def ranks(agent):
    """{rank: pid} of the processes a torchrun agent started."""
    out = {}
    for pid in children(agent):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        except OSError:
            continue
        if b"RANK" in env:
            out[int(env[b"RANK"])] = pid
    return out


def _start_and_wait_for(argv, output_dir, epoch, iteration):
    """Start argv; returns the process once rank 0's log shows (epoch, iteration) under way."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log_path, deadline = os.path.join(output_dir, "log.jsonl"), time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(log_path) and any(r.get("epoch") == epoch and r.get("iter", -1) >= iteration
                                            and r.get("kind") == "step" for r in read_log(output_dir)):
            return proc
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"the run never reached epoch {epoch}, iteration {iteration}: {proc.communicate()[1][-3000:]}")


@pytest.fixture(scope="module")
def two_ranks(small_root, tmp_path_factory):
    """The final weights of an uninterrupted 2-rank run (a checkpoint every epoch, as the others)."""
    out = str(tmp_path_factory.mktemp("two_ranks"))
    res = subprocess.run(torchrun_argv(small_root, out, "--nproc_per_node", "2", "--master_port", str(free_port())),
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return _final_weights("pretrain", out)


@pytest.mark.slow
def test_a_rank_killed_under_torchrun_is_restarted_and_ends_with_the_uninterrupted_weights(small_root, tmp_path,
                                                                                          two_ranks):
    """torchrun --max-restarts 1, SIGKILL to one rank at a random step: torchrun stops the other and starts
    both again, the run resumes from its last checkpoint and ends with the weights of an uninterrupted
    2-rank run, bit for bit."""
    draw = np.random.default_rng(19)
    epoch, iteration, victim = int(draw.integers(2, 4)), int(draw.integers(0, 4)), int(draw.integers(0, 2))
    out = str(tmp_path / "restarted")
    argv = torchrun_argv(small_root, out, "--nproc_per_node", "2", "--master_port", str(free_port()),
                         "--max-restarts", "1", "--monitor-interval", "0.1")
    proc = _start_and_wait_for(argv, out, epoch, iteration)
    os.kill(ranks(proc.pid)[victim], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert re.search(rf"resumed from {re.escape(out)}: {epoch - 1} of 3 epochs done\n", stdout), stdout[-2000:]
    _assert_same_weights(two_ranks, _final_weights("pretrain", out))


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_at_one_step_and_resumes_exactly(small_root, tmp_path, two_ranks):
    """SIGTERM to the torchrun agent of a 2-rank run mid-epoch (what SLURM sends before preempting the
    job): torchrun passes it on, both ranks stop after the same step, one mid-epoch checkpoint is written;
    the same command resumes it and ends with the uninterrupted weights, bit for bit."""
    epoch, iteration = 2, 1
    out = str(tmp_path / "signalled")
    argv = torchrun_argv(small_root, out, "--nproc_per_node", "2", "--master_port", str(free_port()))
    proc = _start_and_wait_for(argv, out, epoch, iteration)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0
    stops = re.findall(rf"stopped by SIGTERM at epoch (\d+), iteration (\d+); checkpoint written to {re.escape(out)}: "
                       rf"run the same command again to resume", stderr)
    assert len(stops) == 2 and stops[0] == stops[1], stderr[-3000:]  # each rank, the same step
    ckpt = torch.load(os.path.join(out, "checkpoint.pth"), weights_only=False)
    assert (ckpt["epoch"] + 1, ckpt["iteration"]) == tuple(int(v) for v in stops[0]) and ckpt["iteration"] > iteration
    argv[argv.index("--master_port") + 1] = str(free_port())
    res = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{ckpt['iteration']} iterations into epoch {ckpt['epoch'] + 1}" in res.stdout
    _assert_same_weights(two_ranks, _final_weights("pretrain", out))


@pytest.mark.slow
def test_two_torchrun_agents_train_as_two_nodes(small_root, tmp_path):
    """Two torchrun agents on this machine as two nodes of one job (c10d rendezvous on localhost), one
    rank each, one shared --output_dir: the run trains and both nodes end with the same weights."""
    out = str(tmp_path / "two_nodes")
    flags = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
             f"127.0.0.1:{free_port()}", "--rdzv_id", "two_nodes"]
    argv = torchrun_argv(small_root, out, *flags, script="tests/ddp_pretrain_worker.py")
    nodes = [subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in results]
    w0, w1 = (torch.load(os.path.join(out, f"rank{r}_weights.pth")) for r in (0, 1))
    initial = torch.load(os.path.join(out, "checkpoint.pth"), weights_only=False)["initial_encoder"]
    assert any(not torch.equal(w0["encoder." + k], v) for k, v in initial.items() if "encoder." + k in w0)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"the two nodes differ in {k}"
    assert "world_size" in open(os.path.join(out, "config.json")).read() and json.load(
        open(os.path.join(out, "config.json")))["world_size"] == 2


# ----------------------------------------------------------------------------------------------
# A run resumes only what its flags describe
# ----------------------------------------------------------------------------------------------

def test_a_run_resumes_only_with_its_own_flags(small_root, tmp_path):
    out = str(tmp_path / "run")
    base = PRETRAIN_TINY + ["--data_root", str(small_root / "data"), "--output_dir", out]
    run_script(pretrain, base)
    with open(os.path.join(out, "config.json")) as f:
        config = f.read()
    changes = {"--seed 0 -> 1": ["--seed", "1"], "--crop_size 32 -> 48": ["--crop_size", "48"],
               "--num_frames 2 -> 3": ["--num_frames", "3"],
               "--teacher efficientnet_lite0 -> timm:efficientnet_b0": ["--teacher", "timm:efficientnet_b0"],
               "--arch slow_tiny -> slow_small": ["--arch", "slow_small"],
               "--teacher efficientnet_lite0 -> dino_vit_s16": ["--teacher", "dino_vit_s16"],
               "--method iboot -> rhobyol": ["--method", "rhobyol", "--num_clips", "3"],
               "--extra_ssl false -> true": ["--extra_ssl"]}
    for difference, flags in changes.items():
        with pytest.raises(ValueError) as e:
            run_script(pretrain, base + flags)
        message = str(e.value)
        assert message.startswith(f"--output_dir {out} holds a run with other settings: ") and "\n" not in message
        assert difference in message, message
        with open(os.path.join(out, "config.json")) as f:
            assert f.read() == config  # nothing was written
    run_script(pretrain, base + ["--log_every", "5", "--num_workers", "1"])  # logging flags may change


def as_written_before_the_safe_format(ckpt):
    """A run checkpoint as the versions before checkpoints held only tensors, numbers, strings, lists and
    dicts wrote it: each rank's random state as random.getstate() and np.random.get_state() return
    them (a tuple, and a tuple holding a numpy array)."""
    def legacy(state):
        version, internal, gauss_next = state["python"]
        n = state["numpy"]
        return dict(state, python=(version, tuple(internal), gauss_next),
                    numpy=(n["bit_generator"], np.array(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"],
                           n["cached_gaussian"]))
    return dict(ckpt, random_state=[legacy(s) for s in ckpt["random_state"]])


def test_a_checkpoint_of_earlier_versions_says_how_to_go_on_and_trust_converts_it(small_root, tmp_path, capsys):
    """A run whose checkpoint an earlier version wrote (a full pickle) stops with one line that says how
    to go on; with --trust_checkpoint once it resumes, ends with the weights of an uninterrupted run and
    leaves a checkpoint that loads safely, so that the plain command resumes from then on."""
    full, old = str(tmp_path / "uninterrupted"), tmp_path / "earlier"
    base = PRETRAIN_TINY + ["--data_root", str(small_root / "data"), "--epochs", "2"]
    run_script(pretrain, base + ["--output_dir", full, "--saveckp_freq", "1"])
    after_epoch_1 = torch.load(os.path.join(full, "checkpoint_0001.pth"), weights_only=True)
    old.mkdir()
    torch.save(as_written_before_the_safe_format(after_epoch_1), old / "checkpoint.pth")
    capsys.readouterr()
    with pytest.raises(cli.SetupError) as e:
        run_script(pretrain, base + ["--output_dir", str(old)])
    assert str(e.value) == (
        f"--output_dir {old} holds checkpoint.pth in the format of earlier iboot versions, which loads only with "
        f"full unpickling (it asks for {e.value.names[0]} and 2 other globals), and so could run code. To go on: "
        f"start the run in another --output_dir, or, if you wrote this checkpoint, run the same command once with "
        f"--trust_checkpoint: the run resumes and its checkpoints load safely from then on")
    assert all(name.startswith("numpy.") for name in e.value.names)
    assert sorted(os.listdir(old)) == [".lock", "checkpoint.pth"]  # nothing written but the lock
    run_script(pretrain, base + ["--output_dir", str(old), "--trust_checkpoint"])
    captured = capsys.readouterr()
    assert captured.err.count("warning: --trust_checkpoint: loading") == 1 and "1 of 2 epochs done" in captured.out
    assert f"{old / 'checkpoint.pth'} rewritten in the format that loads without --trust_checkpoint" in captured.out
    resumed = torch.load(old / "checkpoint.pth", weights_only=True)
    _assert_same_weights(torch.load(os.path.join(full, "checkpoint.pth"), weights_only=True)["encoder"],
                         resumed["encoder"])
    run_script(pretrain, base + ["--output_dir", str(old)])  # --trust_checkpoint is not part of the run's flags
    assert "2 of 2 epochs done" in capsys.readouterr().out


@pytest.mark.slow
def test_a_second_run_in_the_same_folder_stops_before_writing_anything(small_root, tmp_path):
    """Two runs with the same flags and --output_dir (a requeued job whose old allocation is still
    finishing, a table script launched twice): the second names the folder and the first run's pid and
    host, and stops (status 2) without writing; the first goes on. Once the first is SIGKILLed the
    folder is free at once."""
    out = str(tmp_path / "run")
    argv = job_argv("pretrain", small_root, out) + ["--epochs", "100"]
    first = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None and not (
                os.path.isfile(os.path.join(out, "log.jsonl")) and any(r.get("kind") == "step" for r in read_log(out))):
            time.sleep(0.05)
        config = open(os.path.join(out, "config.json")).read()
        second = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        last = second.stderr.strip().splitlines()[-1]
        assert re.fullmatch(rf"error: --output_dir {re.escape(out)} is in use by another run \(pid {first.pid} on "
                            rf"{re.escape(socket.gethostname())} since [0-9: -]+\); wait for it to end or stop it, "
                            rf"or pass another --output_dir", last), last
        assert first.poll() is None, "the first run stopped"
        assert open(os.path.join(out, "config.json")).read() == config
    finally:
        first.kill()
        first.communicate()
    records.lock_output_dir(out)  # SIGKILLed: nothing stale


def test_an_evaluation_resumes_only_its_own_model(small_root, capsys):
    out = str(small_root / "linear_default_folder")
    common = EVAL_TINY + ["--data_root", str(small_root / "data"), "--output_dir", out, "--results_dir", str(small_root / "res"),
                     "--epochs", "1", "--max_iters_per_epoch", "1"]
    run_script(eval_linear, ["--pretrained", str(small_root / "A.pth")] + common)
    capsys.readouterr()
    with pytest.raises(ValueError, match=rf"--output_dir {out} holds a run with other settings: --pretrained "
                                         rf"{small_root / 'A.pth'} \(.*\) -> {small_root / 'B.pth'} \("):
        run_script(eval_linear, ["--pretrained", str(small_root / "B.pth")] + common)
    assert "resumed" not in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Undecodable videos: counted and listed; a bug is not a bad video
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_undecodable_videos_are_listed_once_with_their_reason(small_root, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "broken.mp4").write_bytes(b"not a video " * 20)
    rows = "path,label\n" + "".join(f"{os.path.join(small_root, 'data', p)},{y}\n" for p, y in [
        line.split(",") for line in (small_root / "data" / "train.csv").read_text().splitlines()[1:]])
    (mixed / "train.csv").write_text(rows + "broken.mp4,0\n")
    out = tmp_path / "run"
    run_script(pretrain, PRETRAIN_TINY + ["--dataset", "csv", "--data_root", str(mixed), "--output_dir", str(out),
                                     "--epochs", "2", "--max_iters_per_epoch", "0", "--max_skip_share", "0.1"])
    listed = (out / "skipped_videos.txt").read_text().splitlines()
    assert listed == [f"{mixed / 'broken.mp4'}\tInvalidDataError: " + listed[0].split("InvalidDataError: ")[1]]
    epochs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()
              if json.loads(line).get("kind") == "epoch"]
    assert [r["skipped_videos"] for r in epochs] == [1, 1]


def test_undecodable_runs_stop_and_bugs_are_not_bad_videos(small_root, tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(8):
        (broken / f"v{i}.mp4").write_bytes(b"not a video " * 20)
    (broken / "train.csv").write_text("path,label\n" + "".join(f"v{i}.mp4,{i % 2}\n" for i in range(8)))
    out = tmp_path / "all_broken"
    with pytest.raises(ValueError, match=r"8 of 8 videos \(100.0%\) of epoch 1 could not be decoded, more than "
                                         r"--max_skip_share 0.05; first: .*v\d.mp4 \(InvalidDataError"):
        run_script(pretrain, PRETRAIN_TINY + ["--dataset", "csv", "--data_root", str(broken), "--output_dir", str(out),
                                         "--max_iters_per_epoch", "0", "--num_clips", "2"])
    assert not os.path.exists(out / "checkpoint.pth")  # no untrained checkpoint
    # A bug in the pipeline (here a TypeError in the crop) surfaces; it is not counted as a bad video.
    def buggy_crop(*args, **kwargs):
        raise TypeError("a bug, not a bad video")
    monkeypatch.setattr(augment, "random_short_side_crop", buggy_crop)
    with pytest.raises(TypeError, match="a bug, not a bad video"):
        run_script(pretrain, PRETRAIN_TINY + ["--data_root", str(small_root / "data"), "--output_dir", str(tmp_path / "bug")])
