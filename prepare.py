"""Write a resized copy of a video data set once, so that every epoch of every run decodes small frames.

    python prepare.py --dataset kinetics --data_root /data/k400 --list /data/k400/train.csv \
        --output_dir /data/k400_320 --num_workers 16

Every video of the list (any --dataset; --dataset folder for a folder of class folders) is decoded and
written again under --output_dir at its path relative to --data_root, as an mp4: H.264 (libx264, crf 23)
at a short side of --short_side (default 320, the Kinetics copies of PySlowFast and VideoMAE; never
scaled up), a keyframe every --keyframe_every seconds, its own frame rate (or --fps), no audio
(video.write_resized). Each copy is decoded again and counts only when its frame count and size are
those written, its header says the same, and it lasts as long as the source within one frame.

Written beside the copy, for the --split:
    <split>.csv            the list of the copy, in the input's format with its labels (`path label` lines
                           for kinetics, a `path,label` CSV otherwise), without the broken sources
    <split>_broken.txt     `path<TAB>reason` of each source that is missing or cannot be decoded
                           (video.undecodable_reason, scan.py's definition) or whose copy failed
    <split>_manifest.json  the settings, and for each video its source (path, bytes, SHA-256 of the
                           first MB, height, width, fps, frames) and its copy (path, bytes, SHA-256,
                           height, width, fps, frames) or the reason it has none; its SHA-256, printed
                           at the end, identifies the copy (libx264 does not write the same bytes twice
                           for the same frames, so a second preparation has another)
Resumable: a copy is written to <name>.mp4.part and renamed once verified, then recorded in
<split>_manifest.partial.jsonl; the same command after a crash, a kill or a full disk redoes only the
videos not recorded there (their leftover .part files are removed first). Flags that change the copy
must be the same. --num_workers processes, each one video at a time on one thread.
"""
import argparse
import csv
import ctypes
import hashlib
import io
import json
import multiprocessing
import os
import signal

import av

import cli
import data
import records
import video

# libx264's presets, fastest to slowest. Measured on four 1280x720 surveillance-fight clips at crf 23,
# veryfast against medium: 25-30% less CPU time, files 10-15% smaller, PSNR 1.0-1.3 dB lower.
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# Flags that define the copy: a run resumes a folder only with the values it was started with.
COPY_FLAGS = ("short_side", "fps", "keyframe_every", "crf", "preset")
PART = ".part"
HEAD_BYTES = 1 << 20  # the source checksum covers the first MB: cheap, and tells files apart


def get_args_parser():
    p = argparse.ArgumentParser("iboot data-set preparation", add_help=True,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="kinetics", choices=data.DATASETS)
    p.add_argument("--data_root", default=None, help="folder of the videos (and list/split files); the copy keeps "
                                                     "the paths relative to it")
    p.add_argument("--list", default=None, help="list file for kinetics/csv (default: the root's <split>.csv)")
    p.add_argument("--split", default="train", choices=["train", "val"], help="which list of the data set")
    p.add_argument("--official_split", type=int, default=1, choices=[1, 2, 3], help="ucf101/hmdb51 split")
    p.add_argument("--output_dir", required=True, help="folder of the copy (outside --data_root)")
    p.add_argument("--short_side", type=int, default=320,
                   help="short side of the copy in pixels, even; sources already smaller keep their size "
                        "(320: PySlowFast's and VideoMAE's Kinetics copies, the top of training's short-side "
                        "range 256-320, so training never enlarges a frame; 256 enlarges up to 1.25x)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of the copy (None: the source's)")
    p.add_argument("--keyframe_every", type=float, default=video.KEYFRAME_EVERY,
                   help="seconds between keyframes, at most: where the training reader can start decoding (1 is "
                        "faster for videos of minutes)")
    p.add_argument("--crf", type=int, default=23, help="libx264 quality (0 lossless, 51 worst; 23 its default)")
    p.add_argument("--preset", default="medium", choices=PRESETS, help="libx264 preset (encoding time vs size)")
    p.add_argument("--num_workers", type=int, default=os.cpu_count() or 1,
                   help="processes, one video each (0: in this process)")
    p.add_argument("--log_every", type=int, default=100, help="videos between progress lines (no terminal)")
    return p


FLAG_RULES = dict(short_side="[32,2160]", fps="(0,240]", keyframe_every="(0,60]", crf="[0,51]",
                  num_workers=">=0", log_every=">=1")


def check_args(args):
    """One line naming the flag, before anything is written."""
    cli.check_flags(args, FLAG_RULES)
    if args.short_side % 2:
        raise ValueError(f"--short_side {args.short_side}: must be even (H.264 4:2:0 stores colour at half size)")
    if args.data_root is not None and not os.path.isdir(args.data_root):
        raise FileNotFoundError(f"--data_root {args.data_root}: no such folder")


# ----------------------------------------------------------------------------------------------
# Planning: where each copy goes
# ----------------------------------------------------------------------------------------------

def _inside(path, folder, real=True):
    """Whether path is folder or lies in it: the files themselves (links resolved), or as written."""
    path, folder = (os.path.realpath(path), os.path.realpath(folder)) if real else (path, folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def plan_copies(videos, data_root, output_dir):
    """{source path: copy path}: each source at its path relative to data_root (to the folder all sources
    share when some lie outside it), extension .mp4. Stops when the copy would mix with the sources."""
    if data_root is not None and _inside(output_dir, data_root):
        raise ValueError(f"--output_dir {output_dir} is inside --data_root {data_root}: the copy would mix with "
                         f"the sources (a folder data set would read it as a class); pass a folder outside it")
    sources = sorted({os.path.abspath(p) for p, _ in videos})
    inside = [p for p in sources if _inside(p, output_dir)]
    if inside:
        raise ValueError(f"--output_dir {output_dir} holds {len(inside)} of the source videos (first: {inside[0]}): "
                         f"the copy would mix with them; pass a folder that holds none")
    base = os.path.abspath(data_root) if data_root else None
    if not sources:
        return {}
    if base is None or not all(_inside(p, base, real=False) for p in sources):
        base = os.path.commonpath([os.path.dirname(p) for p in sources])
    plan, taken = {}, {}
    for src in sources:
        dst = os.path.join(os.path.abspath(output_dir), os.path.splitext(os.path.relpath(src, base))[0] + ".mp4")
        if dst in taken:
            raise ValueError(f"{taken[dst]} and {src} would both be copied to {dst}: rename one of them")
        plan[src], taken[dst] = dst, src
    return plan


def remove_temporaries(output_dir):
    """Remove the .part files (copies, lists, manifest being written) a killed or stopped run left in
    output_dir. Returns their number."""
    count = 0
    for folder, _, files in os.walk(output_dir):
        for name in files:
            if name.endswith(PART):
                os.remove(os.path.join(folder, name))
                count += 1
    return count


# ----------------------------------------------------------------------------------------------
# One video (runs in a worker process)
# ----------------------------------------------------------------------------------------------

def verify_copy(path, source, copy):
    """None when the file at path is the copy that write_resized reported (source, copy), else what is
    wrong: decoded frames and header frame count equal the frames written, the size is the one written,
    and its length (frames / fps) is the source's within one frame of the copy."""
    try:
        found = video.count_frames(path)
    except video.DECODE_ERRORS as e:
        return f"{type(e).__name__}: {e}"
    if (found["height"], found["width"]) != (copy["height"], copy["width"]):
        return f"size {found['width']}x{found['height']}, not the {copy['width']}x{copy['height']} written"
    if found["frames"] != copy["frames"] or found["header_frames"] != copy["frames"]:
        return (f"{found['frames']} frames decoded ({found['header_frames']} in the header), not the "
                f"{copy['frames']} written")
    seconds, frame = found["frames"] / found["fps"], 1 / found["fps"]
    if abs(seconds - source["seconds"]) > frame:
        return f"lasts {seconds:.3f} s, the source {source['seconds']:.3f} s: more than one frame apart"
    return None


class DiskFull(Exception):
    """No space left where the copy is written."""


def _write(src, dst, settings):
    """Write, verify and rename one copy. Returns (source, copy) dicts, or why there is none: the
    source's video.undecodable_reason (scan.py's words) when it has one, else what failed in copying."""
    try:
        source, copy = video.write_resized(src, dst + PART, settings["short_side"], settings["fps"],
                                           settings["keyframe_every"], settings["crf"], settings["preset"])
        problem = verify_copy(dst + PART, source, copy)
        if problem is not None:
            return f"copy failed verification: {problem}"
        os.replace(dst + PART, dst)
        return source, copy
    except (OSError, *video.DECODE_ERRORS) as e:
        if records.no_space(e):
            raise DiskFull(str(e)) from None
        reason = video.undecodable_reason(src)
        if reason is not None:
            return reason
        if isinstance(e, OSError):  # writing failed (permissions, I/O): no video's fault
            raise
        return f"copy failed: {type(e).__name__}: {e}"
    finally:
        if os.path.exists(dst + PART):
            os.remove(dst + PART)


def prepare_video(job):
    """job = (source, copy path, output_dir, settings) -> its record: {"source": {path, size, ...},
    "copy": {path relative to output_dir, size, sha256, ...}} when copied, {"source": {path, size},
    "reason": ...} when the source is broken or its copy failed, {"disk_full": message} when the disk is."""
    src, dst, output_dir, settings = job
    record = dict(source=dict(path=src, size=os.path.getsize(src) if os.path.isfile(src) else None))
    try:
        result = _write(src, dst, settings)
    except DiskFull as e:
        return dict(disk_full=str(e))
    if isinstance(result, str):
        return dict(record, reason=result)
    source, copy = result
    record["source"].update(source, sha256_first_mb=records.sha256_file(src, HEAD_BYTES))
    copy.update(path=os.path.relpath(dst, output_dir), size=os.path.getsize(dst), sha256=records.sha256_file(dst))
    return dict(record, copy=copy)


def _worker_init(parent):
    """Workers leave Ctrl-C and SIGTERM to the main process and die with it (Linux: PR_SET_PDEATHSIG),
    so that no worker of a killed run goes on writing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))
    except (OSError, AttributeError):  # not Linux
        pass
    if os.getppid() != parent:  # the main process died before prctl took effect
        os._exit(1)


# ----------------------------------------------------------------------------------------------
# The run: state on disk, outputs
# ----------------------------------------------------------------------------------------------

def settings_of(args):
    return {k: getattr(args, k) for k in COPY_FLAGS}


def _differences(old, new):
    return "; ".join(f"--{k} {old.get(k)} -> {new.get(k)}" for k in COPY_FLAGS if old.get(k) != new.get(k))


def _read_state(paths):
    """(settings, records) of what a previous run into this folder wrote: its manifest, then its journal."""
    settings, records = None, []
    if os.path.isfile(paths["manifest"]):
        with open(paths["manifest"]) as f:
            manifest = json.load(f)
        settings, records = manifest["settings"], manifest["records"]
    if os.path.isfile(paths["journal"]):
        with open(paths["journal"]) as f:
            for line in f:
                try:
                    item = json.loads(line)
                except ValueError:  # the last line of a killed run may be cut
                    continue
                if "settings" in item:
                    settings = settings or item["settings"]
                else:
                    records.append(item)
    return settings, records


def load_finished(paths, output_dir, settings):
    """{source: record} of the videos a previous run finished, each kept only while the source has the
    size it had and the copy is still there with its size; stops when that run used other settings."""
    old, records = _read_state(paths)
    if old is not None and old != settings:
        raise ValueError(f"--output_dir {output_dir} holds a copy made with other settings: "
                         f"{_differences(old, settings)}; pass the same flags to finish it, or another --output_dir")
    finished = {}
    for record in records:
        src, copy = record["source"], record.get("copy")
        size = os.path.getsize(src["path"]) if os.path.isfile(src["path"]) else None
        if size != src["size"]:
            continue
        if copy is not None:
            path = os.path.join(output_dir, copy["path"])
            if not os.path.isfile(path) or os.path.getsize(path) != copy["size"]:
                continue
        finished[src["path"]] = record
    return finished


def output_paths(output_dir, split):
    """Where the list, broken list, manifest and journal of a split go."""
    return dict(list=os.path.join(output_dir, f"{split}.csv"), broken=os.path.join(output_dir, f"{split}_broken.txt"),
                manifest=os.path.join(output_dir, f"{split}_manifest.json"),
                journal=os.path.join(output_dir, f"{split}_manifest.partial.jsonl"))


def write_atomic(path, text):
    """Write text to path + PART, then rename it: the file is whole or not there."""
    with open(path + PART, "w", newline="") as f:
        f.write(text)
    os.replace(path + PART, path)


def list_text(dataset, videos, classes, plan, output_dir):
    """The copy's list in the input's format: PySlowFast `path label` (or `path`) lines for kinetics, a
    `path,label` CSV for the rest, with class names wherever the input has them (so that lists prepared
    apart are matched by name, data.check_eval_lists; ids only for csv lists of ids); paths relative to it."""
    rel = {src: os.path.relpath(dst, output_dir) for src, dst in plan.items()}
    if dataset == "kinetics":
        return "".join(f"{rel[p]}\n" if y is None else f"{rel[p]} {y}\n" for p, y in videos)
    label = (lambda y: "" if y is None else classes[y]) if classes else (lambda y: "" if y is None else str(y))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "label"])
    writer.writerows([rel[p], label(y)] for p, y in videos)
    return text.getvalue()


def manifest_text(args, settings, records):
    """The manifest: settings (and the libraries that encoded), the input, every record sorted by source."""
    head = dict(settings=settings, encoder=dict(av=av.__version__, libavcodec=".".join(
        str(v) for v in av.library_versions["libavcodec"])), input=dict(
        dataset=args.dataset, data_root=args.data_root and os.path.abspath(args.data_root),
        list=args.list and os.path.abspath(args.list), split=args.split, official_split=args.official_split))
    body = ",\n".join(json.dumps(records[src], sort_keys=True) for src in sorted(records))
    return json.dumps(head, sort_keys=True)[:-1] + f', "records": [\n{body}\n]}}\n'


def run_jobs(jobs, args, journal, total):
    """Run the jobs (in --num_workers processes), appending each record to the journal as it comes.
    Returns the records; a full disk (while copying or writing the journal) stops every worker and
    raises cli.SetupError naming --output_dir."""
    pool = None
    if args.num_workers and jobs:
        pool = multiprocessing.get_context("fork").Pool(args.num_workers, initializer=_worker_init,
                                                             initargs=(os.getpid(),))
        results = pool.imap_unordered(prepare_video, jobs)
    else:
        results = map(prepare_video, jobs)
    progress = records.Progress(len(jobs), "prepare", args.log_every)
    done_records, broken = [], 0
    try:
        for record in results:
            if "disk_full" in record:
                raise DiskFull(record["disk_full"])
            journal.write(json.dumps(record) + "\n")
            journal.flush()
            done_records.append(record)
            broken += "reason" in record
            progress.update(broken=broken)
    except (DiskFull, OSError) as e:
        if not isinstance(e, DiskFull) and not records.no_space(e):
            raise
        done = total - len(jobs) + len(done_records)
        raise cli.SetupError(f"no space left on the device of --output_dir {args.output_dir} after {done} of "
                             f"{total} videos; the finished copies stay: free space there and run the same "
                             f"command again to finish") from None
    finally:
        progress.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        remove_temporaries(args.output_dir)  # those of workers stopped mid-copy
    return done_records


def write_outputs(args, videos, classes, plan, records):
    """The list of the copy, the broken sources and the manifest (each written whole, then renamed).
    Returns (good videos, broken records, manifest SHA-256)."""
    paths = output_paths(args.output_dir, args.split)
    broken = {src: r for src, r in records.items() if "reason" in r}
    good = [(p, y) for p, y in videos if os.path.abspath(p) not in broken]
    write_atomic(paths["list"], list_text(args.dataset, [(os.path.abspath(p), y) for p, y in good], classes, plan,
                                          args.output_dir))
    write_atomic(paths["broken"], "".join(f"{src}\t{r['reason']}\n" for src, r in sorted(broken.items())))
    text = manifest_text(args, settings_of(args), records)
    write_atomic(paths["manifest"], text)
    if os.path.isfile(paths["journal"]):
        os.remove(paths["journal"])
    return good, broken, hashlib.sha256(text.encode()).hexdigest()


def copy_all(args, videos, classes, plan):
    """Under output_dir's lock: the copies not finished before, then the list, broken list and manifest.
    Returns write_outputs' (good videos, broken records, manifest SHA-256)."""
    paths, settings = output_paths(args.output_dir, args.split), settings_of(args)
    records.lock_output_dir(args.output_dir)  # one run writes a copy (held until the process ends)
    for folder in sorted({os.path.dirname(dst) for dst in plan.values()} | {args.output_dir}):
        os.makedirs(folder, exist_ok=True)  # every folder, even of a class whose videos are all broken
    stale = remove_temporaries(args.output_dir)
    finished = {src: r for src, r in load_finished(paths, args.output_dir, settings).items() if src in plan}
    jobs = [(src, dst, os.path.abspath(args.output_dir), settings) for src, dst in plan.items()
            if src not in finished]
    if finished or stale:
        print(f"resuming: {len(finished)} of {len(plan)} videos done before"
              + (f"; {stale} unfinished .part files removed" if stale else ""), flush=True)
    with open(paths["journal"], "a") as journal:
        if not os.path.getsize(paths["journal"]):
            journal.write(json.dumps(dict(settings=settings)) + "\n")
        done = run_jobs(jobs, args, journal, len(plan))
    return write_outputs(args, videos, classes, plan, {**finished, **{r["source"]["path"]: r for r in done}})


def main(args):
    check_args(args)
    videos, classes = data.read_video_list(args.dataset, args.data_root, args.split, args.list, args.official_split)
    if not videos:
        raise ValueError(f"--dataset {args.dataset}: the {args.split} list is empty")
    plan = plan_copies(videos, args.data_root, args.output_dir)
    try:
        good, broken, digest = copy_all(args, videos, classes, plan)
    except OSError as e:
        if not records.no_space(e):
            raise
        raise cli.SetupError(f"no space left on the device of --output_dir {args.output_dir}; the finished copies "
                             f"stay: free space there and run the same command again to finish") from None
    paths = output_paths(args.output_dir, args.split)
    kind = "kinetics" if args.dataset == "kinetics" else "csv"
    print(f"{len(plan) - len(broken)} of {len(plan)} videos copied to {args.output_dir}; {len(broken)} missing, "
          f"undecodable or failed, left out and listed in {paths['broken']}; list of the copy: {paths['list']} "
          f"({len(good)} lines; --dataset {kind} --data_root {args.output_dir}); manifest {paths['manifest']}, "
          f"sha256 {digest}", flush=True)
    return dict(good=good, broken=broken, manifest_sha256=digest)


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
