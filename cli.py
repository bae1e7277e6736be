"""The command line of every script: read-only flags with printed defaults, checked values, one-line
errors, and signals that stop a run cleanly.

    run_cli(main, parser)        main(args); bad input ends in one line and status 2, a signal in one
                                 line and 128 + its number
    SetupError / Diverged        what the user must fix (the message names the flag)
    Stopped / GracefulStop       SIGTERM and Ctrl-C: finish the step, checkpoint, stop
    unset_defaults(args, d, why) the defaults a run takes for the flags left unset (printed)
    freeze(args, **values)       a read-only copy of the flags with those values: what a script reads
    check_flags(args, rules)     every flag value against what is allowed, before anything is written
"""
import argparse
import math
import signal
import sys

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
        self.signum = self.signum or (int(distributed.all_reduce_max(self.signum or 0, device)) or None)
        return self.signum is not None


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
