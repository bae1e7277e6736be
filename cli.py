"""The command line of every script: read-only flags with printed defaults, checked values, one-line
errors, and signals that stop a run cleanly.

    run_cli(main, parser)        main(args); bad input ends in one line and status 2, a signal in one
                                 line and 128 + its number, a dead data-loading worker in one line and
                                 status 1; under torchrun the line is also the rank's error file
    SetupError / Diverged        what the user must fix (the message names the flag)
    Stopped / GracefulStop       SIGTERM and Ctrl-C: finish the step, checkpoint, stop
    WorkerWatch                  a data-loading worker that dies (OOM killer, crash) ends the run in seconds
    unset_defaults(args, d, why) the defaults a run takes for the flags left unset (printed)
    freeze(args, **values)       a read-only copy of the flags with those values: what a script reads
    check_flags(args, rules)     every flag value against what is allowed, before anything is written
"""
import argparse
import json
import math
import multiprocessing
import os
import re
import signal
import sys
import threading
import time

import distributed
import records


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


def _last_line(line):
    """The line a process ends with: on stderr in one write (under torchrun every rank shares one pipe,
    and a write of under PIPE_BUF, 4096 bytes, is not interleaved with another rank's; print writes the
    text and its newline in two calls, so two ranks' lines could run together on one line), and under
    torchrun also this rank's error file (TORCHELASTIC_ERROR_FILE), so that the report torchrun prints
    when a rank fails shows it as the root cause instead of a pointer to its docs."""
    sys.stdout.flush()
    sys.stderr.flush()
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        try:
            with open(path, "w") as f:
                json.dump({"message": line, "timestamp": int(time.time())}, f)
        except OSError:
            pass


def _one_line_error(message, status=2):
    _last_line(f"error: {message}")
    sys.exit(status)


def _quiet_signals():
    """Default dispositions for the signals whose handlers raise (SIGTERM, SIGINT; PyTorch's SIGCHLD
    handler, which raises when a data-loading worker dies): once a run is ending, a signal ends the
    process without a traceback from inside the interpreter's shutdown."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)


def run_cli(main, parser):
    """Run a script's main(args). Bad input (a ValueError, FileNotFoundError or SetupError that names
    the flag or file) ends in one line on stderr and exit status 2, not a traceback; a run stopped by
    SIGTERM or Ctrl-C ends in one line and status 128 + the signal number; a data-loading worker that
    died ends the run in one line and status 1, whatever the main process was doing (WorkerWatch)."""
    signal.signal(signal.SIGTERM, _raise_stopped)  # default SIGTERM would end the run without a word
    parser.error = _one_line_error  # argparse's own errors too: one line, not the usage block
    workers = WorkerWatch().start()
    try:
        main(parser.parse_args())
    except BaseException as e:  # noqa: B036 (every way out of main is sorted below)
        _quiet_signals()
        _end(e, workers)
    finally:
        _quiet_signals()


def _end(error, workers):
    """The one line (and exit status) of a run that main() left with `error`. The data-loading workers
    still alive are ended first: they ignore SIGTERM, so the interpreter's own clean-up, which joins
    them, would otherwise wait for them forever."""
    dead = workers.dead(error)
    workers.kill_all()
    if dead is not None:  # whatever the main process raised then, the dead worker is the cause
        workers.reported = True
        _one_line_error(workers.message(), status=1)
    if isinstance(error, (ValueError, FileNotFoundError, SetupError)):
        _one_line_error(error)
    if isinstance(error, Stopped):
        _last_line(str(error))
        sys.exit(128 + error.signum)
    if isinstance(error, KeyboardInterrupt):
        _last_line("stopped by SIGINT (Ctrl-C)")
        sys.exit(128 + signal.SIGINT)
    raise error


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
        """The Stopped exception a loop raises once its mid-epoch checkpoint is written (iteration None:
        the signal came after the last step, and the checkpoint is the last epoch's)."""
        name = signal.Signals(self.signum).name
        if iteration is None:
            return Stopped(f"stopped by {name} after the last epoch ({epoch}); checkpoint written to {output_dir}: "
                           f"run the same command again to finish", self.signum)
        return Stopped(f"stopped by {name} at epoch {epoch}, iteration {iteration}; checkpoint written to "
                       f"{output_dir}: run the same command again to resume", self.signum)

    def requested(self, device):
        """Whether any rank got a signal (collective under torchrun: call it on every rank each step)."""
        anyone = int(distributed.all_reduce_max(self.signum or 0, device))  # on every rank, signalled or not
        if anyone:
            self.signum = self.signum or anyone
        # The answer is the reduced value alone: a signal handled after the all-reduce (it runs between any
        # two bytecodes) counts at the next step, on every rank at once.
        return anyone != 0


# ----------------------------------------------------------------------------------------------
# A data-loading worker that dies
# ----------------------------------------------------------------------------------------------

WORKER_DEATH_HINTS = {
    signal.SIGKILL: "which usually means the machine ran out of memory (the kernel's OOM killer): lower "
                    "--num_workers or --batch_size_per_gpu",
    signal.SIGBUS: "which usually means shared memory (/dev/shm) ran out: lower --num_workers or "
                   "--batch_size_per_gpu, or give the job a larger /dev/shm",
    signal.SIGSEGV: "a crash in the decoder or another library (see scan.py to find a video that causes it)",
}


class WorkerWatch:
    """A thread that watches this process's data-loading workers (its multiprocessing children) every
    `interval` seconds. When one dies (killed by a signal, e.g. the kernel's OOM killer, or exited with a
    non-zero status), the others are killed too (one blocked on a queue the dead one held would keep the
    process from ever exiting, and they ignore SIGTERM), which makes PyTorch raise in the main thread at
    once; run_cli then ends the run with message(). Should the main thread not end within `grace`
    seconds, the watch prints that line itself and ends the process (status 1).

    Deaths by SIGTERM or SIGINT are not counted: the training workers ignore both (the main process
    handles them, data.ignore_stop_signals), so only PyTorch's own clean-up ends a worker that way."""

    def __init__(self, interval=0.2, grace=10.0):
        self.interval, self.grace = interval, grace
        self._seen, self._dead, self.reported = {}, None, False
        self._lock = threading.Lock()

    def start(self):
        threading.Thread(target=self._watch, name="data-worker-watch", daemon=True).start()
        return self

    def dead(self, error=None):
        """(pid, exit code or None) of the first worker found dead, else None; once one is, the others are
        killed. `error`: what the main thread raised, whose chain may name a worker that died before the
        watch first saw it (PyTorch reaps a dead worker at once when it is waiting for its batch)."""
        with self._lock:
            if self._dead is None:
                for p in multiprocessing.active_children():
                    self._seen.setdefault(p.pid, p)
                for pid, p in list(self._seen.items()):
                    code = p.exitcode  # kept by its Popen once anyone has reaped it
                    if code is not None:
                        del self._seen[pid]
                        if code > 0 or (code < 0 and -code not in (signal.SIGTERM, signal.SIGINT)):
                            self._dead = self._dead or (pid, code)
                self._dead = self._dead or _death_named_by_pytorch(error)
                if self._dead is not None:
                    self.kill_all()
            return self._dead

    def kill_all(self):
        """SIGKILL to every worker still alive (they ignore SIGTERM)."""
        for p in list(self._seen.values()) + multiprocessing.active_children():
            _kill(p.pid)

    def message(self):
        pid, code = self._dead
        rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
        who = (f"rank {rank}: " if rank is not None else "") + f"a data-loading worker (pid {pid})"
        if code is None:
            what = "died"
        elif code < 0:
            name = signal.Signals(-code).name
            what = f"was killed by {name}" + (f", {WORKER_DEATH_HINTS[-code]}" if -code in WORKER_DEATH_HINTS else "")
        else:
            what = f"exited with status {code}"
        return f"{who} {what}; run the same command again to resume from the last checkpoint"

    def _watch(self):
        while self.dead() is None:
            time.sleep(self.interval)
        time.sleep(self.grace)
        if not self.reported:  # the main thread did not get to say it: say it here
            _last_line(f"error: {self.message()}")
        os._exit(1)


# PyTorch's words for a dead worker (torch/csrc/DataLoader.cpp and utils/data/dataloader.py).
_PYTORCH_DEATH = re.compile(r"DataLoader worker \(pid (\d+)\) is killed by signal: (.+?)\. |DataLoader worker "
                            r"\(pid (\d+)\) exited unexpectedly with exit code (\d+)|DataLoader worker \(pid\(s\) "
                            r"(\d+)[^)]*\) exited unexpectedly")


def _death_named_by_pytorch(error):
    """(pid, exit code or None) of the worker PyTorch names as dead in `error` or its chain, the most
    precise of its words first (a signal or an exit code, then a bare "exited unexpectedly")."""
    signals = {signal.strsignal(s): s for s in signal.Signals}
    found = []
    while error is not None:
        for m in _PYTORCH_DEATH.finditer(str(error)):
            if m[1] and m[2] in signals:
                found.append((0, int(m[1]), -signals[m[2]]))
            elif m[3]:
                found.append((0, int(m[3]), int(m[4])))
            elif m[5]:
                found.append((1, int(m[5]), None))
        error = error.__cause__ or error.__context__
    return min(found, key=lambda f: f[0])[1:] if found else None


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ----------------------------------------------------------------------------------------------
# Flags: defaults, a read-only copy, allowed values
# ----------------------------------------------------------------------------------------------

class Flags(argparse.Namespace):
    """The flags a script reads once its defaults are in: read-only, so that no function changes what
    another one reads (build another with freeze(flags, **values))."""

    def __setattr__(self, name, value):
        raise AttributeError(f"flags are read-only (tried to set --{name}); build a copy with cli.freeze")


def freeze(args, **values):
    """A read-only copy of `args` (any namespace) with `values` set."""
    flags = Flags()
    for key, value in dict(vars(args), **values).items():
        object.__setattr__(flags, key, value)
    return flags


def unset_defaults(args, defaults, reason):
    """{flag: default} for the flags of `defaults` that `args` leaves unset (None), printed with
    `reason` so that a log always says what a run used; `args` is not changed."""
    used = {k: v for k, v in defaults.items() if getattr(args, k, None) is None}
    if used:
        records.print_main(f"defaults for {reason}: " + ", ".join(f"--{k} {v}" for k, v in used.items()))
    return used


def _is_folder_path(path):
    """Whether `path` is a folder or can become one: its nearest existing ancestor (itself included) is a
    folder, not a file."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return os.path.isdir(path)


def _allowed(value, rule):
    if isinstance(rule, tuple):
        return value in rule
    if rule == "folder":
        return _is_folder_path(value)
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
    if rule == "folder":
        return "a folder, not a file (or inside one)"
    if rule.startswith(">="):
        return ">= " + rule[2:]
    if rule.startswith(">"):
        return "> " + rule[1:]
    return "in " + rule.replace(",", ", ")


def check_flags(args, rules):
    """Stop at start-up, before anything is written, with one line naming the flag, its value and what
    is allowed. rules: {flag: ">=a" | ">a" | "[a,b]" | "[a,b)" | "(a,b]" | "(a,b)" | (allowed, values) |
    "folder" (a path that is, or can become, a folder)}.
    Unset (None) flags are skipped; list values are checked one by one; floats must be finite."""
    for flag, rule in rules.items():
        value = getattr(args, flag, None)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and not _allowed(v, rule):
                raise ValueError(f"--{flag} {v}: must be {_describe(rule)}")
