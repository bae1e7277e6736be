"""Checkpoints: atomic files, runs that resume only what their flags describe, and weight-file formats.

    save(obj, path) / load(path)       atomic write (temporary file + rename) with the user's usual
                                       file permissions; a full disk leaves the previous file intact
    save_run(output_dir, state, ...)   a training run's state (every rank's random state included)
    resume_run(output_dir, fingerprint)  that state again, only when the run's fingerprint agrees
    run_fingerprint(args, files)       the flags that define a run (and the content of the files it
                                       starts from), without those that only change logging or paths
    detect_format(obj) / strip_prefix  what a weights file is: iboot, PySlowFast, torchvision, raw
"""
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile

import torch

import cli
import distributed
import rng

CHECKPOINT_NAME = "checkpoint.pth"
_TMP_PREFIX = ".tmp_"

# Flags that change how a run is watched or where it writes, not what it computes: a run may be
# resumed with other values for them (every other flag must agree).
FREE_FLAGS = frozenset({"output_dir", "log_every", "tensorboard", "num_workers", "saveckp_freq", "device",
                        "knn_eval", "eval_freq", "results_dir", "run_name", "dump_features", "monitor_videos",
                        "knn_every", "allow_unseen_labels"})


def _new_file_mode():
    """The mode open() gives a new file under the current umask (mkstemp's 0600 would hide checkpoints
    from the user's group). os.umask can only be read by setting it, so it is set back at once."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _no_space(error):
    """ENOSPC anywhere in the exception chain (torch.save re-raises a write error as RuntimeError)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def save(obj, path, copy_of=None):
    """torch.save to a temporary file in the same folder, then rename: a crash or a full disk at any
    moment leaves the previous file (or none), never a truncated one, and no temporary file.
    With copy_of (a file path) the bytes of that file are written instead of obj."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            if copy_of is None:
                torch.save(obj, f)
            else:
                with open(copy_of, "rb") as src:
                    shutil.copyfileobj(src, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if _no_space(e):
            raise cli.SetupError(f"no space left on the device of {folder} while writing "
                                   f"{os.path.basename(path)}; the previous checkpoint is intact. Free "
                                   f"space there or pass another --output_dir") from None
        raise


def load(path, map_location="cpu"):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a foreign or damaged file: say which one
        raise ValueError(f"could not read checkpoint {path}: {e}") from e


def remove_stale_temporaries(folder):
    """Temporary files left by a run killed while it wrote a checkpoint. Returns their number."""
    if not os.path.isdir(folder):
        return 0
    stale = [f for f in os.listdir(folder) if f.startswith(_TMP_PREFIX) and f.endswith(".pth")]
    for name in stale:
        os.remove(os.path.join(folder, name))
    return len(stale)


# ----------------------------------------------------------------------------------------------
# Runs: fingerprint, save, resume
# ----------------------------------------------------------------------------------------------

def file_fingerprint(path):
    """Path, size and SHA-256 of a file: the weights a run starts from are part of what it is."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return dict(path=os.path.abspath(path), size=os.path.getsize(path), sha256=digest.hexdigest())


def run_fingerprint(args, files=()):
    """The flags that define a run (all but FREE_FLAGS), JSON-normalised; each flag in `files` that
    names a file is replaced by that file's fingerprint."""
    fingerprint = {k: v for k, v in vars(args).items() if k not in FREE_FLAGS}
    for flag in files:
        value = fingerprint.get(flag)
        if isinstance(value, str) and os.path.isfile(value):
            fingerprint[flag] = file_fingerprint(value)
    return json.loads(json.dumps(fingerprint, sort_keys=True, default=str))


def _short(value):
    if isinstance(value, dict) and "sha256" in value:
        return f"{value['path']} ({value['size']} bytes, sha256 {value['sha256'][:12]})"
    return json.dumps(value) if not isinstance(value, str) else value


def fingerprint_difference(old, new):
    """"--flag old -> new" for every flag whose value differs, joined by "; " ("" when they agree)."""
    keys = sorted(set(old) | set(new))
    missing = "(unset)"
    return "; ".join(f"--{k} {_short(old.get(k, missing))} -> {_short(new.get(k, missing))}"
                     for k in keys if old.get(k, missing) != new.get(k, missing))


def check_resumable(path, fingerprint):
    """Load the checkpoint at `path` and stop, with one line naming every differing flag, when it was
    written by a run with other defining flags."""
    ckpt = load(path)
    folder = os.path.dirname(path)
    if not isinstance(ckpt, dict) or "fingerprint" not in ckpt:
        raise ValueError(f"--output_dir {folder} holds {os.path.basename(path)} without a run fingerprint "
                         f"(not written by this version of iboot); pass another --output_dir")
    difference = fingerprint_difference(ckpt["fingerprint"], fingerprint)
    if difference:
        raise ValueError(f"--output_dir {folder} holds a run with other settings: {difference}. Start it "
                         f"again with its own flags to resume it, or pass another --output_dir")
    return ckpt


def resume_run(output_dir, fingerprint, generators=None):
    """The run state saved in output_dir (None when there is none): checked against `fingerprint`,
    this rank's random state restored (with the named torch Generators'). Also removes temporary
    files left by a killed write."""
    if distributed.is_main():
        remove_stale_temporaries(output_dir)
    path = os.path.join(output_dir, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        return None
    ckpt = check_resumable(path, fingerprint)
    states, rank = ckpt["random_state"], distributed.rank()
    rng.set_state(states[rank] if rank < len(states) else states[0], generators)
    return ckpt


def save_run(output_dir, state, keep_as=None, generators=None):
    """Called by every rank (their random states, with the named torch Generators', are gathered);
    rank 0 writes output_dir/checkpoint.pth and, with keep_as, a copy under that name."""
    state = dict(state, random_state=distributed.gather_objects(rng.get_state(generators)))
    if distributed.is_main():
        path = os.path.join(output_dir, CHECKPOINT_NAME)
        save(state, path)
        if keep_as:
            save(None, os.path.join(output_dir, keep_as), copy_of=path)
    distributed.barrier()


# ----------------------------------------------------------------------------------------------
# Weight-file formats
# ----------------------------------------------------------------------------------------------

FORMATS = ("auto", "iboot", "pyslowfast", "torchvision", "raw")


def strip_prefix(state_dict, prefix):
    """Remove `prefix` (e.g. DistributedDataParallel's "module.") from every key that has it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def plain_state_dict(obj):
    """The state dict inside a torchvision-style file ({"state_dict": ...}, {"model": ...} or the
    dict itself), without a "module." prefix."""
    sd = obj.get("state_dict", obj.get("model", obj))
    return strip_prefix(dict(sd), "module.") if isinstance(sd, dict) else {}


def _looks_pyslowfast(obj):
    return any(re.match(r"^(module\.)?(backbone\.)?s1\.pathway0_stem\.", str(k)) for k in obj)


def detect_format(obj, source="state dict"):
    """"iboot" (a pretrain.py checkpoint: weights under "encoder"), "pyslowfast" ("model_state" or
    s1.pathway0_stem... names), "torchvision" (a 2D ResNet: 4-D conv1.weight) or "raw" (a SlowResNet
    state dict: 5-D conv1.weight). Anything else: ValueError naming `source`."""
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a checkpoint dict or a state dict, got {type(obj).__name__}")
    if isinstance(obj.get("encoder"), dict):
        return "iboot"
    if "model_state" in obj or _looks_pyslowfast(obj):
        return "pyslowfast"
    w = plain_state_dict(obj).get("conv1.weight")
    if torch.is_tensor(w) and w.dim() in (4, 5):
        return "torchvision" if w.dim() == 4 else "raw"
    raise ValueError(f"{source}: unknown weights format (not an iboot checkpoint, a PySlowFast checkpoint, "
                     f"a torchvision 2D ResNet or a SlowResNet state dict); first keys: {list(obj)[:5]}")
