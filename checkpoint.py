"""Checkpoints: atomic files, runs that resume only what their flags describe, weight-file formats, and
loading that never runs code from a file.

    save(obj, path) / load(path)       atomic write (temporary file + rename) with the user's usual
                                       file permissions; a full disk leaves the previous file intact.
                                       load reads tensors, numbers, strings, lists and dicts only
                                       (torch.load weights_only=True, or a safetensors file, known by
                                       its header); a file that needs full unpickling (a pickle can run
                                       any code) is refused, one line naming it and the global it asks
                                       for, unless --trust_checkpoint (add_trust_arg) allows it
    save_safetensors(ckpt, path)       a state dict as safetensors, the other entries in its metadata
    unsafe_entry(obj)                  the first entry a weights-only load would refuse (save checks)
    save_run(output_dir, state, ...)   a training run's state (every rank's random state included)
    resume_run(output_dir, fingerprint)  that state again, only when the run's fingerprint agrees; a
                                       checkpoint of earlier versions (numpy random states) says how to
                                       go on, and with --trust_checkpoint is rewritten in the safe format
    run_fingerprint(args, files)       the flags that define a run (and the content of the files it
                                       starts from), without those that only change logging or paths
    detect_format(obj) / strip_prefix  what a weights file is: iboot, PySlowFast, torchvision, raw
"""
import argparse
import collections
import json
import os
import pickle
import pickletools
import re
import shutil
import struct
import sys
import tempfile
import zipfile

import torch

import cli
import distributed
import records
import rng

CHECKPOINT_NAME = "checkpoint.pth"
_TMP_PREFIX = ".tmp_"

# Flags that change how a run is watched or where it writes, not what it computes: a run may be
# resumed with other values for them (every other flag must agree).
FREE_FLAGS = frozenset({"output_dir", "log_every", "tensorboard", "num_workers", "saveckp_freq", "device",
                        "knn_eval", "eval_freq", "results_dir", "run_name", "dump_features", "monitor_videos",
                        "knn_every", "trust_checkpoint", "allow_unseen_labels"})


def _new_file_mode():
    """The mode open() gives a new file under the current umask (mkstemp's 0600 would hide checkpoints
    from the user's group). os.umask can only be read by setting it, so it is set back at once."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _write_atomically(path, write):
    """write(f) into a temporary file in the same folder, then rename: a crash or a full disk at any
    moment leaves the previous file (or none), never a truncated one, and no temporary file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if records.no_space(e):
            raise cli.SetupError(f"no space left on the device of {folder} while writing "
                                 f"{os.path.basename(path)}; the previous checkpoint is intact. Free "
                                 f"space there or pass another --output_dir") from None
        raise


def save(obj, path, copy_of=None):
    """torch.save, atomically (_write_atomically). obj holds only what load() reads back without
    --trust_checkpoint (tensors, numbers, strings, lists, tuples and dicts): anything else is a
    TypeError naming the entry, before anything is written. With copy_of (a file path) the bytes of
    that file are written instead of obj."""
    if copy_of is None:
        entry = unsafe_entry(obj)
        if entry:
            raise TypeError(f"cannot save {os.path.basename(path)}: {entry}; a checkpoint holds only tensors, "
                            f"numbers, strings, lists, tuples and dicts (what torch.load(weights_only=True) reads)")

    def write(f):
        if copy_of is None:
            torch.save(obj, f)
        else:
            with open(copy_of, "rb") as src:
                shutil.copyfileobj(src, f)
    _write_atomically(path, write)


def remove_stale_temporaries(folder):
    """Temporary files left by a run killed while it wrote a checkpoint. Returns their number."""
    if not os.path.isdir(folder):
        return 0
    stale = [f for f in os.listdir(folder) if f.startswith(_TMP_PREFIX) and f.endswith(".pth")]
    for name in stale:
        os.remove(os.path.join(folder, name))
    return len(stale)


# ----------------------------------------------------------------------------------------------
# Loading without running code from the file
# ----------------------------------------------------------------------------------------------

TRUST_FLAG = "--trust_checkpoint"
# What torch.load(weights_only=True) rebuilds (torch.serialization's default allowlist), by exact type:
# a numpy float is a float subclass but needs numpy's globals to unpickle.
_PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes, bytearray, torch.dtype, torch.device, torch.Size,
                torch.Tensor, torch.nn.Parameter)
_CONTAINERS = (dict, collections.OrderedDict, list, tuple, set)
# The globals of a numpy array: what the random state of checkpoints written before the safe format
# asks for (numpy 1 names its module numpy.core, numpy 2 numpy._core).
_NUMPY_ARRAY_GLOBAL = re.compile(r"^numpy\.((_?core\.multiarray\._reconstruct)|ndarray|dtype|dtypes\.\w+DType)$")
# torch's weights-only unpickler names the refused global: "Trying to load unsupported GLOBAL
# posix.system whose module posix is blocked", "Unsupported global: GLOBAL argparse.Namespace was not
# an allowed global by default" (torch 2.4+), "Unsupported class numpy.core.multiarray._reconstruct"
# (torch 2.0-2.3).
_REFUSED_GLOBAL = re.compile(r"(?:GLOBAL|Unsupported class)\s+([A-Za-z_][\w.]*\w)")
_SAFETENSORS_ENTRIES = "iboot"  # metadata key of the entries beside the tensors (save_safetensors)


def add_trust_arg(parser):
    """The --trust_checkpoint flag of every script that loads a file the user names."""
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help="also load files that need full unpickling, which can run any code the file holds: "
                             "only for files whose source you trust (a warning names each file loaded so). Without "
                             "it only tensors, numbers, strings, lists and dicts are read (torch.load "
                             "weights_only=True, or safetensors)")


class UnsafeCheckpoint(cli.SetupError):
    """A file that loads only with full unpickling: `names` are the globals (classes, functions) it asks
    for, `asks` says so in words ("it asks for posix.system")."""

    def __init__(self, message, path, names, asks):
        super().__init__(message)
        self.path, self.names, self.asks = path, names, asks


def unsafe_entry(obj, where="checkpoint"):
    """The first entry of `obj` that torch.load(weights_only=True) would refuse, as
    "checkpoint['random_state'][0]['numpy'] is a numpy.ndarray", or None when there is none."""
    if type(obj) in _PLAIN_TYPES:
        return None
    if type(obj) in _CONTAINERS:
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for key, value in items:
            found = unsafe_entry(key, f"a key of {where}") or unsafe_entry(value, f"{where}[{key!r}]")
            if found:
                return found
        return None
    return f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}"


def file_kind(path):
    """"safetensors" (an 8-byte header length, then a JSON header), "torch" (a zip archive of torch.save,
    or a pickle of older torch.save) or None (not a weights file), from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] <= os.path.getsize(path) - 8:
        return "safetensors"
    if zipfile.is_zipfile(path) or head[:1] == b"\x80":
        return "torch"
    return None


def _refused_globals(error, path):
    """The globals a file asks for that the weights-only load refused: the one torch's error names, then
    the others a static scan of the pickle finds (torch.serialization.get_unsafe_globals_in_checkpoint
    reads the opcodes without running them; zip archives only)."""
    names = _REFUSED_GLOBAL.findall(str(error))
    try:
        scanned = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - a pickle the scan cannot read: the error's name is all there is
        scanned = []
    return list(dict.fromkeys(names + sorted(scanned)))


def is_numpy_only(names):
    """Whether the refused globals are only those of numpy arrays (checkpoints of earlier versions)."""
    return bool(names) and all(_NUMPY_ARRAY_GLOBAL.match(n) for n in names)


def _asks_for(names, error):
    """What a refused file asks for, in words: its first refused global (and how many others), or the
    pickle instruction the weights-only unpickler does not read (e.g. FRAME, in a protocol-4 pickle)."""
    if not names:
        opcode = re.search(r"Unsupported operand (\d+)", str(error))
        if opcode:
            code = int(opcode.group(1))
            op = pickletools.code2op.get(chr(code))
            name = f" ({op.name})" if op else ""
            return f"its pickle uses opcode {code}{name}, which a weights-only load does not read"
        return f"its pickle needs more than a weights-only load reads ({_one_line(error)})"
    others = len(names) - 1
    return f"it asks for {names[0]}" + (f" and {others} other global{'s' * (others > 1)}" if others else "")


def _one_line(error):
    detail = " ".join(str(error).split())
    return f"{type(error).__name__}: {detail[:300]}" if detail else type(error).__name__


def load(path, map_location="cpu", trust=False, flag=None):
    """The object in a weights file, read without running code from it: torch.load(weights_only=True)
    (tensors, numbers, strings, lists, tuples, dicts, and the argparse.Namespace that timm's and DINO's
    training checkpoints hold), or a safetensors file (recognised by its header,
    whatever its name). A file that needs full unpickling raises UnsafeCheckpoint, one line naming it
    (after `flag`, e.g. "--pretrained"), the global it asks for and --trust_checkpoint; with trust=True
    it is loaded with full unpickling, after a warning (rank 0). FileNotFoundError / ValueError for a
    missing or unreadable file."""
    label = f"{flag} {path}" if flag else str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{label}: no such file" if flag else f"checkpoint not found: {path}")
    kind = file_kind(path)
    if kind == "safetensors":
        return _load_safetensors(path, label, map_location)
    if kind is None:
        with open(path, "rb") as f:
            head = f.read(16)
        raise ValueError(f"could not read checkpoint {label}: not a PyTorch or safetensors file (it starts with "
                         f"{head!r})")
    try:
        # argparse.Namespace: the "args" of timm's and DINO's training checkpoints. The weights-only
        # unpickler only creates it and fills its attributes, which go through the same safe loader.
        with open(path, "rb") as f, torch.serialization.safe_globals([argparse.Namespace]):
            # a file object: torch.load would take a name ending in .safetensors for one
            return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = e
    except Exception as e:  # a damaged file: say which one
        raise ValueError(f"could not read checkpoint {label}: {_one_line(e)}") from e
    names = _refused_globals(refused, path)
    what = _asks_for(names, refused)
    if not trust:
        earlier = ", as checkpoints of earlier iboot versions do" if is_numpy_only(names) else ""
        raise UnsafeCheckpoint(f"{label} loads only with full unpickling, which can run code from the file: "
                               f"{what}{earlier}. Pass {TRUST_FLAG} to load it only if you trust where it comes "
                               f"from", path, names, what)
    if distributed.is_main():
        print(f"warning: {TRUST_FLAG}: loading {label} with full unpickling ({what}); a file loaded so can run "
              f"any code it holds", file=sys.stderr, flush=True)
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location=map_location, weights_only=False)
    except Exception as e:
        raise ValueError(f"could not read checkpoint {label}: {_one_line(e)}") from e


def save_safetensors(ckpt, path, tensors="encoder"):
    """ckpt[tensors] (a state dict) as a safetensors file, atomically; the other entries of ckpt (numbers,
    strings, lists, dicts) go into its metadata as JSON, so that load() gives ckpt back."""
    import safetensors.torch
    entries = {k: v for k, v in ckpt.items() if k != tensors}
    metadata = {_SAFETENSORS_ENTRIES: json.dumps(dict(tensors=tensors, entries=entries), sort_keys=True)}
    blob = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in ckpt[tensors].items()}, metadata)
    _write_atomically(path, lambda f: f.write(blob))


def _load_safetensors(path, label, map_location="cpu"):
    """The tensors of a safetensors file; one written by save_safetensors gives its whole checkpoint."""
    import safetensors
    try:
        with safetensors.safe_open(path, framework="pt", device=str(map_location)) as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if _SAFETENSORS_ENTRIES not in metadata:
            return tensors
        layout = json.loads(metadata[_SAFETENSORS_ENTRIES])
        return dict(layout["entries"], **{layout["tensors"]: tensors})
    except Exception as e:  # a damaged header or metadata: say which file
        raise ValueError(f"could not read checkpoint {label}: {_one_line(e)}") from e


# ----------------------------------------------------------------------------------------------
# Runs: fingerprint, save, resume
# ----------------------------------------------------------------------------------------------

def file_fingerprint(path):
    """Path, size and SHA-256 of a file: the weights a run starts from are part of what it is."""
    return dict(path=os.path.abspath(path), size=os.path.getsize(path), sha256=records.sha256_file(path))


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


def check_resumable(path, fingerprint, trust=False):
    """Load the checkpoint at `path` and stop, with one line naming every differing flag, when it was
    written by a run with other defining flags. A checkpoint that needs full unpickling (one written
    before checkpoints held only tensors, numbers, strings, lists and dicts) stops with one line that
    says how to go on, unless `trust` (--trust_checkpoint)."""
    folder = os.path.dirname(path)
    try:
        ckpt = load(path, trust=trust)
    except UnsafeCheckpoint as e:
        name, asks = os.path.basename(path), e.asks
        if is_numpy_only(e.names):
            raise UnsafeCheckpoint(
                f"--output_dir {folder} holds {name} in the format of earlier iboot versions, which loads only "
                f"with full unpickling ({asks}), and so could run code. To go on: start the run in another "
                f"--output_dir, or, if you wrote this checkpoint, run the same command once with {TRUST_FLAG}: "
                f"the run resumes and its checkpoints load safely from then on", path, e.names, asks) from None
        raise UnsafeCheckpoint(f"--output_dir {folder} holds {name}, which loads only with full unpickling, which "
                               f"can run code from the file: {asks}. Pass another --output_dir, or {TRUST_FLAG} only "
                               f"if you trust where that file comes from", path, e.names, asks) from None
    if not isinstance(ckpt, dict) or "fingerprint" not in ckpt:
        raise ValueError(f"--output_dir {folder} holds {os.path.basename(path)} without a run fingerprint "
                         f"(not written by this version of iboot); pass another --output_dir")
    difference = fingerprint_difference(ckpt["fingerprint"], fingerprint)
    if difference:
        raise ValueError(f"--output_dir {folder} holds a run with other settings: {difference}. Start it "
                         f"again with its own flags to resume it, or pass another --output_dir")
    return ckpt


def _rewrite_safely(path, ckpt):
    """A run checkpoint loaded with full unpickling written again (rank 0) in the format a weights-only
    load reads, when converting its random states (numpy arrays and tuples -> lists: the checkpoints of
    earlier versions) is all it takes. Returns the converted checkpoint."""
    converted = dict(ckpt, random_state=[rng.portable_state(s) for s in ckpt["random_state"]])
    if unsafe_entry(converted) is None and distributed.is_main():
        save(converted, path)
        print(f"{path} rewritten in the format that loads without {TRUST_FLAG}", flush=True)
    return converted


def resume_run(output_dir, fingerprint, generators=None, trust=False):
    """The run state saved in output_dir (None when there is none): checked against `fingerprint`,
    this rank's random state restored (with the named torch Generators'). Also removes temporary
    files left by a killed write. trust (--trust_checkpoint): a checkpoint that needs full unpickling
    is loaded, and rewritten in the safe format when it is one of earlier iboot versions."""
    if distributed.is_main():
        remove_stale_temporaries(output_dir)
    path = os.path.join(output_dir, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        return None
    ckpt = check_resumable(path, fingerprint, trust)
    if unsafe_entry(ckpt) is not None:
        ckpt = _rewrite_safely(path, ckpt)
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
