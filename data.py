"""Video data: dataset lists, clip sampling, one-pass decoding, and the synthetic default data set.

    build_dataset(name, root, split, ...)   Kinetics-400/600 (PySlowFast lists), UCF101, HMDB51 (official
                                            splits 1-3), Something-Something v2 (JSON), folder per class,
                                            CSV `path,label`, and "synthetic"
    VideoDataset                            one item = all clips of one video, uint8 (V, 3, T, S, S)
    collate_skip_bad                        sets undecodable videos aside with their reasons ("skipped")
    train_loader / start_epoch              shuffled batches from (seed, epoch), resumable mid-epoch
    build_split / eval_loader               an evaluation's training or test set; a test set's shard per rank
    decoded_batches                         a test set's decodable videos in batches (k-NN, multi-view testing)
    SkippedVideos                           the undecodable videos: listed, counted, too many stop the run
    check_files / write_missing_videos      start-up check that the listed videos exist
    warn_duplicates / check_eval_lists      paths listed twice (a warning), train/test overlap and test
                                            labels training lacks (errors)
    fingerprint(s)(dataset, skipped)        what a run's records state of its data: list file, sha256, root,
                                            videos listed, found, skipped
    make_synthetic_dataset                  small H.264 mp4 set, deterministic from a seed, cached
    ensure_synthetic_dataset                the set in a folder: the one there, else the default one (rank 0)

Sampling follows PySlowFast, in one of two ways (`sampling`, chosen by the data set):
- "kinetics" (datasets/kinetics.py + decoder.py; Kinetics, UCF101, HMDB51 and the rest): a clip covers
  num_frames x stride frames at 30 fps, i.e. num_frames * stride * fps / 30 frames of a video at fps;
  training starts are uniform in [0, max(0, n - window)]; test clip i of K starts at delta * i / K
  (get_start_end_idx with DATA.USE_OFFSET_SAMPLING False; test_spacing="offset" is the True branch);
  T indices are a linspace over the window, clamped to the video (temporal_sampling), so videos
  shorter than the window repeat their last frames instead of being dropped.
- "ssv2" (datasets/ssv2.py get_seq_frames): T frames, one per uniform segment of the whole video, a
  random one of each segment in training and the segment's middle at test (so one test clip).
Test views are resized so the short side is test_crop_size (PySlowFast DATA.TEST_CROP_SIZE, 256 for
224 training crops) and cropped test_crop_size x test_crop_size (3 crops, or 1 as each dataset class).

Each item opens its video once and decodes only what the frames its clips need depend on (video.py).
A video that cannot be decoded gives None (never another video): the collate function counts it and
the training loop reports the count each epoch.
"""
import colorsys
import csv
import hashlib
import json
import math
import os
import signal

import numpy as np
import torch

import augment
import distributed
import records
import rng
from video import DECODE_ERRORS, read_frames, write_video

DATASETS = ("synthetic", "kinetics", "ucf101", "hmdb51", "ssv2", "folder", "csv")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ogv", ".wmv",
                    ".3gp")


# ----------------------------------------------------------------------------------------------
# Sampling (pure functions of the video length, testable without video files)
# ----------------------------------------------------------------------------------------------

def clip_window(fps, num_frames, stride, target_fps=30):
    """Source frames covered by one clip: num_frames x stride frames at target_fps, mapped to fps."""
    return num_frames * stride * fps / target_fps


SAMPLINGS = ("kinetics", "ssv2")
TEST_SPACINGS = ("uniform", "offset")


def default_sampling(dataset):
    """The PySlowFast dataset class a data set follows: ssv2.py for ssv2, kinetics.py for the others
    (PySlowFast fine-tunes UCF101 with TRAIN.DATASET kinetics, finetune_ucf_Slow_R50_syn8.yaml)."""
    return "ssv2" if dataset == "ssv2" else "kinetics"


def clip_start(video_frames, window, clip_idx, num_clips, rng=None, spacing="uniform"):
    """First frame (float) of a clip, as PySlowFast's decoder.get_start_end_idx.

    clip_idx == -1: uniform random in [0, delta], delta = max(video_frames - window, 0). Otherwise
    clip clip_idx of num_clips: spacing "uniform" (DATA.USE_OFFSET_SAMPLING False, PySlowFast's default)
    starts it at delta * i / K, so one clip starts at 0 and the last of K at delta (K-1)/K; "offset"
    (USE_OFFSET_SAMPLING True) at i * floor(delta / (K - 1)), floor(delta / 2) for one clip, so the clips
    reach both ends of the video.
    """
    if spacing not in TEST_SPACINGS:
        raise ValueError(f"--test_spacing must be one of {', '.join(TEST_SPACINGS)}, got {spacing!r}")
    delta = max(video_frames - window, 0)
    if clip_idx == -1:
        return rng.uniform(0, delta)
    if spacing == "offset":
        return math.floor(delta / 2) if num_clips == 1 else clip_idx * math.floor(delta / (num_clips - 1))
    return delta * clip_idx / num_clips


def segment_indices(video_frames, num_frames, rng=None):
    """SSv2 sampling, PySlowFast's ssv2.py get_seq_frames: the video's frames 0..n-1 cut into num_frames
    segments of (n - 1) / T frames; segment i spans [round(s * i), round(s * (i + 1))] (numpy's
    round-half-to-even), and gives a uniformly random frame of it (inclusive, training: rng given) or
    its middle (start + end) // 2 (test: rng None)."""
    seg = (video_frames - 1) / num_frames
    out = []
    for i in range(num_frames):
        start, end = int(np.round(seg * i)), int(np.round(seg * (i + 1)))
        out.append(int(rng.integers(start, end + 1)) if rng is not None else (start + end) // 2)
    return np.array(out, dtype=np.int64)


def clip_indices(video_frames, window, num_frames, start):
    """num_frames indices linspaced over [start, start + window - 1], clamped to [0, video_frames - 1]
    and truncated to integers (PySlowFast's temporal_sampling)."""
    idx = np.linspace(start, start + window - 1, num_frames)
    return np.clip(idx, 0, max(video_frames - 1, 0)).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------

class VideoDataset(torch.utils.data.Dataset):
    """All clips of one video per item.

    videos: list of (path, label) (label None/-1 when unlabelled). mode "train": num_clips clips at
    independent random starts, each with its own random short side and crop (or, with resized_crop =
    (area, aspect), PySlowFast's random resized crop) and flip. mode "test": test_clips clips x
    test_crops crops of test_crop_size (10x3 or 1x1), clip-major order. sampling "kinetics" or "ssv2"
    and test_spacing "uniform" or "offset": see the module docstring.
    Item: {"clips": uint8 (V, 3, T, S, S), "label": int, "index": int}, or, when the file cannot be
    opened or decoded, {"undecodable": path, "reason": "...", "index": int} (collate_skip_bad sets
    those aside; never another video in its place). Every random choice of an item derives from
    (seed, epoch, index), so a run resumed mid-epoch replays it exactly (set_epoch before each epoch).
    """

    def __init__(self, videos, num_clips=1, num_frames=8, stride=8, crop_size=224, short_side=None,
                 mode="train", test_clips=10, test_crops=3, target_fps=30, hflip=True, seed=0,
                 classes=None, decode_threads=1, test_crop_size=None, test_spacing="uniform",
                 sampling="kinetics", resized_crop=None):
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        if num_frames < 1 or stride < 1 or crop_size < 1 or num_clips < 1:
            raise ValueError("num_frames, stride, crop_size and num_clips must be positive")
        self.videos = [(str(p), -1 if lab is None else int(lab)) for p, lab in videos]
        self.num_clips, self.num_frames, self.stride = num_clips, num_frames, stride
        self.crop_size, self.mode, self.target_fps, self.hflip = crop_size, mode, target_fps, hflip
        # Paper: short side in [256, 320] for 224 crops; smaller crops keep the same ratios.
        self.short_side = tuple(short_side) if short_side else (
            int(round(crop_size * 256 / 224)), int(round(crop_size * 320 / 224)))
        # PySlowFast DATA.TEST_CROP_SIZE 256 for TRAIN_CROP_SIZE 224; smaller crops keep the ratio.
        self.test_crop_size = test_crop_size or int(round(crop_size * 256 / 224))
        self.test_clips, self.test_crops = test_clips, test_crops
        self.test_spacing, self.sampling, self.resized_crop = test_spacing, sampling, resized_crop
        self._check_protocol()
        self.seed, self.epoch = seed, 0
        self.classes = classes
        self.decode_threads = decode_threads

    def __len__(self):
        return len(self.videos)

    @property
    def views_per_video(self):
        return self.num_clips if self.mode == "train" else self.test_clips * self.test_crops

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _rng(self, index):
        # Independent of the worker that loads the item and of what it loaded before: the same item
        # of the same epoch gets the same clips, so an epoch can be resumed half-way exactly.
        return np.random.default_rng(rng.derive_seed(self.seed, "clips", self.epoch, index))

    def __getitem__(self, index):
        path, label = self.videos[index]
        try:
            clips = self.load_clips(path, self._rng(index) if self.mode == "train" else None)
        except DECODE_ERRORS as e:
            return {"undecodable": path, "reason": f"{type(e).__name__}: {e}", "index": index}
        return {"clips": clips, "label": label, "index": index}

    def _check_protocol(self):
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"--sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.test_spacing not in TEST_SPACINGS:
            raise ValueError(f"--test_spacing must be one of {', '.join(TEST_SPACINGS)}, got {self.test_spacing!r}")
        if self.test_crop_size < 1:
            raise ValueError(f"--test_crop_size must be at least 1, got {self.test_crop_size}")
        if self.mode == "test" and self.test_crops not in (1, 3):
            raise ValueError(f"test_crops must be 1 or 3, got {self.test_crops}")
        if self.mode == "test" and self.sampling == "ssv2" and self.test_clips != 1:
            raise ValueError(f"--test_clips must be 1 with --sampling ssv2, got {self.test_clips}: its test frames are "
                             "fixed (the middle of each segment, PySlowFast ssv2.py), so more clips would repeat "
                             "them; for 3 views pass --test_crops 3")

    def clip_plan(self, info, rng):
        """Frame indices of every clip (list of int arrays) for a video described by info."""
        n = max(info.num_frames, 1)
        if self.sampling == "ssv2":
            return [segment_indices(n, self.num_frames, rng if self.mode == "train" else None)
                    for _ in range(self.num_clips if self.mode == "train" else 1)]
        window = clip_window(info.fps, self.num_frames, self.stride, self.target_fps)
        if self.mode == "train":
            starts = [clip_start(n, window, -1, 1, rng) for _ in range(self.num_clips)]
        else:
            starts = [clip_start(n, window, i, self.test_clips, spacing=self.test_spacing)
                      for i in range(self.test_clips)]
        return [clip_indices(n, window, self.num_frames, s) for s in starts]

    @property
    def test_short_side(self):
        """Short side of the test views: TEST_CROP_SIZE, but kinetics.py resizes a single crop's frames
        to TRAIN_JITTER_SCALES[0] (256 in the BYOL, linear, ucf and SSv2 configs, as TEST_CROP_SIZE)."""
        if self.sampling == "kinetics" and self.test_crops == 1:
            return max(self.short_side[0], self.test_crop_size)
        return self.test_crop_size

    def train_view(self, clip, rng):
        """One training clip (T frames) -> uint8 (3, T, crop, crop): random short side + crop, or the
        random resized crop; SSv2 draws the short side inverse-uniformly (finetune_SSv2 INV_UNIFORM_SAMPLE)."""
        if self.resized_crop is not None:
            return augment.random_resized_crop(clip, self.crop_size, *self.resized_crop, rng, flip=self.hflip)
        return augment.random_short_side_crop(clip, self.crop_size, self.short_side, rng, flip=self.hflip,
                                              inverse_uniform=self.sampling == "ssv2")

    def test_views(self, clip):
        """The test_crops views of one test clip: uint8 (3, T, S, S) each, S = test_crop_size. A single
        crop is the centre one (kinetics.py) or the first, left or top, one (ssv2.py: spatial index
        = view index % TEST.NUM_SPATIAL_CROPS = 0)."""
        boxes = augment.uniform_crop_boxes(*clip[0].shape[:2], self.test_crop_size, self.test_crops,
                                           short_side=self.test_short_side,
                                           single_index=0 if self.sampling == "ssv2" else 1)
        return [augment.crop_resize(clip, box, self.test_crop_size) for box in boxes]

    def load_clips(self, path, rng=None):
        """uint8 (V, 3, T, S, S) for one video; raises one of DECODE_ERRORS."""
        plans = []

        def plan(info):
            plans[:] = self.clip_plan(info, rng)
            return np.unique(np.concatenate(plans))

        max_short = self.short_side[1] if self.mode == "train" else self.test_short_side
        _, frames = read_frames(path, plan, max_short_side=max_short, decode_threads=self.decode_threads)
        views = []
        for idx in plans:
            clip = [frames[int(i)] for i in idx]  # T arrays (H, W, 3); only crops get copied
            if self.mode == "train":
                views.append(self.train_view(clip, rng))
            else:
                views.extend(self.test_views(clip))
        return torch.stack(views)


def collate_skip_bad(batch):
    """Stack the decodable items: clips uint8 (B, V, 3, T, S, S), label (B,), index (B,), and
    "skipped": [(path, reason)] of the items that could not be decoded."""
    good = [b for b in batch if "undecodable" not in b]
    skipped = [(b["undecodable"], b["reason"]) for b in batch if "undecodable" in b]
    if not good:
        return {"clips": torch.empty(0, dtype=torch.uint8), "label": torch.empty(0, dtype=torch.long),
                "index": torch.empty(0, dtype=torch.long), "skipped": skipped}
    return {"clips": torch.stack([b["clips"] for b in good]),
            "label": torch.tensor([b["label"] for b in good], dtype=torch.long),
            "index": torch.tensor([b["index"] for b in good], dtype=torch.long),
            "skipped": skipped}


def ignore_stop_signals(worker_id=None):
    """DataLoader worker_init_fn: Ctrl-C and SIGTERM reach every process of the job; the workers leave
    them to the main process, which finishes its step and writes a checkpoint (cli.GracefulStop)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class ResumableSampler(torch.utils.data.Sampler):
    """This rank's share of a shuffled epoch, as torch's DistributedSampler (the order padded by
    repetition to a multiple of the processes, every rank taking every world-th index; also without
    torchrun) but shuffled from rng.derive_seed(seed, "order", epoch), and able to start an epoch
    part-way: start_epoch(epoch, skip) drops the first `skip` indices, which a run resumed mid-epoch
    has already trained on."""

    def __init__(self, dataset, seed):
        self.n, self.seed, self.epoch, self.skip = len(dataset), seed, 0, 0
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.num_samples = math.ceil(self.n / self.world)

    def start_epoch(self, epoch, skip=0):
        self.epoch, self.skip = epoch, skip

    def order(self):
        g = torch.Generator().manual_seed(rng.derive_seed(self.seed, "order", self.epoch))
        order = torch.randperm(self.n, generator=g).tolist()
        total = self.num_samples * self.world
        order += (order * math.ceil(total / max(1, self.n)))[:total - self.n]
        return order[self.rank:total:self.world]

    def __iter__(self):
        return iter(self.order()[self.skip:])

    def __len__(self):
        return self.num_samples - self.skip


def train_loader(dataset, batch_size, num_workers, seed, device):
    """Shuffled training batches (the last incomplete one dropped) and their ResumableSampler. The loader
    draws its worker seeds from its own generator, so loading data never moves the global RNG. A set
    smaller than one global batch (no step at all) stops the run."""
    sampler = ResumableSampler(dataset, seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
        collate_fn=collate_skip_bad, pin_memory=device.type == "cuda", worker_init_fn=ignore_stop_signals,
        generator=torch.Generator().manual_seed(rng.derive_seed(seed, "loader")))
    if len(loader) == 0:
        raise ValueError(f"the training set has {len(dataset)} videos, fewer than one global batch of "
                         f"--batch_size_per_gpu {batch_size} x {distributed.world_size()} processes")
    return loader, sampler


def start_epoch(loader, epoch, skip_batches=0):
    """Before an epoch: this epoch's order and augmentations, from batch `skip_batches` on."""
    loader.sampler.start_epoch(epoch, skip_batches * loader.batch_size)
    _base(loader.dataset).set_epoch(epoch)


class SkippedVideos:
    """Videos that could not be decoded: counted per epoch, each path written once with its reason to
    output_dir/skipped_videos.txt, and a run stopped when more than max_share of an epoch's videos fail
    (a systematic problem, not a few broken files)."""

    def __init__(self, output_dir, max_share):
        self.path, self.max_share = os.path.join(output_dir, "skipped_videos.txt"), max_share
        self.written, self.pending, self.last = set(), [], None

    def add(self, skipped):
        self.pending.extend(skipped)

    def end_epoch(self, seen, device, what):
        """Write this epoch's new paths (rank 0, every rank's gathered) and stop when too many failed.
        `seen`: videos this rank loaded, decodable or not. Returns the epoch's count over all ranks."""
        everyone = [item for part in distributed.gather_objects(self.pending) for item in part]
        self.pending = []
        new = [(p, r) for p, r in dict(everyone).items() if p not in self.written]
        if new and distributed.is_main():
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "a") as f:
                f.writelines(f"{p}\t{r}\n" for p, r in new)
        self.written.update(p for p, _ in new)
        self.last = len(everyone)
        total = distributed.all_reduce_sum(seen, device)
        if everyone and len(everyone) > self.max_share * total:
            first = "; ".join(f"{p} ({r})" for p, r in everyone[:3])
            raise ValueError(f"{len(everyone)} of {int(total)} videos ({100 * len(everyone) / total:.1f}%) of {what} "
                             f"could not be decoded, more than --max_skip_share {self.max_share}; first: {first}; "
                             f"all in {self.path} (scan.py checks a whole list before training)")
        return len(everyone)


def _base(dataset):
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return dataset


def add_source_args(group, default, val_list_help):
    """--dataset, --data_root, --train_list, --val_list: where a script's videos come from; and
    --allow_unseen_labels: what a k-NN or classifier does with validation labels training lacks."""
    group.add_argument("--dataset", default=default, choices=DATASETS,
                       help="synthetic (generated videos: the embedded default of pretrain.py), kinetics "
                            "(K400/K600 lists), ucf101, hmdb51, ssv2, folder, csv")
    group.add_argument("--data_root", default=None,
                       help=f"folder of the videos (and list/split files); for --dataset synthetic {SYNTHETIC_ROOT}")
    group.add_argument("--train_list", default=None,
                       help="training list for kinetics/csv (PySlowFast 'path label' lines, or a CSV path,label; "
                            "default: the root's)")
    group.add_argument("--val_list", default=None, help=val_list_help)
    group.add_argument("--allow_unseen_labels", action="store_true",
                       help="score validation videos whose label the training list does not have (open-set; they "
                            "can never be right); without it such labels stop the run at start-up")


def add_bad_video_args(group):
    """--skip_missing and --max_skip_share, the flags of every script that reads a video list."""
    group.add_argument("--skip_missing", action="store_true",
                       help="drop listed videos that do not exist (listed in output_dir/missing_videos.txt) instead "
                            "of stopping at start-up")
    group.add_argument("--max_skip_share", type=float, default=0.05,
                       help="stop when more than this share of an epoch's (or a test set's) videos cannot be "
                            "decoded; each one is listed in output_dir/skipped_videos.txt")


def write_missing_videos(output_dir, *datasets):
    """output_dir/missing_videos.txt: every listed video that --skip_missing left out, one per line (rank 0)."""
    missing = [p for d in datasets for p in getattr(_base(d), "missing", [])]
    if missing and distributed.is_main():
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "missing_videos.txt"), "w") as f:
            f.writelines(p + "\n" for p in missing)


def check_files(videos, skip_missing=False, what="video list"):
    """(present videos, missing paths). Stops at start-up when listed videos do not exist, unless
    skip_missing; the caller writes the full missing list (write_missing_videos) where the user sees it."""
    missing = [p for p, _ in videos if not os.path.isfile(p)]
    if missing and not skip_missing:
        raise FileNotFoundError(f"{len(missing)} of {len(videos)} videos in the {what} do not exist (first: "
                                f"{', '.join(missing[:3])}); check --data_root, or pass --skip_missing to "
                                f"go on without them")
    gone = set(missing)
    return [(p, lab) for p, lab in videos if p not in gone], missing


# ----------------------------------------------------------------------------------------------
# What a list holds: copies, overlaps, labels, fingerprints
# ----------------------------------------------------------------------------------------------

def warn_duplicates(videos, what="video list"):
    """A warning line when a path is listed more than once: each copy counts as a video, so it weighs
    twice in training (and in a test score). Returns the number of extra copies."""
    counts = {}
    for path, _ in videos:
        key = os.path.normpath(path)
        counts[key] = counts.get(key, 0) + 1
    repeated = [p for p, n in counts.items() if n > 1]
    extra = sum(counts[p] - 1 for p in repeated)
    if extra:
        records.print_main(f"warning: {len(repeated)} videos of the {what} are listed more than once ({extra} extra "
                           f"copies of {len(videos)} lines; first: {repeated[0]}); each copy counts as a video")
    return extra


def list_source(videos, list_file, root, what):
    """Where a list comes from: its file and the file's sha256 (for data sets read from official split
    files or folders, list None and the sha256 of the listing: a `path<TAB>label` line per video, paths
    relative to the root), the data root and the number of videos listed."""
    if list_file is not None and os.path.isfile(list_file):
        sha256 = records.sha256_file(list_file)
    else:
        list_file = None
        listing = "".join(f"{os.path.relpath(p, root) if root else p}\t{lab}\n" for p, lab in videos)
        sha256 = hashlib.sha256(listing.encode()).hexdigest()
    return dict(what=what, list=None if list_file is None else os.path.abspath(list_file), sha256=sha256,
                data_root=None if root is None else os.path.abspath(root), listed=len(videos))


def fingerprint(dataset, skipped=None):
    """The data a run saw of one list, for its records: the list file and its sha256, the data root, the
    videos listed, found (listed and present) and, when given, skipped (present but undecodable)."""
    base = _base(dataset)
    source = getattr(base, "source", None) or dict(list=None, sha256=None, data_root=None, listed=len(base))
    out = {k: v for k, v in source.items() if k not in ("what", "split")}
    out["found"] = len(base)
    if skipped is not None:
        out["skipped"] = int(skipped)
    return out


def fingerprints(*datasets, skipped=()):
    """{split: fingerprint} of a run's data sets (skipped: their counts, in the same order)."""
    skipped = list(skipped) + [None] * (len(datasets) - len(skipped))
    return {getattr(_base(d), "source", {}).get("split", f"set{i}"): fingerprint(d, k)
            for i, (d, k) in enumerate(zip(datasets, skipped))}


def _named(source):
    return source["what"] + (f" ({source['list']})" if source["list"] else "")


def check_eval_lists(train, test, allow_unseen=False):
    """An evaluation's training and test sets, before anything is scored: a video in both stops the run
    (its score would be no test); the test labels are put on the training set's class ids (by name when
    both lists name their classes; one list with names and one with ids stops the run); test labels that
    training does not have stop the run with their count and first classes (no classifier can get those
    videos right), unless allow_unseen (open-set: they are scored, and always wrong)."""
    tr, te = _base(train), _base(test)
    both = sorted({os.path.normpath(p) for p, _ in tr.videos} & {os.path.normpath(p) for p, _ in te.videos})
    if both:
        raise ValueError(f"{len(both)} videos are in both the {_named(tr.source)} and the {_named(te.source)} "
                         f"(first: {both[0]}): a score on them is no test; remove them from one of the lists")
    if bool(tr.classes) != bool(te.classes) and all(any(lab >= 0 for _, lab in s.videos) for s in (tr, te)):
        named, numbered = (tr, te) if tr.classes else (te, tr)
        raise ValueError(f"the {_named(named.source)} names its classes and the {_named(numbered.source)} gives "
                         f"class ids: which id is which name is nowhere said; give both lists class names, or both ids")
    if tr.classes and te.classes and tr.classes != te.classes:
        ids = {name: i for i, name in enumerate(tr.classes)}
        extra = sorted(set(te.classes) - set(ids))
        ids.update({name: len(tr.classes) + i for i, name in enumerate(extra)})
        te.videos = [(p, ids[te.classes[lab]] if lab >= 0 else lab) for p, lab in te.videos]
        te.classes = list(tr.classes) + extra
    seen = {lab for _, lab in tr.videos}
    unseen = [lab for _, lab in te.videos if lab not in seen]
    if unseen and not allow_unseen:
        classes = sorted(set(unseen))
        names = [("(no label)" if lab < 0 else te.classes[lab] if te.classes else str(lab)) for lab in classes]
        which = (f"label{'s' * (len(names) > 1)} {', '.join(names)}" if len(names) <= 5 else
                 f"{len(names)} labels; first: {', '.join(names[:5])}")
        raise ValueError(f"{len(unseen)} of the {len(te.videos)} videos of the {_named(te.source)} have a label that "
                         f"the {_named(tr.source)} does not have ({which}): no classifier can get them right; fix "
                         f"the lists, or pass --allow_unseen_labels to score them anyway (open-set)")
    return len(unseen)


# ----------------------------------------------------------------------------------------------
# List readers: each returns (videos, classes) with videos a list of (absolute path, label or None)
# ----------------------------------------------------------------------------------------------

def _join(root, path):
    return path if os.path.isabs(path) or not root else os.path.join(root, path)


def _require(path, flag):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}: no such file {path}")
    return path


def _is_eval_split(split):
    if split in ("train",):
        return False
    if split in ("val", "validation", "test"):
        return True
    raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")


def _list_flag(split):
    return "--val_list" if _is_eval_split(split) else "--train_list"


def read_kinetics_list(list_file, root=None, flag="--train_list"):
    """PySlowFast Kinetics list: `path label` or `path` per line, space or comma separated; relative
    paths are joined to root (PySlowFast's PATH_PREFIX). Labels are optional (pretraining). A UTF-8
    byte-order mark (spreadsheet programs write one) is ignored."""
    videos = []
    with open(_require(list_file, flag), encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(",", 1) if "," in line else line.rsplit(None, 1)
            if len(parts) == 2 and parts[1].strip().lstrip("-").isdigit():
                path, label = parts[0].strip(), int(parts[1])
            elif len(parts) == 2 and lineno == 1 and parts[1].strip().lower() in ("label", "labels"):
                continue  # a header line
            elif len(parts) == 2 and "," in line:
                raise ValueError(f"{list_file}:{lineno}: label {parts[1]!r} is not an integer")
            else:
                path, label = line, None
            videos.append((_join(root, path), label))
    return videos, None


def read_csv_list(list_file, root=None, flag="--train_list"):
    """CSV with a `path,label` header; labels are integers, or class names mapped to sorted ids. A UTF-8
    byte-order mark ("CSV UTF-8" of spreadsheet programs) is ignored."""
    with open(_require(list_file, flag), encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and ("path" not in rows[0] or "label" not in rows[0]):
        raise ValueError(f"{list_file}: expected a 'path,label' header, got {list(rows[0])}")
    root = root if root else os.path.dirname(os.path.abspath(list_file))
    labels = [r["label"].strip() if r["label"] is not None else "" for r in rows]
    if all(lab.lstrip("-").isdigit() for lab in labels if lab):
        classes = None
        ids = [int(lab) if lab else None for lab in labels]
    else:
        classes = sorted({lab for lab in labels if lab})
        ids = [classes.index(lab) if lab else None for lab in labels]
    return [(_join(root, r["path"].strip()), i) for r, i in zip(rows, ids)], classes


def read_ucf101(root, split="train", official_split=1):
    """UCF101 official splits: ucfTrainTestlist/{train,test}list0{1,2,3}.txt and classInd.txt (1-based
    ids; test lists carry no label, it comes from the class folder). Videos in root (or root/UCF-101)."""
    if official_split not in (1, 2, 3):
        raise ValueError(f"--split must be 1, 2 or 3 for ucf101, got {official_split}")
    lists = os.path.join(root, "ucfTrainTestlist")
    classes = {}
    with open(_require(os.path.join(lists, "classInd.txt"), "--data_root")) as f:
        for line in f:
            if line.strip():
                i, name = line.split()
                classes[name] = int(i) - 1
    kind = "test" if _is_eval_split(split) else "train"
    video_root = os.path.join(root, "UCF-101") if os.path.isdir(os.path.join(root, "UCF-101")) else root
    videos = []
    with open(_require(os.path.join(lists, f"{kind}list0{official_split}.txt"), "--data_root")) as f:
        for line in f:
            if not line.strip():
                continue
            rel = line.split()[0]
            videos.append((os.path.join(video_root, rel), classes[rel.replace("\\", "/").split("/")[0]]))
    names = [n for n, _ in sorted(classes.items(), key=lambda kv: kv[1])]
    return videos, names


def read_hmdb51(root, split="train", official_split=1):
    """HMDB51 official splits: testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt with
    `video.avi 1|2|0` (1 train, 2 test, 0 unused). Classes sorted by name; videos in root/<class>/."""
    if official_split not in (1, 2, 3):
        raise ValueError(f"--split must be 1, 2 or 3 for hmdb51, got {official_split}")
    lists = os.path.join(root, "testTrainMulti_7030_splits")
    if not os.path.isdir(lists):
        raise FileNotFoundError(f"--data_root: no folder {lists}")
    suffix = f"_test_split{official_split}.txt"
    classes = sorted(f[:-len(suffix)] for f in os.listdir(lists) if f.endswith(suffix))
    want = "2" if _is_eval_split(split) else "1"
    videos = []
    for c, name in enumerate(classes):
        with open(os.path.join(lists, name + suffix)) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[1] == want:
                    videos.append((os.path.join(root, name, parts[0]), c))
    return videos, classes


def read_ssv2(root, split="train"):
    """Something-Something v2: something-something-v2-labels.json ({template: id}) and
    -train/-validation/-test.json lists of {"id", "template", ...}; videos <id>.webm in root (or
    root/20bn-something-something-v2). Templates carry [something] brackets that the label file lacks."""
    with open(_require(os.path.join(root, "something-something-v2-labels.json"), "--data_root")) as f:
        label_ids = {k: int(v) for k, v in json.load(f).items()}
    name = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}.get(split)
    if name is None:
        raise ValueError(f"split must be 'train', 'val' or 'test' for ssv2, got {split!r}")
    with open(_require(os.path.join(root, f"something-something-v2-{name}.json"), "--data_root")) as f:
        items = json.load(f)
    sub = os.path.join(root, "20bn-something-something-v2")
    video_root = sub if os.path.isdir(sub) else root
    videos = []
    for it in items:
        label = None
        if "template" in it:
            template = it["template"].replace("[", "").replace("]", "")
            if template not in label_ids:
                raise ValueError(f"ssv2 {name} list: template {template!r} of video {it['id']} is not in "
                                 f"something-something-v2-labels.json")
            label = label_ids[template]
        videos.append((os.path.join(video_root, f"{it['id']}.webm"), label))
    classes = [t for t, _ in sorted(label_ids.items(), key=lambda kv: kv[1])]
    return videos, classes


def read_folder(root, split="train"):
    """root/<class>/<video> (or root/<split>/<class>/<video> when that folder exists); sorted class ids."""
    sub = os.path.join(root, "val" if split == "validation" else split)
    base = sub if os.path.isdir(sub) else root
    if not os.path.isdir(base):
        raise FileNotFoundError(f"--data_root: no folder {base}")
    classes = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    videos = []
    for c, name in enumerate(classes):
        for fn in sorted(os.listdir(os.path.join(base, name))):
            if fn.lower().endswith(VIDEO_EXTENSIONS):
                videos.append((os.path.join(base, name, fn), c))
    return videos, classes


def list_file_of(name, root=None, split="train", list_file=None):
    """The list file a kinetics, csv or synthetic set is read from: `list_file`, else root/{split}.csv
    (PySlowFast's {PATH_TO_DATA_DIR}/{train,val,test}.csv); None for the data sets read from official
    split files or folders."""
    if name not in ("kinetics", "csv", "synthetic"):
        return None
    if name == "synthetic":
        split = "val" if _is_eval_split(split) else "train"
    if list_file is None and root is not None:
        list_file = os.path.join(root, f"{'val' if split == 'validation' else split}.csv")
    return list_file


def read_video_list(name, root=None, split="train", list_file=None, official_split=1):
    """(videos, classes) for a data set name of DATASETS."""
    if name not in DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    if name in ("kinetics", "csv"):
        # Never another list in place of a missing one: validating on the training list would print a
        # number that means nothing.
        flag = _list_flag(split)
        if list_file is None:
            if root is None:
                raise ValueError(f"--data_root is required for --dataset {name} unless {flag} is given")
            list_file = list_file_of(name, root, split)
            if not os.path.isfile(list_file):
                raise FileNotFoundError(f"{flag}: no list given and {list_file} does not exist; pass {flag} FILE")
        read = read_kinetics_list if name == "kinetics" else read_csv_list
        return read(list_file, root, flag)
    if name == "synthetic":
        return read_csv_list(list_file_of(name, root, split, list_file), root, _list_flag(split))
    if root is None:
        raise ValueError(f"--data_root is required for --dataset {name}")
    if name == "ucf101":
        return read_ucf101(root, split, official_split)
    if name == "hmdb51":
        return read_hmdb51(root, split, official_split)
    if name == "ssv2":
        return read_ssv2(root, split)
    return read_folder(root, split)


def build_dataset(name, root=None, split="train", list_file=None, official_split=1, skip_missing=False,
                  **sampling):
    """VideoDataset over a named data set; sampling keywords go to VideoDataset (num_clips, mode, ...).
    Its `sampling` (PySlowFast dataset class) defaults to the data set's: default_sampling(name). A path
    listed more than once is a warning line (each copy counts as a video); the set's `source` is what
    fingerprint() states."""
    if sampling.get("sampling") is None:
        sampling["sampling"] = default_sampling(name)
    videos, classes = read_video_list(name, root, split, list_file, official_split)
    what = f"{name} {split} list"
    if not videos:
        raise ValueError(f"--dataset {name}: the {split} list under {root or list_file} is empty")
    warn_duplicates(videos, what)
    source = dict(list_source(videos, list_file_of(name, root, split, list_file), root, what), split=split)
    videos, missing = check_files(videos, skip_missing, what=what)
    dataset = VideoDataset(videos, classes=classes, **sampling)
    dataset.missing, dataset.source = missing, source
    if missing:
        records.print_main(f"warning: {len(missing)} of {len(videos) + len(missing)} videos of the {what} "
                           f"do not exist and are left out (--skip_missing); first: {missing[0]}")
    return dataset


def build_split(flags, split, mode, official_split=1, **kwargs):
    """The training (mode="train", one random clip) or test (mode="test", V views) set of an evaluation:
    --dataset, its lists and the sampling flags of protocols.add_eval_args."""
    list_file = flags.train_list if split == "train" else flags.val_list
    return build_dataset(flags.dataset, root=flags.data_root, split=split, list_file=list_file,
                         official_split=official_split, skip_missing=flags.skip_missing, num_clips=1,
                         num_frames=flags.num_frames, stride=flags.stride, crop_size=flags.crop_size, mode=mode,
                         test_clips=flags.test_clips, test_crops=flags.test_crops, seed=flags.seed,
                         test_crop_size=flags.test_crop_size, test_spacing=flags.test_spacing,
                         sampling=flags.sampling, **kwargs)


def labels_of(dataset):
    """Labels of every video of a VideoDataset, read from its list (nothing decoded)."""
    return [label for _, label in dataset.videos]


def num_classes_of(dataset):
    """Classes of a labelled training set: its class-name list, else the largest label + 1."""
    labels = labels_of(dataset)
    if any(label < 0 for label in labels):
        raise ValueError(f"the training list has {sum(label < 0 for label in labels)} videos without a label; "
                         "evaluation needs labels (`path label` lines)")
    return len(dataset.classes) if dataset.classes else max(labels) + 1


class ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world, ...: every item on exactly one process, none padded or repeated
    (DistributedSampler pads the last shard, which would count some test videos twice)."""

    def __init__(self, num_items, rank, world_size):
        self.indices = list(range(rank, num_items, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def eval_loader(dataset, batch_size, num_workers, device):
    """This process's shard of a test set, in order, every video once over all processes."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), distributed.rank(),
                                                             distributed.world_size()),
        num_workers=num_workers, collate_fn=collate_skip_bad, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0))  # worker seeds from its own generator, not the global one


def decoded_batches(dataset, batch_size, num_workers, device, log_every=10, skipped=None, what="the set",
                    desc="features"):
    """This rank's decodable videos of a mode="test" dataset, in batches (eval_loader): what k-NN features
    and multi-view testing read. Undecodable videos are left out and, with a SkippedVideos, listed (too
    many of them stop the run; its .last is their count over the ranks)."""
    loader, loaded = eval_loader(dataset, batch_size, num_workers, device), 0
    progress = records.Progress(len(loader), desc, log_every)
    for batch in loader:
        loaded += len(batch["skipped"]) + batch["clips"].shape[0]
        if skipped is not None:
            skipped.add(batch["skipped"])
        if batch["clips"].shape[0] > 0:
            yield batch
        progress.update()
    progress.close()
    if skipped is not None:
        skipped.end_epoch(loaded, device, what)


# ----------------------------------------------------------------------------------------------
# Writing videos and the synthetic data set
# ----------------------------------------------------------------------------------------------


SYNTHETIC_SHAPES = ("square", "disc", "ring")


def _synthetic_class(k, num_classes):
    """Class k: an object colour and shape (appearance) and a motion direction and speed (motion)."""
    hue = k / num_classes
    colour = np.array(colorsys.hsv_to_rgb(hue, 0.85, 0.95)) * 255
    # Golden-ratio steps: every class its own direction, and neighbours in hue move far apart.
    angle = 2 * math.pi * ((k * 0.6180339887) % 1.0)
    speed = (1.0, 2.2)[k % 2]  # pixels per frame
    return dict(colour=colour, shape=SYNTHETIC_SHAPES[k % 3], angle=angle, speed=speed)


def _shape_mask(shape, dx, dy, r):
    if shape == "square":
        return (np.abs(dx) < r) & (np.abs(dy) < r)
    d2 = dx * dx + dy * dy
    if shape == "disc":
        return d2 < r * r
    return (d2 < r * r) & (d2 > (0.5 * r) ** 2)


def render_synthetic_video(k, num_classes, rng, height=96, width=128, num_frames=90):
    """uint8 (T, H, W, 3): the class-k object moving over a noisy random background, plus a distractor
    object of random colour, shape and motion. Positions, size, speed and colour carry per-video noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(30, 200, 3), rng.uniform(30, 200, 3)
    t = (xx / width * np.cos(rng.uniform(0, 2 * np.pi)) + yy / height * np.sin(rng.uniform(0, 2 * np.pi)))
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    background = c0 * (1 - t[..., None]) + c1 * t[..., None]
    background += rng.normal(0, 10, (height, width, 3))
    cls = _synthetic_class(k, num_classes)
    distractor = dict(colour=rng.uniform(0, 255, 3), shape=SYNTHETIC_SHAPES[rng.integers(3)],
                      angle=rng.uniform(0, 2 * math.pi), speed=rng.uniform(0.3, 2.5))
    objects = []
    for obj, jitter in ((cls, True), (distractor, False)):
        angle = obj["angle"] + (rng.normal(0, 0.15) if jitter else 0)
        speed = obj["speed"] * (rng.uniform(0.8, 1.2) if jitter else 1)
        colour = np.clip(obj["colour"] + (rng.normal(0, 12, 3) if jitter else 0), 0, 255)
        objects.append(dict(shape=obj["shape"], colour=colour, r=rng.uniform(0.1, 0.16) * height,
                            x=rng.uniform(0, width), y=rng.uniform(0, height),
                            vx=speed * math.cos(angle), vy=speed * math.sin(angle)))
    video = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for f in range(num_frames):
        frame = background + rng.normal(0, 4, (height, width, 3))
        for o in objects:
            # Positions wrap around the frame so the motion lasts the whole video.
            dx = (xx - (o["x"] + o["vx"] * f) + width / 2) % width - width / 2
            dy = (yy - (o["y"] + o["vy"] * f) + height / 2) % height - height / 2
            frame[_shape_mask(o["shape"], dx, dy, o["r"])] = o["colour"]
        video[f] = np.clip(frame, 0, 255).astype(np.uint8)
    return video


def make_synthetic_dataset(root, seed=0, num_classes=6, videos_per_class=16, val_videos_per_class=6,
                           height=96, width=128, num_frames=90, fps=30):
    """Write the synthetic set (H.264 mp4) and its lists root/train.csv, root/val.csv (`path,label`).

    Deterministic from seed; cached: when root/manifest.json records the same parameters nothing is
    written. 3 s at 30 fps, so the 64-frame window of T=8 x tau=8 fits. Returns root.
    """
    params = dict(version=1, seed=seed, num_classes=num_classes, videos_per_class=videos_per_class,
                  val_videos_per_class=val_videos_per_class, height=height, width=width,
                  num_frames=num_frames, fps=fps)
    manifest = os.path.join(root, "manifest.json")
    if os.path.isfile(manifest):
        try:
            with open(manifest) as f:
                if json.load(f) == params:
                    return root
        except (OSError, ValueError):
            pass
    os.makedirs(root, exist_ok=True)
    for split, per_class, offset in (("train", videos_per_class, 0), ("val", val_videos_per_class, 1)):
        rows = []
        for k in range(num_classes):
            os.makedirs(os.path.join(root, split, f"class{k}"), exist_ok=True)
            for v in range(per_class):
                rng = np.random.default_rng([seed, offset, k, v])
                rel = f"{split}/class{k}/{split}_{k}_{v:03d}.mp4"
                video = render_synthetic_video(k, num_classes, rng, height, width, num_frames)
                write_video(os.path.join(root, rel), video, fps=fps, options={"crf": "20", "preset": "fast"})
                rows.append((rel, k))
        tmp = os.path.join(root, f"{split}.csv.part")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows(rows)
        os.replace(tmp, os.path.join(root, f"{split}.csv"))
    with open(manifest, "w") as f:
        json.dump(params, f)
    return root


# Where --dataset synthetic lives unless --data_root says otherwise (relative to the working directory):
# a cache, never a folder where a real data set would be expected.
SYNTHETIC_ROOT = os.path.join("cache", "synthetic")


def ensure_synthetic_dataset(root):
    """The synthetic set in root: the one already there (any parameters; its manifest is written last,
    so it is complete), else the default set, generated by rank 0 while the other ranks wait."""
    if distributed.is_main() and not os.path.isfile(os.path.join(root, "manifest.json")):
        make_synthetic_dataset(root)
    distributed.barrier()
    return root
