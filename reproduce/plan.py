"""Every run of the paper's tables, declared once: what reproduce/tableN.sh launches and what
reproduce/collect.py places in each cell.

    python reproduce/plan.py --table 4            the steps of Table 4, one per line: done-marker TAB command
    python reproduce/plan.py --mini --data_root D the CPU-scale comparison of reproduce/mini.sh
    TABLES                                        each table: title, label columns, {column: evaluation},
                                                  rows (label, run, overrides), extra rows, k-NN curves
    Pretraining(...).name / .flags(env)           a pretraining run: its folder name spells out its settings
    EVALUATIONS / evaluation_flags(ev, env)       each evaluation protocol, with the numbers of protocols.py

A pretraining run lives in $RUNS/<name>, named after its flags (iboot_clip_vit_b16_nopool_slow_r50_k400_
e100_b104), so a run that several tables share (the CLIP and DINO rows of Tables 1-4, the 200-epoch
CLIP run of Tables 6, 9, 10 and 11) trains once: its step is done when $RUNS/<name>/DONE holds its command. Every
evaluation writes one JSON record into $RESULTS named "<run>__<evaluation>" (done:
$RUNS/<run>/evals/<evaluation>.done), which is all collect.py needs. The environment
(reproduce/common.sh sets the defaults) says where the data and the weights are and how many GPUs run:
RUNS, RESULTS, DATA (K400, K600, UCF101, HMDB51, SSV2), GPUS_PER_NODE x NNODES, BATCH_PER_GPU,
TEACHER_WEIGHTS_<NAME>, IMAGENET_R50, RHOBYOL_CKPT, SMOKE (CPU, synthetic videos, tiny sizes).
"""
import argparse
import dataclasses
import os
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import knn  # noqa: E402  (the paper's k)
import protocols  # noqa: E402  (the evaluation protocols of Section 4.2)

# ----------------------------------------------------------------------------------------------
# Pretraining runs (Section 4.1: 100 epochs, global batch 13 x 8 = 104 for the ablations; 200 epochs,
# 13 x 32 = 416 for Tables 6, 9, 10, 11)
# ----------------------------------------------------------------------------------------------

PER_GPU_BATCH = 13  # the paper's clips per V100


@dataclasses.dataclass(frozen=True)
class Pretraining:
    """One pretrain.py run; every field that differs from the default shows in its name."""
    method: str = "iboot"
    teacher: str = "clip_vit_b16"
    arch: str = "slow_r50"
    data: str = "k400"
    epochs: int = 100
    batch: int = 104
    temporal_pool: bool = True
    extra_ssl: bool = False
    num_clips: int = None
    augmentation: str = None  # None: the method's own (paper for iboot, PySlowFast's pyslowfast_byol for rhobyol)
    inflated: bool = False    # start from $IMAGENET_R50, inflated (Table 9)

    @property
    def name(self):
        parts = [self.method]
        if self.method == "iboot":
            parts.append(self.teacher.replace("+", "-").replace(":", "-"))
        if self.augmentation:
            parts.append(f"{self.augmentation.replace('_', '')}aug")
        parts += ["nopool"] * (not self.temporal_pool) + ["ssl"] * self.extra_ssl
        parts += [f"nc{self.num_clips}"] if self.num_clips else []
        parts += ["inflated"] * self.inflated
        return "_".join(parts + [self.arch, self.data, f"e{self.epochs}", f"b{self.batch}"])

    def flags(self, env):
        augmentation = self.augmentation or ("paper" if self.method == "iboot" else "pyslowfast_byol")
        flags = ["--arch", self.arch, "--method", self.method, "--augmentation", augmentation]
        if self.method == "iboot":
            flags += ["--teacher", self.teacher] + teacher_weights(self.teacher, env)
        flags += ["--no_temporal_pool"] * (not self.temporal_pool) + ["--extra_ssl"] * self.extra_ssl
        flags += ["--num_clips", str(self.num_clips)] if self.num_clips else []
        flags += ["--init", env["IMAGENET_R50"], "--inflation", "mean"] if self.inflated else []
        return flags


@dataclasses.dataclass(frozen=True)
class Weights:
    """Weights not trained here: "scratch" (the supervised rows) or a published checkpoint from an
    environment variable, with the record fields its file does not tell."""
    name: str
    env_var: str = None
    record: tuple = ()
    arch: str = "slow_r50"


RHOBYOL_100 = Pretraining("rhobyol", augmentation=None)
CLIP_NOPOOL = Pretraining(temporal_pool=False)
DINO_NOPOOL = Pretraining(teacher="dino_vit_b16", temporal_pool=False)
CLIP_DEFAULT = Pretraining()
CLIP_200 = Pretraining(epochs=200, batch=416)
SCRATCH = Weights("scratch")
RHOBYOL_PUBLIC = Weights("rhobyol_public", "RHOBYOL_CKPT", ("--method", "rhobyol", "--teacher", "-",
                                                             "--pretrain_data", "k400", "--pretrain_epochs", "200"))

# ----------------------------------------------------------------------------------------------
# Evaluations (Section 4.2; protocols.py holds the numbers and PySlowFast's where the paper is silent)
# ----------------------------------------------------------------------------------------------

# evaluation -> (script, data set, root variable, protocol, extra flags)
EVALUATIONS = {
    "knn": ("eval_knn.py", "kinetics", "K400", protocols.KNN, ["--nb_knn", str(knn.K)]),
    "linear": ("eval_linear.py", "kinetics", "K400", protocols.LINEAR, []),
    "ucf_s1": ("finetune.py", "ucf101", "UCF101", protocols.FINETUNE_UCF, ["--split", "1"]),
    "ucf_avg": ("finetune.py", "ucf101", "UCF101", protocols.FINETUNE_UCF, ["--split", "all"]),
    "hmdb_s1": ("finetune.py", "hmdb51", "HMDB51", protocols.FINETUNE_UCF, ["--split", "1"]),
    # Table 5 tests SSv2 with 1 view (the paper follows [19]); Table 10's "3 v": SSv2's test frames are
    # fixed (ssv2.py), so its 3 views are 1 clip x 3 crops, at 8x8 and at 16x8 frames.
    "ssv2": ("finetune.py", "ssv2", "SSV2", protocols.FINETUNE_SSV2, []),
    "ssv2_3v": ("finetune.py", "ssv2", "SSV2", protocols.FINETUNE_SSV2, ["--test_crops", "3"]),
    "ssv2_16x8": ("finetune.py", "ssv2", "SSV2", protocols.FINETUNE_SSV2, ["--test_crops", "3", "--num_frames", "16"]),
    "semi1": ("semisup.py", "kinetics", "K400", protocols.SEMISUP, ["--fraction", "1"]),
    "semi10": ("semisup.py", "kinetics", "K400", protocols.SEMISUP, ["--fraction", "10"]),
}
ABLATION_COLUMNS = {"k-NN": "knn", "HMDB": "hmdb_s1", "UCF": "ucf_s1"}
KNN_CURVE_EVERY = 20  # k-NN of every 20th checkpoint: the convergence plot (pretrain.py --saveckp_freq 20)

# ----------------------------------------------------------------------------------------------
# The tables: rows as in paper_numbers.csv; a run of None is a row not reproduced (other papers)
# ----------------------------------------------------------------------------------------------

TABLES = {
    1: dict(title="Effect of different image-based models as target network",
            labels=["method", "Image model"], columns=ABLATION_COLUMNS,
            rows=[("ρBYOL / -", RHOBYOL_100, {}),
                  ("iBoot / SwAV-R50-w2", Pretraining(teacher="swav_r50w2", temporal_pool=False), {}),
                  ("iBoot / DINO-ViT", DINO_NOPOOL, {}),
                  ("iBoot / CLIP-ViT", CLIP_NOPOOL, {}),
                  ("iBoot / DeiT-ViT*", Pretraining(teacher="deit_b16", temporal_pool=False), {})],
            # rhoBYOL with iBoot's augmentation (Section 4.1) instead of PySlowFast's BYOL recipe.
            extra_rows=[("ρBYOL, iBoot's augmentation / -", Pretraining("rhobyol", augmentation="paper"), {})],
            knn_curves=[RHOBYOL_100, CLIP_NOPOOL]),
    2: dict(title="Effect of ensembling image-based models", labels=["Image model"], columns=ABLATION_COLUMNS,
            rows=[("DINO-ViT", DINO_NOPOOL, {}), ("CLIP-ViT", CLIP_NOPOOL, {}),
                  ("DINO+CLIP", Pretraining(teacher="dino_vit_b16+clip_vit_b16", temporal_pool=False), {})]),
    3: dict(title="Effect of additional SSL loss using momentum encoder as target network",
            labels=["Image model"], columns=ABLATION_COLUMNS,
            rows=[("DINO-ViT", DINO_NOPOOL, {}),
                  ("DINO+SSL", Pretraining(teacher="dino_vit_b16", temporal_pool=False, extra_ssl=True), {}),
                  ("CLIP-ViT", CLIP_NOPOOL, {}),
                  ("CLIP+SSL", Pretraining(temporal_pool=False, extra_ssl=True), {})]),
    4: dict(title="Effect of applying temporal pooling", labels=["Image model", "T. Pool"],
            columns=ABLATION_COLUMNS,
            rows=[("DINO-ViT / ×", DINO_NOPOOL, {}), ("DINO-ViT / ✓", Pretraining(teacher="dino_vit_b16"), {}),
                  ("CLIP-ViT / ×", CLIP_NOPOOL, {}), ("CLIP-ViT / ✓", CLIP_DEFAULT, {})]),
    5: dict(title="Effect of number of temporal views for the online network", labels=["#views"],
            columns=dict(ABLATION_COLUMNS, SSv2="ssv2"),
            rows=[("-", Pretraining(num_clips=1), {}), ("1", Pretraining(num_clips=2), {}), ("2", CLIP_DEFAULT, {})]),
    6: dict(title="Effect of larger batch size and more epochs", labels=["#Batch", "#Epochs"],
            columns=ABLATION_COLUMNS,
            rows=[("8×13 / 100", CLIP_DEFAULT, {}), ("32×13 / 100", Pretraining(batch=416), {}),
                  ("32×13 / 200", CLIP_200, {})]),
    7: dict(title="Effect of different backbone architectures", labels=["Backbone"], columns=ABLATION_COLUMNS,
            rows=[("3DResNet-50", CLIP_DEFAULT, {}), ("3DResNet-101", Pretraining(arch="slow_r101"), {})]),
    8: dict(title="Effect of using a larger pre-training dataset", labels=["Data"],
            columns={"k-NN": "knn", "K400 Lin. Eval.": "linear", "HMDB": "hmdb_s1", "UCF": "ucf_s1"},
            rows=[("K400", CLIP_DEFAULT, {}), ("K600", Pretraining(data="k600"), {})]),
    9: dict(title="Effect of video encoder initialization (200 epochs, 13×32)", labels=["Method"],
            columns=ABLATION_COLUMNS,
            rows=[("ρBYOL (from scratch)", Pretraining("rhobyol", epochs=200, batch=416), {}),
                  ("ρBYOL (inflated)", Pretraining("rhobyol", epochs=200, batch=416, inflated=True), {}),
                  ("iBoot", CLIP_200, {})],
            knn_curves=[Pretraining("rhobyol", epochs=200, batch=416), CLIP_200]),
    10: dict(title="Comparison with state-of-the-art ((*) averaged over 3 splits)",
             labels=["Method", "Data", "Epoch", "T×τ"],
             columns={"K400 lin.eval": "linear", "UCF101": "ucf_s1", "HMDB51": "hmdb_s1", "SSv2": "ssv2_3v"},
             rows=[("Fully Supervised / Scratch / - / 8×8", SCRATCH, {"K400 lin.eval": None, "SSv2": "ssv2"}),
                   ("Fully Supervised / K400 / - / 8×8", None, {}),
                   ("CVRL [48] / K400 / 800 / 16×2", None, {}),
                   ("(ρ=4) CORP_m [27] / K400 / 800 / 16×2", None, {}),
                   ("CORP_f [27] / K400 / 800 / 16×2", None, {}),
                   ("MoDist [64] / K400 / 600 / 8×8", None, {}),
                   ("(ρ=2) BYOL [19] / K400 / 200 / 8×8", None, {}),
                   ("(ρ=3) BYOL [19] / K400 / 200 / 8×8", None, {}),
                   ("(ρ=4) BYOL [19] / K400 / 200 / 8×8", None, {}),
                   ("(ρ=3) SimCLR [19] / K400 / 200 / 8×8", None, {}),
                   ("(ρ=3) SwAV [19] / K400 / 200 / 8×8", None, {}),
                   ("(ρ=3) MoCo [19] / K400 / 200 / 8×8", None, {}),
                   ("iBoot / K400 / 200 / 8×8", CLIP_200, {}),
                   ("iBoot (3 splits; SSv2 16×8) / K400 / 200 / 8×8", CLIP_200,
                    {"K400 lin.eval": None, "UCF101": "ucf_avg", "HMDB51": None, "SSv2": "ssv2_16x8"})]),
    11: dict(title="Semi-supervised classification top-1 on K400", labels=["Method"],
             columns={"1% Labels": "semi1", "10% Labels": "semi10"},
             rows=[("Supervised", SCRATCH, {}), ("SimCLR infla. [48]", None, {}),
                   ("ImageNet infla. [48]", None, {}), ("CVRL [48]", None, {}), ("CORP_f [27]", None, {}),
                   ("(ρ=2) BYOL [19]", RHOBYOL_PUBLIC, {}), ("iBoot", CLIP_200, {})]),
}
# The convergence plot's legend: iBoot against rhoBYOL with the same budget (Tables 1 and 9).
CONVERGENCE_LABELS = {RHOBYOL_100.name: "ρBYOL (100 ep)", CLIP_NOPOOL.name: "iBoot CLIP (100 ep)",
                      Pretraining("rhobyol", epochs=200, batch=416).name: "ρBYOL (200 ep)",
                      CLIP_200.name: "iBoot CLIP (200 ep)"}


def table_rows(number):
    """(label, run, overrides, in the paper) of every row of a table: the paper's, then our extra ones."""
    spec = TABLES[number]
    return [r + (True,) for r in spec["rows"]] + [r + (False,) for r in spec.get("extra_rows", [])]


def row_evaluations(number, overrides):
    """The evaluations of one row: its table's columns, with the row's overrides (None: not run)."""
    evs = [overrides.get(column, ev) for column, ev in TABLES[number]["columns"].items()]
    return [ev for ev in evs if ev is not None]


# ----------------------------------------------------------------------------------------------
# The paper's central comparison at CPU scale (reproduce/mini.sh): iBoot against rhoBYOL with the same
# data, encoder, epochs and batch (Tables 1 and 9), several seeds, k-NN on the validation split after
# every epoch beside the teacher's own frame features and random initialisation (docs/learning.md)
# ----------------------------------------------------------------------------------------------

MINI_METHODS = ("iboot", "rhobyol")
MINI_SEEDS = (0, 1, 2)
# The CPU-scale recipe (docs/learning.md: how it was chosen, and what did not help): slow_tiny, T=4,
# 64-px crops (3.4x cheaper steps than 112), batch 8, 200 epochs with 10 of warm-up, LARS. iBoot
# regresses the teacher's features of the clip it sees (--num_clips 1: Table 5's "v1 = v_ref" row) at
# --base_lr 96 (the paper's 2.4 x batch / 256 gives lr 0.075 at batch 8, under which LARS moves the
# encoder by 2% in the whole run while W's bias fits the mean target), with the paper's crops and flips
# but no colour augmentation (--augmentation paper_nocolour: a deviation from Section 4.1; the colour
# noise of v_ref is most of what the student cannot predict). rhoBYOL keeps its PySlowFast recipe
# (rho = 2 clips, BYOL augmentation, --base_lr 2.4; 96 was worse for it).
MINI_RECIPE = ["--arch", "slow_tiny", "--teacher", "efficientnet_lite0", "--num_frames", "4", "--stride", "8",
               "--crop_size", "64", "--batch_size_per_gpu", "8", "--epochs", "200", "--warmup_epochs", "10",
               "--num_workers", "1", "--knn_every", "1", "--knn_eval", "yes", "--saveckp_freq", "0"]
MINI_METHOD_FLAGS = {"iboot": ["--num_clips", "1", "--base_lr", "96", "--augmentation", "paper_nocolour"],
                     "rhobyol": []}
MINI_SMOKE = ["--dataset", "synthetic", "--arch", "slow_tiny", "--crop_size", "32", "--num_frames", "3",
              "--stride", "4", "--batch_size_per_gpu", "4", "--epochs", "2", "--max_iters_per_epoch", "2",
              "--warmup_epochs", "0", "--num_workers", "0", "--teacher_weights", "random", "--log_every", "1"]
# The optional linear probe of each run's last checkpoint (--linear): the linear protocol at CPU scale.
MINI_LINEAR = ["--epochs", "20", "--batch_size_per_gpu", "16", "--lr", "1.0", "--warmup_epochs", "2",
               "--crop_size", "64", "--num_frames", "4", "--stride", "8", "--test_clips", "1", "--test_crops", "1",
               "--num_workers", "1"]
MINI_DATA_FLAGS = ("--dataset", "--data_root", "--train_list", "--val_list", "--split")


def mini_steps(data_flags, env, seeds=MINI_SEEDS, linear=False, epochs=None):
    """(runs folder, [(done-marker, command)]) of the comparison, in $RUNS/mini/<data>/<method>_s<seed>;
    data_flags: the flags that name the data set, as pretrain.py and the evaluations take them
    (MINI_DATA_FLAGS); epochs: pretraining epochs other than the recipe's."""
    unknown = [f for f in data_flags[::2] if f not in MINI_DATA_FLAGS]
    if unknown or len(data_flags) % 2:
        raise ValueError(f"mini.sh: {' '.join(unknown) or 'a flag without a value'}: allowed are "
                         f"{', '.join(MINI_DATA_FLAGS)} (with a value each), --seeds, --epochs, --linear")
    smoke = env.get("SMOKE") == "1"
    data_flags = ["--data_root", env["SMOKE_DATA"]] if smoke else evaluation_data(data_flags)
    root = flag_value(data_flags, "--data_root") or flag_value(data_flags, "--train_list")
    if root is None:
        raise ValueError("mini.sh needs --data_root DIR (and --dataset, --train_list, --val_list as pretrain.py takes them)")
    name = "synthetic" if smoke else os.path.basename(os.path.normpath(root))
    folder = os.path.join(env["RUNS"], "mini", name + (f"_e{epochs}" if epochs else ""))  # one recipe, one folder
    steps = []
    for seed in seeds:
        for method in MINI_METHODS:
            out = os.path.join(folder, f"{method}_s{seed}")
            args = (["pretrain.py", "--method", method, "--seed", str(seed), "--output_dir", out] + MINI_RECIPE
                    + MINI_METHOD_FLAGS[method] + (["--epochs", str(epochs)] if epochs else []) + data_flags
                    + (MINI_SMOKE if smoke else []))
            steps.append((os.path.join(out, "DONE"), args))
            if linear:
                args = ["eval_linear.py", "--pretrained", os.path.join(out, "checkpoint.pth"), "--seed", str(seed),
                        "--run_name", f"mini_{method}_s{seed}__linear", "--output_dir", os.path.join(out, "linear"),
                        "--results_dir", os.path.join(folder, "results")] + MINI_LINEAR + data_flags
                steps.append((os.path.join(out, "linear", "DONE"), args + (MINI_SMOKE_EVAL if smoke else [])))
    return folder, steps


MINI_SMOKE_EVAL = ["--dataset", "synthetic", "--crop_size", "32", "--num_frames", "3", "--stride", "4",
                   "--batch_size_per_gpu", "4", "--epochs", "1", "--max_iters_per_epoch", "2", "--warmup_epochs", "0",
                   "--num_workers", "0", "--device", "cpu"]


def flag_value(flags, name):
    return flags[flags.index(name) + 1] if name in flags[:-1] else None


def evaluation_data(data_flags):
    """The data flags of pretrain.py and of the evaluations (the same names): --dataset csv unless given."""
    out = list(data_flags)
    if "--dataset" not in out:
        out = ["--dataset", "csv"] + out
    return out


# ----------------------------------------------------------------------------------------------
# Smoke mode: the same steps on the CPU, synthetic videos, slow_tiny, random-init teachers
# ----------------------------------------------------------------------------------------------

SMOKE_PRETRAIN = ["--arch", "slow_tiny", "--crop_size", "32", "--num_frames", "2", "--stride", "4", "--epochs", "2",
                  "--max_iters_per_epoch", "1", "--batch_size_per_gpu", "2", "--warmup_epochs", "0",
                  "--num_workers", "0", "--device", "cpu", "--knn_eval", "no", "--saveckp_freq", "1",
                  "--log_every", "1", "--monitor_videos", "4"]
SMOKE_EVAL = ["--arch", "slow_tiny", "--crop_size", "32", "--num_frames", "2", "--stride", "4",
              "--batch_size_per_gpu", "4", "--num_workers", "0", "--device", "cpu"]
SMOKE_TRAINING = ["--epochs", "1", "--max_iters_per_epoch", "2", "--warmup_epochs", "0", "--test_clips", "1", "--test_crops", "1"]


def smoke_2d_init(path):
    """A 2D ResNet-style state dict that inflates onto slow_tiny: the smoke stand-in for IMAGENET_R50."""
    if not os.path.isfile(path):
        import torch
        import models
        sd3d = models.build_encoder("slow_tiny").state_dict()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.save({k: (v.mean(2) if v.dim() == 5 else v) for k, v in sd3d.items()}, path)
    return path


# ----------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------

def warn(message):
    print(f"[plan] {message}", file=sys.stderr)


def per_gpu_batch(global_batch, env):
    """The per-GPU batch that keeps the paper's global batch on WORLD_SIZE GPUs. With SyncBN the
    statistics are over the global batch, so 52 clips on each of 8 GPUs train the model that 13 on
    each of 32 do, memory permitting; BATCH_PER_GPU forces another (the lr follows the linear rule)."""
    world = int(env["WORLD_SIZE"])
    if env.get("BATCH_PER_GPU"):
        forced = int(env["BATCH_PER_GPU"])
        if forced * world != global_batch:
            warn(f"BATCH_PER_GPU={forced} x {world} GPUs = {forced * world}, not the paper's global batch "
                 f"{global_batch} (the lr follows the linear scaling rule)")
        return forced
    per_gpu = global_batch // world
    if per_gpu * world != global_batch:  # a rounded batch would train another run under the paper's name
        raise ValueError(f"the paper's global batch {global_batch} does not divide over {world} GPUs: use a GPU "
                         f"count that divides it, or set BATCH_PER_GPU (the lr then follows the linear scaling rule)")
    if per_gpu > PER_GPU_BATCH:
        warn(f"the paper's global batch {global_batch} on {world} GPUs means {per_gpu} clips per GPU (paper: "
             f"{PER_GPU_BATCH}); set BATCH_PER_GPU if it does not fit in memory")
    return per_gpu


def teacher_weights(teachers, env):
    """--teacher_weights for an ensemble "a+b": TEACHER_WEIGHTS_<NAME> of each, or nothing (the
    libraries' caches); random in smoke mode."""
    names = teachers.split("+")
    if env.get("SMOKE") == "1":
        return ["--teacher_weights", "+".join(["random"] * len(names))]
    files = [env.get("TEACHER_WEIGHTS_" + n.upper().replace(":", "_").replace("-", "_")) for n in names]
    if not any(files):
        return []
    if not all(files):
        raise ValueError(f"set TEACHER_WEIGHTS_<NAME> for every teacher of '{teachers}' or for none")
    return ["--teacher_weights", "+".join(files)]


def pretrain_step(run, env):
    """(done-marker, command) of one pretraining run, or None when it cannot run (a warning says why)."""
    if run.inflated and not env.get("IMAGENET_R50"):
        warn(f"IMAGENET_R50 is not set: {run.name} (Table 9's 'rhoBYOL (inflated)') is left out")
        return None
    out = os.path.join(env["RUNS"], run.name)
    root = env[run.data.upper()]
    args = ["pretrain.py", "--output_dir", out, "--epochs", str(run.epochs)]
    if env.get("SMOKE") == "1":
        args += run.flags(env) + ["--dataset", "synthetic", "--data_root", env["SMOKE_DATA"]] + SMOKE_PRETRAIN
    else:
        args += ["--dataset", "kinetics", "--data_root", root, "--train_list", os.path.join(root, "train.csv"),
                 "--batch_size_per_gpu", str(per_gpu_batch(run.batch, env))] + run.flags(env)
        args += ["--saveckp_freq", str(KNN_CURVE_EVERY)]
    return os.path.join(out, "DONE"), args


def weights_of(run, env, checkpoint="checkpoint.pth"):
    if isinstance(run, Pretraining):
        return os.path.join(env["RUNS"], run.name, checkpoint)
    if run is SCRATCH:
        return "scratch"
    if run is RHOBYOL_PUBLIC and env.get("SMOKE") == "1" and not env.get(run.env_var):
        # Smoke stand-in for the public checkpoint: the smoke rhoBYOL run of Table 1.
        return os.path.join(env["RUNS"], RHOBYOL_100.name, "checkpoint.pth")
    return env.get(run.env_var) or None


def evaluation_flags(ev, env):
    """The flags of one evaluation: its data set and the protocol's numbers (batch_size: the global
    batch, split over the GPUs), then its own."""
    script, dataset, root_var, protocol, extra = EVALUATIONS[ev]
    world = int(env["WORLD_SIZE"])
    flags = ["--dataset", dataset, "--data_root", env[root_var]]
    for key, value in protocol.items():
        if key == "batch_size":
            if value % world:
                raise ValueError(f"the paper's batch {value} of evaluation {ev} does not divide over {world} GPUs")
            flags += ["--batch_size_per_gpu", str(value // world)]
        else:
            flags += [f"--{key}", str(value)]
    if script == "semisup.py":
        flags += ["--subset_dir", os.path.join(env["RUNS"], "splits")]
    return script, flags + extra


def evaluation_step(run, ev, env):
    """(done-marker, command) of one evaluation of a run, or None when its weights are not given."""
    base_ev, checkpoint = ev, "checkpoint.pth"
    if ev.startswith("knn_e"):  # k-NN of an intermediate checkpoint
        base_ev, checkpoint = "knn", f"checkpoint_{ev[len('knn_e'):]}.pth"
    weights = weights_of(run, env, checkpoint)
    if weights is None:
        warn(f"the weights of {run.name} are not given ({run.env_var}): its {ev} is left out")
        return None
    script, flags = evaluation_flags(base_ev, env)
    folder = os.path.join(env["RUNS"], run.name, "evals")
    args = [script, "--pretrained", weights, "--run_name", f"{run.name}__{ev}", "--results_dir", env["RESULTS"],
            "--output_dir", os.path.join(folder, ev)] + flags + list(getattr(run, "record", ()))
    args += ["--arch", run.arch]
    if env.get("SMOKE") == "1":
        args += ["--dataset", "synthetic", "--data_root", env["SMOKE_DATA"]] + SMOKE_EVAL
        args += SMOKE_TRAINING if script != "eval_knn.py" else []
        args += ["--split", "1"] if script == "finetune.py" else []  # the synthetic set has no official splits
    return os.path.join(folder, f"{ev}.done"), args


def knn_curve(run, env):
    """k-NN of every KNN_CURVE_EVERY-th checkpoint (every epoch in smoke mode)."""
    every, last = (1, 2) if env.get("SMOKE") == "1" else (KNN_CURVE_EVERY, run.epochs)
    return [f"knn_e{e:04d}" for e in range(every, last + 1, every)]


def table_steps(number, env):
    """Every step of a table in order: each row's pretraining, then its evaluations; k-NN curves last."""
    steps, trained = [], set()
    rows = [(run, row_evaluations(number, overrides)) for _, run, overrides, _ in table_rows(number) if run]
    rows += [(run, knn_curve(run, env)) for run in TABLES[number].get("knn_curves", [])]
    for run, evs in rows:
        if isinstance(run, Pretraining) and run not in trained:
            trained.add(run)
            steps.append(pretrain_step(run, env))
            if steps[-1] is None:
                continue
        steps += [evaluation_step(run, ev, env) for ev in evs]
    if number == 11 and env.get("SMOKE") == "1" and not env.get(RHOBYOL_PUBLIC.env_var):
        steps.insert(0, pretrain_step(RHOBYOL_100, env))  # the stand-in for the public rhoBYOL checkpoint
    return [s for s in steps if s is not None]


def environment(environ):
    """The plan's environment: the variables of common.sh with its defaults."""
    env = dict(environ)
    env.setdefault("RUNS", "runs")
    env.setdefault("RESULTS", "results")
    data = env.setdefault("DATA", "data")
    for var in ("K400", "K600", "UCF101", "HMDB51", "SSV2"):
        env.setdefault(var, os.path.join(data, var.lower()))
    env.setdefault("WORLD_SIZE", str(int(env.get("GPUS_PER_NODE", 8)) * int(env.get("NNODES", 1))))
    env.setdefault("SMOKE_DATA", os.path.join(env["RUNS"], "synthetic"))
    if env.get("SMOKE") == "1":
        env["WORLD_SIZE"] = "1"
        if not env.get("IMAGENET_R50"):  # built only when no file is given (it imports torch)
            env["IMAGENET_R50"] = smoke_2d_init(os.path.join(env["RUNS"], "smoke_2d_resnet.pth"))
    return env


def main(argv=None):
    p = argparse.ArgumentParser(description="The steps of one table (--table N) or of the CPU-scale comparison "
                                            "(--mini DATA FLAGS...): done-marker TAB command, one per line; with "
                                            "--mini the first line is the runs' folder.")
    p.add_argument("--table", type=int, choices=sorted(TABLES))
    p.add_argument("--mini", action="store_true", help="reproduce/mini.sh's runs; the other flags name the data")
    p.add_argument("--seeds", type=int, nargs="+", default=list(MINI_SEEDS), help="--mini: the seeds")
    p.add_argument("--linear", action="store_true", help="--mini: also a linear probe of each run")
    p.add_argument("--epochs", type=int, default=None, help="--mini: pretraining epochs (default: the recipe's)")
    args, data_flags = p.parse_known_args(argv)
    if (args.table is None) == (not args.mini):
        p.error("give --table N or --mini")
    if args.table is not None and (args.linear or args.epochs):
        p.error("--linear and --epochs go with --mini")
    env = environment(os.environ)
    if args.mini:
        folder, steps = mini_steps(data_flags, env, args.seeds, args.linear, args.epochs)
        print(folder)
    else:
        if data_flags:
            p.error(f"unrecognized arguments: {' '.join(data_flags)}")
        steps = table_steps(args.table, env)
    for marker, command in steps:
        print(f"{marker}\t{shlex.join(command)}")


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:
        raise SystemExit(f"error: {e}")
