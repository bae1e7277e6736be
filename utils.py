"""Shared helpers of every script, as in DINO's utils.py: the torchvision fallback, distributed
set-up, seeds, run set-up (defaults banner, config record), precision, progress and JSON logs, the
command-line wrapper and the learning-rate schedule. Checkpoints live in checkpoint.py.

Importing this module registers the torchvision fallback, so every module that imports timm or
open_clip imports utils first.
"""
import contextlib
import datetime
import glob
import importlib.metadata
import importlib.util
import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import torch
import torch.distributed as dist


# ----------------------------------------------------------------------------------------------
# torchvision on a CPU-only torch
# ----------------------------------------------------------------------------------------------
# The torchvision wheel that pairs with torch 2.13.0 is a CUDA build. On a CPU-only torch its
# compiled extension (_C.so) cannot load, and `import torchvision` then dies in
# torchvision/_meta_registrations.py with "operator torchvision::nms does not exist", because
# torch.library.register_fake refuses an operator that was never defined. timm and open_clip
# import torchvision, so they die too. Defining the operators (with pure-torch kernels) before
# torchvision is imported fixes that; when the extension does load we do nothing at all.

_TORCHVISION_FALLBACK_LIB = None


def _nms_reference(dets, scores, iou_threshold):
    """Greedy non-maximum suppression: indices of kept boxes, by decreasing score."""
    order = scores.argsort(descending=True)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    suppressed = torch.zeros(dets.shape[0], dtype=torch.bool, device=dets.device)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=dets.device)


def _torchvision_extension_loads():
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True  # torchvision not installed: nothing to fix
    libraries = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so")) + glob.glob(
        os.path.join(os.path.dirname(spec.origin), "_C*.pyd"))
    if not libraries:
        return False
    try:
        torch.ops.load_library(libraries[0])
        return True
    except (OSError, RuntimeError, ImportError):
        return False


def register_torchvision_fallbacks():
    """Make `import torchvision` (and so timm, open_clip) work when torchvision's C++ ops cannot load.

    Returns True when fallbacks were registered, False when nothing was needed.
    """
    global _TORCHVISION_FALLBACK_LIB
    if _TORCHVISION_FALLBACK_LIB is not None:
        return True
    if "torchvision" in sys.modules or _torchvision_extension_loads():
        return False
    lib = torch.library.Library("torchvision", "DEF")
    # Schemas as torchvision's C++ declares them (csrc/ops/nms.cpp).
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    for key in ("CPU", "CUDA"):
        lib.impl("nms", _nms_reference, key)
    _TORCHVISION_FALLBACK_LIB = lib
    return True


register_torchvision_fallbacks()


# ----------------------------------------------------------------------------------------------
# Distributed: torchrun sets RANK, WORLD_SIZE, LOCAL_RANK; plain `python script.py` is one process.
# ----------------------------------------------------------------------------------------------


def init_distributed(device_flag="auto"):
    """Join the torchrun process group if there is one. Returns (rank, world_size, device).

    nccl on GPU, gloo on CPU. Without torchrun the script runs as a single process.
    """
    if device_flag == "auto":
        device_flag = "cuda" if torch.cuda.is_available() else "cpu"
    if device_flag == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device_flag == "cuda":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                     timeout=datetime.timedelta(minutes=30))
        return rank, world, device
    return 0, 1, torch.device(device_flag)


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    return get_rank() == 0


def barrier():
    if is_distributed():
        dist.barrier()


def all_reduce_sum(value, device):
    """Sum a Python number over ranks (used for epoch statistics such as skipped videos)."""
    if not is_distributed():
        return value
    t = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


def all_gather_variable(tensor):
    """Gather tensors of different first-dimension sizes from all ranks, concatenated in rank order."""
    if not is_distributed():
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(get_world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    padded = tensor.new_zeros((max(sizes),) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)])


def gather_objects(obj):
    """A list with every rank's picklable object (rank order); [obj] without torchrun."""
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup_distributed():
    if is_distributed():
        dist.destroy_process_group()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Random state (saved in checkpoints so that a resumed run replays what the interrupted one would have)
# ----------------------------------------------------------------------------------------------

def get_random_state(generators=None):
    """Python, numpy, torch (and CUDA) RNG states, plus those of the named torch Generators."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "generators": {name: g.get_state() for name, g in (generators or {}).items()}}


def set_random_state(state, generators=None):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        g.set_state(state["generators"][name])


# ----------------------------------------------------------------------------------------------
# Run set-up: defaults banner and the config record
# ----------------------------------------------------------------------------------------------

def apply_defaults(args, defaults, reason):
    """Flags left at None take the value in `defaults` (the paper's, or the small synthetic ones), and
    the run prints which ones, so a log always says what a run used. Returns what was filled."""
    used = {}
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
            used[key] = value
    if used:
        print_main(f"defaults for {reason}: " + ", ".join(f"--{k} {v}" for k, v in used.items()))
    return used


def _git_commit():
    """The commit of the code that runs ("+dirty" with uncommitted changes), or "unknown"."""
    repo = os.path.dirname(os.path.abspath(__file__))
    try:
        run = lambda *cmd: subprocess.run(["git", "-C", repo, *cmd], capture_output=True, text=True,  # noqa: E731
                                          timeout=10, check=True).stdout.strip()
        return run("rev-parse", "HEAD") + ("+dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run_environment():
    """What, besides the flags, a run needs to be repeated: code, packages, command line, processes."""
    return dict(git_commit=_git_commit(), command=shlex.join([sys.executable] + sys.argv),
                world_size=get_world_size(), python=sys.version.split()[0],
                versions={p: _version(p) for p in ("torch", "torchvision", "timm", "open_clip_torch", "av",
                                                   "numpy")})


def save_config(args, output_dir, name="config.json"):
    """config.json beside the checkpoints: every flag, plus run_environment() under "environment"."""
    if is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        record = dict(vars(args), environment=run_environment())
        with open(os.path.join(output_dir, name), "w") as f:
            json.dump(record, f, indent=2, sort_keys=True, default=str)


# ----------------------------------------------------------------------------------------------
# Precision: --precision means the same in every script and on every device that supports it
# ----------------------------------------------------------------------------------------------

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_precision(flag, device):
    """"auto" is bf16 on a GPU that supports it and fp32 elsewhere (a CPU without bf16 units runs
    bf16 slower than fp32); bf16/fp16/fp32 are taken as given on every device."""
    if flag not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {flag!r}")
    if flag != "auto":
        return flag
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def check_training_precision(device, precision, num_frames):
    """Refuse the one combination where the CPU's bf16 gives wrong gradients: in torch 2.13 the CPU
    bf16 Conv3d weight gradient is garbage (inf, NaN, 1e35) for clips of exactly 2 frames through a
    temporal kernel of 3 (the Slow networks' res4 and res5), while the forward pass, the input
    gradient, fp16 and every other frame count are right (measured; tests/test_utils.py keeps a
    canary that fails once torch fixes it). Call it where the encoder is trained."""
    if device.type == "cpu" and precision == "bf16" and num_frames == 2:
        raise ValueError("--precision bf16 with --num_frames 2 on the CPU: torch's CPU bf16 Conv3d weight gradient "
                         "is wrong for 2-frame clips (inf/NaN); use --num_frames 3 or more, or --precision fp32")


def autocast(device, precision):
    """Autocast context for a resolved precision; fp32 runs without autocast."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(device, precision):
    """Loss scaling for fp16 (bf16 and fp32 need none): a GradScaler that is a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


# ----------------------------------------------------------------------------------------------
# Logging and results
# ----------------------------------------------------------------------------------------------

class JsonlLogger:
    """Appends one JSON object per line; only rank 0 writes."""

    def __init__(self, path):
        self.path = path
        if is_main_process():
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def log(self, **record):
        if not is_main_process():
            return
        record.setdefault("time", time.time())
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def print_main(*args, **kwargs):
    if is_main_process():
        print(*args, **kwargs, flush=True)


class Progress:
    """Progress of a loop on rank 0: a tqdm bar when stderr is a terminal; otherwise (a SLURM .out
    file, a pipe) one plain line every `log_every` steps and at the end, with no carriage returns."""

    def __init__(self, total, desc, log_every=10):
        self.total, self.desc, self.log_every, self.n, self.info = total, desc, max(1, log_every), 0, {}
        self.t0 = time.time()
        self.active = is_main_process()
        self.bar = None
        if self.active and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False, mininterval=1.0)

    def update(self, **info):
        self.n += 1
        self.info = info
        if self.bar is not None:
            self.bar.set_postfix(**info, refresh=False)
            self.bar.update(1)
        elif self.active and (self.n % self.log_every == 0 or self.n == self.total):
            rate = self.n / max(time.time() - self.t0, 1e-9)
            eta = (self.total - self.n) / max(rate, 1e-9)
            fields = "".join(f" {k} {v}" for k, v in info.items())
            print(f"{self.desc} [{self.n}/{self.total}]{fields} | {rate:.2f} it/s, eta {eta:.0f} s", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def write_result(results_dir, record):
    """One JSON file per evaluation run; reproduce/collect.py reads the folder.

    record: method, teacher, pretrain_data, pretrain_epochs, dataset, split, metric, value, config...
    """
    if not is_main_process():
        return None
    os.makedirs(results_dir, exist_ok=True)
    stem = "_".join(str(record.get(k, "")) for k in ("run", "dataset", "split", "metric"))
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem).strip("_") or "result"
    path = os.path.join(results_dir, stem + ".json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

class SetupError(RuntimeError):
    """Something the user must fix outside the code (e.g. teacher weights that cannot be fetched
    offline); the message names the flag that fixes it."""


class Diverged(SetupError):
    """Training blew up (a non-finite loss, exploding weights); the message names the flag to change."""


class Stopped(Exception):
    """A run stopped by a signal (SIGTERM, SIGINT) after writing what it needs to resume."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(f"stopped by {signal.Signals(signum).name}", signum)


def _one_line_error(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run_cli(main, parser):
    """Run a script's main(args). Bad input (a ValueError, FileNotFoundError or SetupError that names
    the flag or file) ends in one line on stderr and exit status 2, not a traceback; a run stopped by
    SIGTERM or Ctrl-C ends in one line and status 128 + the signal number."""
    signal.signal(signal.SIGTERM, _raise_stopped)  # default SIGTERM would end the run without a word
    parser.error = _one_line_error  # argparse's own errors too: one line, not the usage block
    try:
        main(parser.parse_args())
    except (ValueError, FileNotFoundError, SetupError) as e:
        _one_line_error(e)
    except Stopped as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        print("stopped by SIGINT (Ctrl-C)", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


class GracefulStop:
    """While active, SIGTERM (what SLURM sends before it preempts a job) and SIGINT (Ctrl-C) only ask
    the training loop to stop after its current step, so that it can write a checkpoint that resumes
    mid-epoch. A second Ctrl-C stops at once. Under torchrun the ranks agree on stopping (all-reduce),
    so that they stop at the same step."""

    def __init__(self):
        self.signum, self._previous = None, {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def stopped(self, epoch, iteration, output_dir):
        """The Stopped exception a loop raises once its mid-epoch checkpoint is written."""
        name = signal.Signals(self.signum).name
        return Stopped(f"stopped by {name} at epoch {epoch}, iteration {iteration}; checkpoint written to "
                       f"{output_dir}: run the same command again to resume", self.signum)

    def requested(self, device):
        """Whether any rank got a signal (collective under torchrun: call it on every rank each step)."""
        if is_distributed():
            flag = torch.tensor(float(self.signum or 0), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.signum = self.signum or (int(flag.item()) or None)
        return self.signum is not None


def _allowed(value, rule):
    if isinstance(rule, tuple):
        return value in rule
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if rule.startswith(">="):
        return value >= float(rule[2:])
    if rule.startswith(">"):
        return value > float(rule[1:])
    low, high = (float(x) for x in rule[1:-1].split(","))
    return (value >= low if rule[0] == "[" else value > low) and (value <= high if rule[-1] == "]" else value < high)


def _describe(rule):
    if isinstance(rule, tuple):
        return "one of " + ", ".join(str(r) for r in rule)
    if rule.startswith(">="):
        return ">= " + rule[2:]
    if rule.startswith(">"):
        return "> " + rule[1:]
    return "in " + rule.replace(",", ", ")


def check_flags(args, rules):
    """Stop at start-up, before anything is written, with one line naming the flag, its value and what
    is allowed. rules: {flag: ">=a" | ">a" | "[a,b]" | "[a,b)" | "(a,b]" | "(a,b)" | (allowed, values)}.
    Unset (None) flags are skipped; list values are checked one by one; floats must be finite."""
    for flag, rule in rules.items():
        value = getattr(args, flag, None)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and not _allowed(v, rule):
                raise ValueError(f"--{flag} {v}: must be {_describe(rule)}")


# ----------------------------------------------------------------------------------------------
# Learning-rate schedule, per iteration (MAE's util/lr_sched.py in spirit)
# ----------------------------------------------------------------------------------------------

def warmup_cosine_lr(step, total_steps, warmup_steps, base_lr, warmup_start_lr=0.0, final_lr=0.0):
    """Linear warm-up from warmup_start_lr to base_lr over warmup_steps, then cosine to final_lr.

    The paper: pretraining warms up 8 epochs then cosine; linear probe 0 -> 1.0 over 8 epochs;
    SSv2 fine-tuning 0.08 -> 0.15 over 3 epochs. Steps are iterations, so the rate moves every step.
    """
    if step < warmup_steps:
        return warmup_start_lr + (base_lr - warmup_start_lr) * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, progress)
    return float(final_lr + (base_lr - final_lr) * 0.5 * (1.0 + np.cos(np.pi * progress)))


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
