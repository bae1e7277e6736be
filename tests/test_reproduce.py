"""reproduce/: plan.py (the runs of every table), common.sh and the table scripts (full-scale commands
and smoke runs), collect.py, figure2.py.

The smoke runs train and evaluate for real (CPU, synthetic videos, slow_tiny, random-init teachers).
By default all eleven table scripts run, in one shared folder as a user would (about 5 minutes on
an idle 2-core CPU), followed by a re-run of the first one (shared runs are reused, nothing retrains);
IBOOT_SMOKE_TABLES="1,5,9" runs only those tables while developing.
"""
import json
import os
import re
import shlex
import subprocess
import sys

import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "reproduce"))
import collect  # noqa: E402
import plan  # noqa: E402
from helpers import free_port  # noqa: E402

TABLES = list(range(1, 12))


def run_table(n, env_extra, timeout=1800):
    env = dict(os.environ, HF_HUB_OFFLINE="1", **env_extra)
    return subprocess.run(["bash", os.path.join(ROOT, "reproduce", f"table{n}.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Full-scale commands: what plan.py lists, and common.sh launching it (DRY_RUN: printed, not run)
# ---------------------------------------------------------------------------------------------

FULL_ENV = dict(RUNS="/r", RESULTS="/res", GPUS_PER_NODE="4", NNODES="2", IMAGENET_R50="/w/byol_r50.pth",
                RHOBYOL_CKPT="/w/SLOW_8x8_R50_BYOL.pkl")


def flag_values(command):
    """{flag: value} of a command line (the last value of a repeated flag, as argparse keeps it)."""
    words, out = shlex.split(command), {}
    for i, w in enumerate(words):
        if w.startswith("--"):
            out[w[2:]] = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else True
    return out


@pytest.fixture(scope="module")
def full_scale():
    env = plan.environment(FULL_ENV)
    return {n: [shlex.join(cmd) for _, cmd in plan.table_steps(n, env)] for n in TABLES}


def test_full_scale_commands_keep_the_global_batch_and_the_papers_protocols(full_scale):
    pre = [flag_values(c) for cmds in full_scale.values() for c in cmds if c.startswith("pretrain.py")]
    for f in pre:
        # 2 nodes x 4 GPUs: 104 = 8 x 13 per GPU (ablations), 416 = 8 x 52 (32-GPU rows of the paper)
        assert int(f["batch_size_per_gpu"]) * 8 == int(re.search(r"_b(\d+)$", f["output_dir"]).group(1)), f
        assert f["epochs"] == ("200" if "_e200_" in f["output_dir"] else "100")
        # rhoBYOL with PySlowFast's BYOL_SlowR50_8x8.yaml augmentation unless the name says otherwise
        recipe = "paper" if f["method"] == "iboot" or "paperaug" in f["output_dir"] else "pyslowfast_byol"
        assert f["augmentation"] == recipe, f
    table1 = [flag_values(c) for c in full_scale[1] if c.startswith("pretrain.py")]
    assert {(f.get("teacher"), "no_temporal_pool" in f) for f in table1 if f["method"] == "iboot"} == {
        ("swav_r50w2", True), ("dino_vit_b16", True), ("clip_vit_b16", True), ("deit_b16", True)}
    inflated = [flag_values(c) for c in full_scale[9] if "--init" in c]
    assert len(inflated) == 1 and (inflated[0]["init"], inflated[0]["inflation"]) == ("/w/byol_r50.pth", "mean")
    assert any(flag_values(c).get("pretrained") == "/w/SLOW_8x8_R50_BYOL.pkl" for c in full_scale[11])
    assert {flag_values(c)["fraction"] for c in full_scale[11] if c.startswith("semisup.py")} == {"1", "10"}
    # Section 4.2: UCF/HMDB 196 epochs, global batch 128 (16 on each of 8 GPUs), lr 0.0025, 10x3 views;
    # PySlowFast where the paper is silent (finetune_ucf_Slow_R50_syn8.yaml: dropout 0.8, colour jitter).
    ucf = [flag_values(c) for c in full_scale[1] if "--dataset ucf101" in c][0]
    assert {k: ucf[k] for k in ("epochs", "batch_size_per_gpu", "lr", "test_clips", "test_crops", "dropout",
                                "train_jitter")} == dict(epochs="196", batch_size_per_gpu="16", lr="0.0025",
                                                         test_clips="10", test_crops="3", dropout="0.8",
                                                         train_jitter="pyslowfast")
    # SSv2: Table 10's "3 v" = 1 clip x 3 crops, at 8x8 and 16x8 frames; finetune_SSv2_Slow_R50_syn8.yaml
    ssv2 = {flag_values(c)["run_name"].split("__")[1]: flag_values(c) for c in full_scale[10] if "ssv2" in c}
    assert set(ssv2) == {"ssv2", "ssv2_3v", "ssv2_16x8"}
    assert all((f["dropout"], f["train_jitter"], f["test_clips"]) == ("0.5", "none", "1") for f in ssv2.values())
    assert [ssv2[e]["test_crops"] for e in ("ssv2", "ssv2_3v", "ssv2_16x8")] == ["1", "3", "3"]
    assert ssv2["ssv2_16x8"]["num_frames"] == "16"


def test_every_table_row_is_trained_and_evaluated_and_shared_runs_are_shared(full_scale):
    trained = {n: {os.path.basename(flag_values(c)["output_dir"]) for c in cmds if c.startswith("pretrain.py")}
               for n, cmds in full_scale.items()}
    evaluated = {n: {flag_values(c)["run_name"].split("__")[0] for c in cmds if "--run_name" in c}
                 for n, cmds in full_scale.items()}
    for n in TABLES:
        for label, run, _, _ in plan.table_rows(n):
            if run is None:
                continue
            assert run.name in evaluated[n], f"table {n}, row {label}: {run.name} is not evaluated"
            if isinstance(run, plan.Pretraining):
                assert run.name in trained[n], f"table {n}, row {label}: {run.name} is not trained"
    # The same run directory (trained once, then reused) serves several tables.
    assert all(plan.CLIP_200.name in trained[n] for n in (6, 9, 10, 11))
    assert all(plan.CLIP_NOPOOL.name in trained[n] for n in (1, 2, 3, 4))
    assert all(plan.CLIP_DEFAULT.name in trained[n] for n in (4, 5, 6, 7, 8))


def test_a_global_batch_that_does_not_divide_over_the_gpus_stops_the_plan():
    """104 clips on 6 GPUs would be 108 (rounded up) under a run named b104: the plan stops instead, naming
    the way out; BATCH_PER_GPU is the user's explicit choice."""
    env = plan.environment(dict(FULL_ENV, GPUS_PER_NODE="3", NNODES="2"))
    with pytest.raises(ValueError, match=r"^the paper's global batch 104 does not divide over 6 GPUs: use a GPU "
                                         r"count that divides it, or set BATCH_PER_GPU"):
        plan.per_gpu_batch(104, env)
    assert plan.per_gpu_batch(104, dict(env, BATCH_PER_GPU="18")) == 18
    assert plan.per_gpu_batch(104, plan.environment(dict(FULL_ENV))) == 13


def test_run_names_spell_out_their_settings():
    assert plan.CLIP_NOPOOL.name == "iboot_clip_vit_b16_nopool_slow_r50_k400_e100_b104"
    assert plan.Pretraining("rhobyol", augmentation="paper").name == "rhobyol_paperaug_slow_r50_k400_e100_b104"
    assert plan.Pretraining(num_clips=1, arch="slow_r101").name == "iboot_clip_vit_b16_nc1_slow_r101_k400_e100_b104"
    names = [run.name for n in TABLES for _, run, _, _ in plan.table_rows(n) if run is not None]
    runs = {run for n in TABLES for _, run, _, _ in plan.table_rows(n) if run is not None}
    assert len({r.name for r in runs}) == len(runs) and names  # different settings, different folders


@pytest.mark.slow
def test_common_sh_launches_torchrun_over_nodes_and_reuses_done_steps(tmp_path):
    env = dict(FULL_ENV, DRY_RUN="1", RUNS=str(tmp_path), NODE_RANK="1", MASTER_ADDR="node0")
    proc = run_table(4, env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    commands = [line[2:] for line in proc.stderr.splitlines() if line.startswith("+ ")]
    assert len(commands) == len(plan.table_steps(4, plan.environment(dict(FULL_ENV, RUNS=str(tmp_path)))))
    assert all(c.startswith("torchrun --nnodes 2 --nproc_per_node 4 --node_rank 1 --master_addr node0") for c in commands)
    bad = run_table(2, dict(env, TEACHER_WEIGHTS_DINO_VIT_B16="/w/dino.pth"), timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1] == (
        "error: set TEACHER_WEIGHTS_<NAME> for every teacher of 'dino_vit_b16+clip_vit_b16' or for none")


@pytest.mark.slow
def test_bad_input_under_torchrun_ends_with_the_ranks_one_line(tmp_path):
    """A table launched with torchrun on a data folder that is not there: the step ends with the rank's
    one line as the last thing printed (torchrun's own report above it), and a non-zero status."""
    env = dict(GPUS_PER_NODE="1", DATA="/nope", RUNS=str(tmp_path / "runs"), RESULTS=str(tmp_path / "results"),
               MASTER_PORT=str(free_port()), PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = run_table(4, env, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and lines[-1] == "error: --train_list: no such file /nope/k400/train.csv", lines[-5:]
    assert "ChildFailedError" in proc.stderr and "traceback : error: --train_list" in proc.stderr
    logs = re.search(r"error_file: (\S+/iboot_torchrun\.\w+)/", proc.stderr).group(1)
    assert not os.path.exists(logs)  # torchrun's log folder of the step is removed


# ---------------------------------------------------------------------------------------------
# The paper's numbers and collect.py on hand-made records
# ---------------------------------------------------------------------------------------------

def test_paper_numbers_cover_every_cell_and_match_the_paper():
    paper = collect.load_paper()
    for n, spec in plan.TABLES.items():
        for label, _, _ in spec["rows"]:
            for column in spec["columns"]:
                assert (n, label, column) in paper, (n, label, column)
    # Spot checks against the paper's text (Tables 1, 4, 6, 8, 10, 11).
    assert paper[(1, "iBoot / CLIP-ViT", "k-NN")] == "53.1"
    assert paper[(1, "ρBYOL / -", "UCF")] == "87.3"
    assert paper[(4, "CLIP-ViT / ✓", "HMDB")] == "68.6"
    assert paper[(6, "32×13 / 200", "UCF")] == "95.0"
    assert paper[(8, "K600", "K400 Lin. Eval.")] == "71.4"
    assert paper[(10, "iBoot / K400 / 200 / 8×8", "K400 lin.eval")] == "71.8"
    assert paper[(10, "iBoot / K400 / 200 / 8×8", "SSv2")] == "61.5 (3 v, 8×8)"
    assert paper[(11, "iBoot", "1% Labels")] == "40.1"


def write_record(folder, run, value, split="1", metric="top1", **extra):
    os.makedirs(folder, exist_ok=True)
    name = "_".join([run, *extra.values(), split, metric]).replace("/", "-") + ".json"
    with open(os.path.join(folder, name), "w") as f:
        json.dump(dict(run=run, split=split, metric=metric, value=value, **extra), f)


def test_collect_stops_on_one_evaluation_recorded_on_two_data_sets(tmp_path):
    """A smoke run's record (synthetic) beside a real one (kinetics) of the same evaluation: two files,
    as records.write_result names them by data set. Their mean is no number of either: collect stops."""
    res = str(tmp_path / "results")
    write_record(res, f"{plan.CLIP_NOPOOL.name}__knn", 10.0, dataset="synthetic")
    write_record(res, f"{plan.CLIP_NOPOOL.name}__knn", 50.0, dataset="kinetics")
    with pytest.raises(ValueError, match=rf"^{res} holds records of {plan.CLIP_NOPOOL.name}__knn on 2 data sets "
                                         r"\(kinetics, synthetic; e.g. .*\): one evaluation, one data set"):
        collect.load_results(res)


def test_collect_mini_stops_on_an_unfinished_run(tmp_path):
    """A <method>_s<seed> folder without its DONE marker (a run stopped, or left from other --seeds) never
    enters the means."""
    run = tmp_path / "iboot_s3"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps(dict(kind="epoch", epoch=1, knn_top1=40.0, seconds=1.0)) + "\n")
    with pytest.raises(ValueError, match=rf"^{run} has no DONE marker: an unfinished run"):
        collect.read_mini_runs(str(tmp_path))
    (run / "DONE").write_text("pretrain.py ...\n")
    assert list(collect.read_mini_runs(str(tmp_path))) == [("iboot", 3)]


def test_a_done_marker_stands_only_for_the_command_that_wrote_it(tmp_path):
    """common.sh's run_steps: a step whose marker holds its command is reused; a marker written by another
    command (other data or flags in the same RUNS) stops the run with one line, and runs nothing."""
    marker = tmp_path / "run" / "DONE"
    script = 'source reproduce/common.sh; LAUNCH=python; printf "%s\t%s\n" "$MARKER" "$STEP" | run_steps'

    def step(code):
        env = dict(os.environ, MARKER=str(marker), STEP=f"-c '{code}'", PYTHON=sys.executable, RUNS=str(tmp_path))
        return subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    first = step("print(7)")
    assert first.returncode == 0 and first.stdout == "7\n" and marker.read_text() == "-c 'print(7)'\n"
    again = step("print(7)")
    assert again.returncode == 0 and again.stdout == "" and "reusing run/DONE (done)" in again.stderr
    other = step("print(8)")
    assert other.returncode == 2 and other.stdout == "" and other.stderr.strip().splitlines()[-1] == (
        f"error: {marker}: this step was done by another command (the marker holds it), not by: -c 'print(8)'; "
        f"give RUNS another folder, or remove the marker to run this command")


def test_collect_places_records_averages_splits_and_marks_missing(tmp_path):
    res = str(tmp_path / "results")
    write_record(res, f"{plan.CLIP_NOPOOL.name}__knn", 12.34)
    write_record(res, f"{plan.CLIP_NOPOOL.name}__knn", 99.0, metric="top5")  # not a top-1: ignored
    for split, v in (("1", 90.0), ("2", 91.0), ("3", 95.0)):  # UCF101 3-split average: 92.0
        write_record(res, f"{plan.CLIP_200.name}__ucf_avg", v, split=split)
    write_record(res, "someone_else_run", 50.0)  # not a reproduce/ record: ignored
    out = str(tmp_path / "out")
    collect.main(["--results", res, "--runs", str(tmp_path / "none"), "--out", out, "--tables", "1,10",
                  "--no_plots"])
    t1 = pd.read_csv(os.path.join(out, "table1.csv"), dtype=str, keep_default_na=False)
    clip = t1[t1["Image model"] == "CLIP-ViT"].iloc[0]
    assert clip["k-NN ours"] == "12.3" and clip["k-NN paper"] == "53.1"
    assert clip["UCF ours"] == collect.MISSING and clip["UCF paper"] == "92.6"
    t10 = pd.read_csv(os.path.join(out, "table10.csv"), dtype=str, keep_default_na=False)
    avg = t10[t10["Method"] == "iBoot (3 splits; SSv2 16×8)"].iloc[0]
    assert avg["UCF101 ours"] == "92.0" and avg["UCF101 paper"] == "94.5 (*)"
    assert t10[t10["Method"] == "CVRL [48]"].iloc[0]["UCF101 ours"] == collect.NOT_RUN
    md = open(os.path.join(out, "table1.md")).read()
    assert "| iBoot | CLIP-ViT | 12.3 | 53.1 | — | 66.5 | — | 92.6 | — |" in md  # no run folder: no data


def write_run(runs, run, list_file, sha256, listed, found, skipped):
    """A pretraining run folder as pretrain.py leaves it: config.json with its data, log.jsonl's epochs."""
    folder = os.path.join(runs, run.name)
    os.makedirs(folder)
    data = dict(list=list_file, sha256=sha256, data_root="/data/k400", listed=listed, found=found)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(dict(epochs=100, data=dict(train=data)), f)
    with open(os.path.join(folder, "log.jsonl"), "w") as f:
        for epoch, n in ((1, 9), (2, skipped)):
            f.write(json.dumps(dict(kind="epoch", epoch=epoch, skipped_videos=n)) + "\n")


def test_collect_shows_each_rows_pretraining_list_and_says_when_they_differ(tmp_path):
    res, runs, out = str(tmp_path / "results"), str(tmp_path / "runs"), str(tmp_path / "out")
    write_record(res, f"{plan.CLIP_NOPOOL.name}__knn", 12.34)
    write_run(runs, plan.CLIP_NOPOOL, "/data/k400/train.csv", "ab" * 32, 240436, 240001, 3)
    write_run(runs, plan.DINO_NOPOOL, "/data/k400/train.csv", "ab" * 32, 240436, 240001, 2)
    collect.main(["--results", res, "--runs", runs, "--out", out, "--tables", "1", "--no_plots"])
    t1 = pd.read_csv(os.path.join(out, "table1.csv"), dtype=str, keep_default_na=False).set_index("Image model")
    assert t1.loc["CLIP-ViT", collect.DATA_COLUMN] == "train.csv abababab (240001/240436 found, 3 skipped)"
    assert t1.loc["DINO-ViT", collect.DATA_COLUMN] == "train.csv abababab (240001/240436 found, 2 skipped)"
    assert t1.loc["SwAV-R50-w2", collect.DATA_COLUMN] == collect.MISSING  # not run
    assert "different lists" not in open(os.path.join(out, "table1.md")).read()
    write_run(str(tmp_path / "runs2"), plan.CLIP_NOPOOL, "/data/k400/train.csv", "ab" * 32, 240436, 240001, 3)
    write_run(str(tmp_path / "runs2"), plan.DINO_NOPOOL, "/data/k400/train_clean.csv", "cd" * 32, 239000, 239000, 0)
    collect.main(["--results", res, "--runs", str(tmp_path / "runs2"), "--out", out, "--tables", "1", "--no_plots"])
    assert ("**Rows pretrained on different lists:** train_clean.csv cdcdcdcd (iBoot / DINO-ViT); train.csv abababab "
            "(iBoot / CLIP-ViT).") in open(os.path.join(out, "table1.md")).read()


def test_collect_stops_on_a_run_whose_config_does_not_parse(tmp_path):
    """A run's config.json cut short (a full disk) made its row's data cell "—", the mark of a run not
    started; it names the file and stops, as a result file that does not parse does."""
    res, runs, out = str(tmp_path / "results"), str(tmp_path / "runs"), str(tmp_path / "out")
    write_record(res, f"{plan.CLIP_NOPOOL.name}__knn", 12.34)
    write_run(runs, plan.CLIP_NOPOOL, "/data/k400/train.csv", "ab" * 32, 240436, 240001, 3)
    config = os.path.join(runs, plan.CLIP_NOPOOL.name, "config.json")
    with open(config, "r+") as f:
        f.truncate(20)
    with pytest.raises(ValueError, match=rf"^{re.escape(config)}: not a JSON record "):
        collect.main(["--results", res, "--runs", runs, "--out", out, "--tables", "1", "--no_plots"])


# ---------------------------------------------------------------------------------------------
# Smoke runs: the real pipeline at a tiny scale, then collect.py and the PNGs
# ---------------------------------------------------------------------------------------------

def smoke_tables():
    spec = os.environ.get("IBOOT_SMOKE_TABLES", "all")
    return TABLES if spec == "all" else [int(t) for t in spec.split(",")]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    base = tmp_path_factory.mktemp("smoke")
    env = dict(SMOKE="1", RUNS=str(base / "runs"), RESULTS=str(base / "results"))
    logs = {}
    for n in smoke_tables():
        proc = run_table(n, env)
        assert proc.returncode == 0, f"table{n}.sh failed:\n{proc.stderr[-4000:]}"
        logs[n] = proc.stderr
    rerun = run_table(smoke_tables()[0], env)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    out = base / "out"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "reproduce", "collect.py"), "--runs", env["RUNS"],
                           "--results", env["RESULTS"], "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return dict(base=base, out=out, logs=logs, rerun=rerun.stderr, env=env)


@pytest.mark.slow
def test_smoke_tables_fill_their_cells_beside_the_papers(smoke):
    for n in smoke_tables():
        md = (smoke["out"] / f"table{n}.md").read_text()
        df = pd.read_csv(smoke["out"] / f"table{n}.csv", dtype=str, keep_default_na=False)
        ours = df[[c for c in df.columns if c.endswith(" ours")]].to_numpy().ravel()
        # Every cell of a reproduced row holds a top-1 in [0, 100] (smoke mode has stand-ins for
        # IMAGENET_R50 and RHOBYOL_CKPT, so no cell stays missing).
        values = [float(v) for v in ours if v not in (collect.NOT_RUN, collect.MISSING)]
        assert collect.MISSING not in list(ours), md
        assert values and all(0.0 <= v <= 100.0 for v in values), md
        # every row trained here names the one list it was pretrained on: the synthetic set's
        trained = [r for r in df[collect.DATA_COLUMN] if r not in (collect.NOT_RUN, collect.MISSING)]
        assert trained and all(r.startswith("train.csv ") and r.endswith(" skipped)") for r in trained), md
        assert len({r.split(" (")[0] for r in trained}) == 1 and "different lists" not in md


@pytest.mark.slow
def test_smoke_shared_runs_are_not_retrained(smoke):
    assert "(done)" in smoke["rerun"] and "running " not in smoke["rerun"]
    assert "+ " not in smoke["rerun"]  # no process launched at all on the second call


@pytest.mark.slow
def test_smoke_pngs_are_written(smoke):
    names = [f"table{n}.png" for n in TABLES] + ["loss_curves.png", "knn_vs_epochs.png"]
    for name in names:
        path = smoke["out"] / name
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.slow
def test_figure2_writes_an_attention_grid(tmp_path):
    out = tmp_path / "figure2.png"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "reproduce", "figure2.py"), "--teacher", "dino_vit_s16",
                           "--teacher_weights", "random", "--video", "synthetic", "--num_frames", "2",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr
    assert "2 frames x 6 heads" in proc.stdout  # ViT-S/16: 6 heads
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_smoke_mini_fills_its_table_and_plots(tmp_path):
    """SMOKE=1 reproduce/mini.sh: iBoot and rhoBYOL for 3 seeds on the synthetic set, then collect.py's
    mini.md / mini.csv (every cell filled) and the plots."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", SMOKE="1", RUNS=str(tmp_path / "runs"), OUT=str(tmp_path / "out"))
    proc = subprocess.run(["bash", os.path.join(ROOT, "reproduce", "mini.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    df = pd.read_csv(tmp_path / "out" / "mini.csv", dtype=str, keep_default_na=False)
    assert list(df["method"]) == ["iBoot", "ρBYOL", "teacher (frame features)", "random init"]
    assert (df["seeds"].tolist(), df["epochs"].tolist()[:2]) == (["3", "3", "3", "3"], ["2", "2"])
    assert not (df == collect.MISSING).any().any() and not (df == "").any().any()
    for name in ("mini.png", "mini_monitors.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    log = [json.loads(line) for line in (tmp_path / "runs" / "mini" / "synthetic" / "rhobyol_s0" / "log.jsonl")
           .read_text().splitlines()]
    assert [r["epoch"] for r in log if r.get("kind") in ("init", "epoch")] == [0, 1, 2]
    assert all("knn_top1" in r and "feat_std" in r for r in log if r.get("kind") in ("init", "epoch"))
