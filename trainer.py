"""The one training loop of the project: pretraining (pretrain.py) and every classifier protocol
(linear probe, fine-tuning, semi-supervised: classifier.py) run through it with their own step.

    setup(args, defaults, reason, rules)   join torchrun, the flags with their defaults (read-only from
                                           here on), checked; global batch, precision, seeds, the
                                           synthetic set. Returns (flags, device)
    Schedule                               lr per iteration: linear warm-up, then cosine (MAE's lr_sched)
    Trainer(...)                           the run: loader, module, optimiser, checkpoints, logs
      .resume(extra) -> RunState           --output_dir locked for this run (records.lock_output_dir); the
                                           state saved there, only when the flags that define the run
                                           agree (checkpoint.run_fingerprint)
      .start(*datasets)                    config.json (with the data's fingerprints) and the missing-videos
                                           list, once resume agreed
      .fit(step, state, after_epoch)       the epochs: lr, step, skipped videos, signal stop with a
                                           mid-epoch checkpoint, epoch record, epoch checkpoint

A step function takes (batch, At) and returns {"n": videos in the batch, "loss": float, ...}: every
other number is averaged over the epoch's videos (all ranks) and logged. Every random stream of an
epoch derives from (seed, epoch): the data order and clips from data.start_epoch, the named torch
Generators (e.g. pretraining's device-side augmentation) from rng.derive_seed, restored from the
checkpoint when a run resumes mid-epoch, so that it ends with the weights of an uninterrupted run.
"""
import dataclasses
import os
import time

import numpy as np

import checkpoint
import cli
import data
import distributed
import precision
import records
import rng


def setup(args, defaults, reason, rules, batch_flag="batch_size_per_gpu"):
    """Join torchrun; the flags: `args` with `defaults` for the unset ones (printed with `reason`),
    checked against `rules` (cli.check_flags), plus world_size, global_batch and the resolved
    precision; global generators seeded from (seed, rank); the synthetic set generated when it is
    asked for. Returns (flags, device); `args` is not changed."""
    rank, world, device = distributed.init(args.device)
    flags = cli.freeze(args, **cli.unset_defaults(args, defaults, reason))
    cli.check_flags(flags, rules)
    if getattr(flags, "warmup_epochs", 0) > getattr(flags, "epochs", 0) > 0:
        raise ValueError(f"--warmup_epochs {flags.warmup_epochs}: must be at most --epochs {flags.epochs}")
    flags = cli.freeze(flags, world_size=world, global_batch=getattr(flags, batch_flag) * world,
                       precision=precision.resolve(flags.precision, device))
    rng.seed_everything(rng.derive_seed(flags.seed, "global", rank))
    if flags.dataset == "synthetic":
        data.ensure_synthetic_dataset(flags.data_root)
    return flags, device


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Linear warm-up from warmup_start_lr to base_lr over warmup_epochs, then cosine to 0, per
    iteration. The paper: pretraining warms up 8 epochs then cosine; linear probe 0 -> 1.0 over 8
    epochs; SSv2 fine-tuning 0.08 -> 0.15 over 3 epochs."""
    base_lr: float
    epochs: int
    iters_per_epoch: int
    warmup_epochs: float = 0.0
    warmup_start_lr: float = 0.0

    @property
    def total_steps(self):
        return self.epochs * self.iters_per_epoch

    @property
    def warmup_steps(self):
        return int(round(self.warmup_epochs * self.iters_per_epoch))

    def lr(self, step):
        return warmup_cosine_lr(step, self.total_steps, self.warmup_steps, self.base_lr, self.warmup_start_lr)


def warmup_cosine_lr(step, total_steps, warmup_steps, base_lr, warmup_start_lr=0.0):
    """The rate at iteration `step`: linear from warmup_start_lr to base_lr over warmup_steps, then a
    cosine from base_lr to 0 at total_steps."""
    if step < warmup_steps:
        return warmup_start_lr + (base_lr - warmup_start_lr) * step / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return float(base_lr * 0.5 * (1.0 + np.cos(np.pi * progress)))


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def iterations_per_epoch(loader, max_iters):
    """Steps of a full epoch (--max_iters_per_epoch caps them), also while the loader skips the steps
    a resumed run has done (data.ResumableSampler)."""
    samples = getattr(loader.sampler, "num_samples", None)  # this rank's share of a whole epoch
    batches = len(loader) if samples is None else samples // loader.batch_size
    return min(batches, max_iters) if max_iters else batches


@dataclasses.dataclass(frozen=True)
class At:
    """Where a step runs: 1-based epoch, iteration in it, global step, the schedule and the rate."""
    epoch: int
    iteration: int
    step: int
    total_steps: int
    lr: float

    def __str__(self):
        return f"epoch {self.epoch}, iteration {self.iteration}, lr {self.lr:.4g}"


@dataclasses.dataclass
class RunState:
    """Where a run stands, beside its weights: epochs done, iterations done in the next one and their
    sums (a run stopped by a signal), and the job's own entries (e.g. the best test so far)."""
    epoch: int = 0
    iteration: int = 0
    sums: dict = None
    extra: dict = dataclasses.field(default_factory=dict)


class Trainer:
    """A training run. Reads the flags output_dir, epochs, lr, warmup_epochs, warmup_start_lr (0 if
    absent), max_iters_per_epoch, seed, log_every, max_skip_share, saveckp_freq (0 if absent:
    keep only the latest checkpoint), tensorboard and trust_checkpoint (off if absent).

    module: what trains (put in train mode each epoch; DDP-wrapped or not); state_dict() -> the
    entries of the checkpoint that hold the weights, load_state_dict(ckpt) puts them back;
    generators: {name: torch.Generator} reseeded every epoch and saved mid-epoch."""

    def __init__(self, flags, loader, device, module, optimizer, scaler, state_dict, load_state_dict,
                 fingerprint, generators=None):
        self.flags, self.loader, self.device, self.module = flags, loader, device, module
        self.optimizer, self.scaler = optimizer, scaler
        self.state_dict, self.load_state_dict = state_dict, load_state_dict
        self.fingerprint, self.generators = fingerprint, dict(generators or {})
        self.output_dir = flags.output_dir
        self.schedule = Schedule(flags.lr, flags.epochs, iterations_per_epoch(loader, flags.max_iters_per_epoch),
                                 flags.warmup_epochs, getattr(flags, "warmup_start_lr", 0.0))
        self.stop = cli.GracefulStop()
        self.skipped = data.SkippedVideos(self.output_dir, flags.max_skip_share)
        self.logger = None

    # ------------------------------------------------------------------------------------------
    # Resume, start, checkpoints
    # ------------------------------------------------------------------------------------------

    def resume(self, extra=None):
        """The RunState of --output_dir's checkpoint (weights, optimiser and random state restored), or
        a fresh one with `extra` ({entry: value of a new run}) when there is none. First of all the
        folder is locked: a second run with the same --output_dir stops here, before it writes anything."""
        records.lock_output_dir(self.output_dir)
        extra = dict(extra or {})
        ckpt = checkpoint.resume_run(self.output_dir, self.fingerprint, self.generators,
                                     trust=getattr(self.flags, "trust_checkpoint", False))
        if ckpt is None:
            return RunState(extra=extra)
        self.load_state_dict(ckpt)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        where = f", {ckpt['iteration']} iterations into epoch {ckpt['epoch'] + 1}" if ckpt["iteration"] else ""
        records.print_main(f"resumed from {self.output_dir}: {ckpt['epoch']} of {self.flags.epochs} epochs done{where}")
        return RunState(ckpt["epoch"], ckpt["iteration"], ckpt["partial"], {k: ckpt[k] for k in extra})

    def start(self, *datasets):
        """What a run writes before training, once resume has accepted its flags: config.json (with what
        it reads of each list, data.fingerprints), the list of the videos --skip_missing left out, and the
        log."""
        seen = data.fingerprints(*datasets)
        records.save_config(self.flags, self.output_dir, data=seen)
        data.write_missing_videos(self.output_dir, *datasets)
        tensorboard = os.path.join(self.output_dir, "tensorboard") if getattr(self.flags, "tensorboard", False) else None
        self.logger = records.JsonlLogger(os.path.join(self.output_dir, "log.jsonl"), tensorboard)
        self.logger.log(kind="data", data=seen)  # at every start: a run resumed on a changed list shows it

    def save(self, state):
        keep = getattr(self.flags, "saveckp_freq", 0)
        keep_as = (f"checkpoint_{state.epoch:04d}.pth" if keep and state.iteration == 0 and state.epoch % keep == 0
                   else None)
        checkpoint.save_run(self.output_dir, dict(
            self.state_dict(), optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
            fingerprint=self.fingerprint, args=vars(self.flags), epoch=state.epoch, iteration=state.iteration,
            partial=state.sums, **state.extra), keep_as=keep_as, generators=self.generators)

    # ------------------------------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------------------------------

    def fit(self, step, state, after_epoch=None):
        """Train from `state` to the last epoch. after_epoch(epoch, state), if given, runs after each
        epoch and before its checkpoint (a periodic test, learning monitors); the numbers it returns join
        the epoch's record and line. A signal stops the run after its current step with a checkpoint
        that resumes mid-epoch (cli.Stopped); one after the last step, after the last epoch's checkpoint."""
        with self.stop:
            for epoch in range(state.epoch + 1, self.flags.epochs + 1):
                self._epoch(step, epoch, state, after_epoch)
            # A signal handled after the last step's check (during the last epoch's record, test or
            # checkpoint) stops the run here, before its closing work (a k-NN, a multi-view test: minutes),
            # which would otherwise run as if nothing had been asked.
            if self.stop.requested(self.device):
                raise self.stop.stopped(state.epoch, None, self.output_dir)
        return state

    def _epoch(self, step, epoch, state, after_epoch):
        first_iter = state.iteration
        data.start_epoch(self.loader, epoch, first_iter)
        if first_iter == 0:
            for name, g in self.generators.items():
                g.manual_seed(rng.derive_seed(self.flags.seed, name, epoch, distributed.rank()))
        sums, started = dict(state.sums or dict(n=0.0, loaded=0)), time.time()
        stopped_at = self._iterations(step, epoch, first_iter, sums)
        if stopped_at is not None:
            state.iteration, state.sums = stopped_at, sums
            self.save(state)
            raise self.stop.stopped(epoch, stopped_at, self.output_dir)
        stats = dict(self._epoch_stats(epoch, sums), seconds=time.time() - started)
        state.epoch, state.iteration, state.sums = epoch, 0, None
        if after_epoch is not None:
            stats.update(after_epoch(epoch, state) or {})
        records.print_main(f"epoch {epoch}/{self.flags.epochs}: " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items() if k != "epoch"))
        self.logger.log(kind="epoch", **stats)
        self.save(state)

    def _epoch_stats(self, epoch, sums):
        """The epoch's means over every rank's videos, its last rate and its skipped videos."""
        skipped = self.skipped.end_epoch(sums["loaded"], self.device, f"epoch {epoch}")
        n = max(1.0, distributed.all_reduce_sum(sums["n"], self.device))
        means = {k: distributed.all_reduce_sum(v, self.device) / n for k, v in sorted(sums.items())
                 if k not in ("n", "loaded")}
        last_lr = self.schedule.lr(epoch * self.schedule.iters_per_epoch - 1)
        return dict(epoch=epoch, **means, lr=last_lr, skipped_videos=skipped)

    def _iterations(self, step, epoch, first_iter, sums):
        """Iterations first_iter.. of one epoch; `sums` accumulates them. Returns the next iteration
        when a signal stopped the epoch, else None."""
        self.module.train()
        schedule, log_every = self.schedule, self.flags.log_every
        iters = schedule.iters_per_epoch
        progress = records.Progress(iters - first_iter, f"epoch {epoch}/{self.flags.epochs}", log_every)
        end = time.time()
        for it, batch in enumerate(self.loader, start=first_iter):
            if it >= iters:
                break
            at = At(epoch, it, (epoch - 1) * iters + it, schedule.total_steps, schedule.lr((epoch - 1) * iters + it))
            set_lr(self.optimizer, at.lr)
            self.skipped.add(batch["skipped"])
            sums["loaded"] += len(batch["skipped"]) + batch["clips"].shape[0]
            waited = time.time() - end
            if batch["clips"].shape[0] > 0:  # else every video of this batch was undecodable
                out = step(batch, at)
                elapsed = max(time.time() - end, 1e-9)
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + (v if k == "n" else v * out["n"])
                videos_per_s = out["n"] * distributed.world_size() / elapsed
                progress.update(loss=f"{out['loss']:.4f}", lr=f"{at.lr:.3g}", videos_s=f"{videos_per_s:.1f}")
                if it % log_every == 0 or it == iters - 1:
                    self.logger.log(kind="step", epoch=epoch, iter=it, step=at.step, lr=at.lr,
                                    videos_per_s=videos_per_s, data_wait_frac=waited / elapsed,
                                    **{k: v for k, v in out.items() if k != "n"})
            end = time.time()
            if self.stop.requested(self.device):
                progress.close()
                return it + 1
        progress.close()
        return None
