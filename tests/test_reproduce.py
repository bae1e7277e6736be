"""reproduce/: the table scripts (full-scale commands and smoke runs), collect.py, figure2.py.

The smoke runs train and evaluate for real (CPU, synthetic videos, slow_tiny, random-init teachers).
By default all eleven table scripts run, in one shared folder as a user would (about 5 minutes on
an idle 2-core CPU), followed by a re-run of the first one (shared runs are reused, nothing retrains);
IBOOT_SMOKE_TABLES="1,5,9" runs only those tables while developing.
"""
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "reproduce"))
import collect  # noqa: E402

TABLES = list(range(1, 12))


def run_table(n, env_extra, timeout=1800):
    env = dict(os.environ, HF_HUB_OFFLINE="1", **env_extra)
    return subprocess.run(["bash", os.path.join(ROOT, "reproduce", f"table{n}.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Full-scale commands (DRY_RUN: printed, not run)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    runs = str(tmp_path_factory.mktemp("dry"))
    env = dict(DRY_RUN="1", RUNS=runs, GPUS_PER_NODE="4", NNODES="2", NODE_RANK="1", MASTER_ADDR="node0",
               IMAGENET_R50="/w/byol_r50.pth", RHOBYOL_CKPT="/w/SLOW_8x8_R50_BYOL.pkl")
    out = {}
    for n in TABLES:
        proc = run_table(n, env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        out[n] = [line[2:] for line in proc.stderr.splitlines() if line.startswith("+ ")]
    return runs, out


def test_full_scale_commands_use_torchrun_over_nodes_and_keep_the_global_batch(dry_runs):
    runs, commands = dry_runs
    for n, cmds in commands.items():
        assert cmds, f"table {n} printed no command"
        for c in cmds:
            assert c.startswith("torchrun --nnodes 2 --nproc_per_node 4 --node_rank 1 --master_addr node0"), c
    pre = [c for cmds in commands.values() for c in cmds if " pretrain.py " in c]
    for c in pre:
        # 2 nodes x 4 GPUs: 104 = 8 x 13 per GPU (ablations), 416 = 8 x 52 (32-GPU rows of the paper)
        per_gpu = int(re.search(r"--batch_size_per_gpu (\d+)", c).group(1))
        global_batch = int(re.search(r"_b(\d+)(?: |$)", c.split("--output_dir ")[1].split()[0] + " ").group(1))
        assert per_gpu * 8 == global_batch, c
        assert "--epochs 200" in c if "_e200_" in c else "--epochs 100" in c
    table1 = " ".join(commands[1])
    assert "--method rhobyol" in table1 and "--teacher swav_r50w2 --no_temporal_pool" in table1
    # rhoBYOL with PySlowFast's BYOL_SlowR50_8x8.yaml augmentation, and the extra run with iBoot's
    assert "rhobyol_slow_r50_k400_e100_b104 --epochs 100" in table1
    assert re.search(r"rhobyol_slow_r50_k400_e100_b104 --epochs 100 .*--augmentation pyslowfast_byol", table1)
    assert re.search(r"rhobyol_paperaug_slow_r50_k400_e100_b104 --epochs 100 .*--augmentation paper", table1)
    table9 = [c for c in commands[9] if " pretrain.py " in c and "rhobyol" in c]
    assert len(table9) == 2 and all("--augmentation pyslowfast_byol" in c for c in table9)
    assert "--init /w/byol_r50.pth --inflation mean" in " ".join(commands[9])
    assert "--pretrained /w/SLOW_8x8_R50_BYOL.pkl" in " ".join(commands[11])
    assert "--fraction 1 " in " ".join(commands[11]) and "--fraction 10 " in " ".join(commands[11])
    # Paper protocols (Section 4.2): UCF/HMDB 196 epochs, global batch 128 (16 on each of 8 GPUs),
    # lr 0.0025, 10x3 views; PySlowFast's where the paper is silent (finetune_ucf_Slow_R50_syn8.yaml:
    # dropout 0.8, colour jitter; DATA.TEST_CROP_SIZE 256, USE_OFFSET_SAMPLING False)
    ucf = [c for c in commands[1] if "--dataset ucf101" in c][0]
    assert ("--epochs 196 --batch_size_per_gpu 16 --lr 0.0025 --test_clips 10 --test_crops 3 "
            "--dropout 0.8 --train_jitter pyslowfast --test_crop_size 256 --test_spacing uniform") in ucf
    evals = [c for cmds in commands.values() for c in cmds if " pretrain.py " not in c]
    assert evals and all("--test_crop_size 256 --test_spacing uniform" in c for c in evals)
    # SSv2 (finetune_SSv2_Slow_R50_syn8.yaml, ssv2.py): segment sampling; Table 10's "3 v" = 1 clip x 3 crops
    ssv2 = {re.search(r"--run_name \S+__(\S+)", c).group(1): c for c in commands[10] if "--dataset ssv2" in c}
    assert set(ssv2) == {"ssv2", "ssv2_3v", "ssv2_16x8"}
    assert all("--sampling ssv2 --dropout 0.5 --train_jitter none" in c for c in ssv2.values())
    assert "--test_clips 1 --test_crops 1" in ssv2["ssv2"]
    assert all("--test_clips 1 --test_crops 3" in ssv2[e] for e in ("ssv2_3v", "ssv2_16x8"))
    semi = [c for c in commands[11] if "semisup.py" in c]
    assert semi and all("--dropout 0.5 --train_jitter none" in c for c in semi)


def test_every_table_row_is_trained_by_a_script_and_shared_runs_are_shared(dry_runs):
    runs, commands = dry_runs
    trained = {n: set(re.findall(r"pretrain\.py --output_dir \S+/(\S+)", " ".join(c))) for n, c in commands.items()}
    evaluated = {n: set(re.findall(r"--run_name (\S+)__", " ".join(c))) for n, c in commands.items()}
    for n in collect.TABLES:
        for label, run, _, _ in collect.table_rows(n):
            if run is None:
                continue
            assert run in evaluated[n], f"table {n}, row {label}: run {run} is not evaluated by table{n}.sh"
            if run not in ("scratch", "rhobyol_public"):
                assert run in trained[n], f"table {n}, row {label}: run {run} is not trained by table{n}.sh"
    # The same run directory (trained once, then reused) serves several tables.
    assert all(collect.CLIP_200 in trained[n] for n in (6, 9, 10, 11))
    assert all(collect.CLIP_NOPOOL in trained[n] for n in (1, 2, 3, 4))
    assert all(collect.CLIP_DEFAULT in trained[n] for n in (4, 5, 6, 7, 8))


# ---------------------------------------------------------------------------------------------
# The paper's numbers and collect.py on hand-made records
# ---------------------------------------------------------------------------------------------

def test_paper_numbers_cover_every_cell_and_match_the_paper():
    paper = collect.load_paper()
    for n, spec in collect.TABLES.items():
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


def write_record(folder, run, value, split="1", metric="top1"):
    os.makedirs(folder, exist_ok=True)
    name = f"{run}_{split}_{metric}.json".replace("/", "-")
    with open(os.path.join(folder, name), "w") as f:
        json.dump(dict(run=run, split=split, metric=metric, value=value), f)


def test_collect_places_records_averages_splits_and_marks_missing(tmp_path):
    res = str(tmp_path / "results")
    write_record(res, f"{collect.CLIP_NOPOOL}__knn", 12.34)
    write_record(res, f"{collect.CLIP_NOPOOL}__knn", 99.0, metric="top5")  # not a top-1: ignored
    for split, v in (("1", 90.0), ("2", 91.0), ("3", 95.0)):  # UCF101 3-split average: 92.0
        write_record(res, f"{collect.CLIP_200}__ucf_avg", v, split=split)
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
    assert "| iBoot | CLIP-ViT | 12.3 | 53.1 | — | 66.5 | — | 92.6 |" in md


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


def test_smoke_tables_fill_their_cells_beside_the_papers(smoke):
    for n in smoke_tables():
        md = (smoke["out"] / f"table{n}.md").read_text()
        df = pd.read_csv(smoke["out"] / f"table{n}.csv", dtype=str, keep_default_na=False)
        paper = collect.load_paper()
        for (t, label, column), value in paper.items():
            if t == n:
                assert value in md
        ours = df[[c for c in df.columns if c.endswith(" ours")]].to_numpy().ravel()
        # Every cell of a reproduced row holds a top-1 in [0, 100] (smoke mode has stand-ins for
        # IMAGENET_R50 and RHOBYOL_CKPT, so no cell stays missing).
        values = [float(v) for v in ours if v not in (collect.NOT_RUN, collect.MISSING)]
        assert collect.MISSING not in list(ours), md
        assert values and all(0.0 <= v <= 100.0 for v in values), md


def test_smoke_shared_runs_are_not_retrained(smoke):
    assert "reusing finished run" in smoke["rerun"]
    assert "pretraining " not in smoke["rerun"].replace("reusing finished run", "")
    assert "+ " not in smoke["rerun"]  # no process launched at all on the second call


def test_smoke_pngs_are_written(smoke):
    names = [f"table{n}.png" for n in TABLES] + ["loss_curves.png", "knn_vs_epochs.png"]
    for name in names:
        path = smoke["out"] / name
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_figure2_writes_an_attention_grid(tmp_path):
    out = tmp_path / "figure2.png"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "reproduce", "figure2.py"), "--teacher", "dino_vit_s16",
                           "--teacher_weights", "random", "--video", "synthetic", "--num_frames", "2",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr
    assert "2 frames x 6 heads" in proc.stdout  # ViT-S/16: 6 heads
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
