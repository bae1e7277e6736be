"""What a run writes for people and for reproduce/collect.py: printed lines, progress, logs, records.

    print_main(...)                     print on rank 0 only
    lock_output_dir(folder)             one run writes a folder: an OS lock on folder/.lock, taken before
                                        anything is written there, held until the process ends
    Progress(total, desc)               a tqdm bar on a terminal, plain lines otherwise (SLURM .out files)
    JsonlLogger(path).log(**record)     one JSON object per line (log.jsonl), rank 0
    save_config(flags, output_dir)      config.json: every flag and run_environment() (code, packages,
                                        command line, processes), and the data the run reads
    write_result(results_dir, record)   one JSON file per evaluation, written atomically
    sha256_file(path) / no_space(error) the hash a record gives of a file; a write that failed for lack of
                                        space (or quota)
"""
import errno
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shlex
import socket
import subprocess
import sys
import time

import distributed


def print_main(*args, **kwargs):
    if distributed.is_main():
        print(*args, **kwargs, flush=True)


LOCK_NAME = ".lock"
_held_locks = {}  # absolute folder -> file descriptor of its lock, open for the life of the process


def lock_output_dir(folder):
    """One run writes a folder: an exclusive POSIX lock (fcntl.lockf) on folder/.lock, taken before
    anything is written there and held until the process ends. The kernel releases it when the process
    dies, SIGKILL included, so no run leaves a stale lock; forked data-loading workers do not inherit it.
    Under torchrun rank 0 takes it and every rank stops with the same line when another run holds it:
    "--output_dir F is in use by another run (pid P on HOST since ...)". On network file systems the lock
    is as good as their fcntl locks (NFS: the lock manager; Lustre: mounted with -o flock); where the
    file system refuses locks, a warning says that nothing stops a second run and this one goes on."""
    error = _take_lock(folder) if distributed.is_main() else None
    error = distributed.gather_objects(error)[0]
    if error:
        raise ValueError(error)


def _take_lock(folder):
    """None once this process holds folder's lock (or the file system has no locks), else the line."""
    key = os.path.abspath(folder)
    if key in _held_locks:
        return None
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "its pid not written yet"
        os.close(fd)
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return (f"--output_dir {folder} is in use by another run ({holder}); wait for it to end or stop it, "
                    f"or pass another --output_dir")
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            print_main(f"warning: --output_dir {folder}: its file system does not support locks "
                       f"({os.strerror(e.errno)}); nothing stops a second run from writing into it")
            return None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
              .encode(), 0)
    _held_locks[key] = fd
    return None


class Progress:
    """Progress of a loop on rank 0: a tqdm bar when stderr is a terminal; otherwise (a SLURM .out
    file, a pipe) one plain line every `log_every` steps and at the end, with no carriage returns."""

    def __init__(self, total, desc, log_every=10):
        self.total, self.desc, self.log_every, self.n, self.info = total, desc, max(1, log_every), 0, {}
        self.t0 = time.time()
        self.active = distributed.is_main()
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


class JsonlLogger:
    """Appends one JSON object per line; only rank 0 writes. With tensorboard_dir, every number of a
    record is also a TensorBoard scalar "<kind>/<name>" at the record's step (or epoch)."""

    def __init__(self, path, tensorboard_dir=None):
        self.path, self.tb = path, None
        if not distributed.is_main():
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
            self.tb = SummaryWriter(tensorboard_dir)

    def log(self, **record):
        if not distributed.is_main():
            return
        record.setdefault("time", time.time())
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            x = record.get("step", record.get("epoch", 0))
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch", "iter", "time"):
                    self.tb.add_scalar(f"{record.get('kind', 'log')}/{k}", v, x)

    def close(self):
        if self.tb is not None:
            self.tb.close()


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
                world_size=distributed.world_size(), python=sys.version.split()[0],
                versions={p: _version(p) for p in ("torch", "torchvision", "timm", "open_clip_torch", "av",
                                                   "numpy")})


def save_config(flags, output_dir, name="config.json", data=None):
    """config.json beside the checkpoints: every flag, plus run_environment() under "environment" and,
    given, the data the run reads under "data" ({split: data.fingerprint})."""
    if distributed.is_main():
        os.makedirs(output_dir, exist_ok=True)
        record = dict(vars(flags), environment=run_environment(), **({} if data is None else dict(data=data)))
        with open(os.path.join(output_dir, name), "w") as f:
            json.dump(record, f, indent=2, sort_keys=True, default=str)


def write_result(results_dir, record):
    """One JSON file per evaluation run; reproduce/collect.py reads the folder.

    record: method, teacher, pretrain_data, pretrain_epochs, dataset, split, metric, value, config...
    """
    if not distributed.is_main():
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


def sha256_file(path, limit=None):
    """Hex SHA-256 of a file, or of its first `limit` bytes."""
    digest, left = hashlib.sha256(), limit if limit is not None else float("inf")
    with open(path, "rb") as f:
        while left > 0:
            block = f.read(int(min(1 << 20, left)))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def no_space(error):
    """ENOSPC or EDQUOT anywhere in the exception chain (torch.save re-raises a write error as RuntimeError)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False
