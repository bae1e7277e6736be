"""prepare.py: a resized copy that is verified before it counts, resumable after a kill, in the input's
list format with its labels, broken sources listed with scan.py's reasons, one line per bad input."""
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest

import cli
import data
import prepare
import scan
import video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--short_side", "64", "--num_workers", "0"]


def frames(n, h, w, seed=0):
    """A drifting pattern with a per-frame code in the top rows: no two frames alike."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), np.uint8)
    phase = rng.uniform(0, 6, 3)
    for t in range(n):
        out[t, ..., 0] = 128 + 100 * np.sin((x + 1.5 * t) / 7 + phase[0])
        out[t, ..., 1] = 128 + 100 * np.cos((y - 0.7 * t) / 5 + phase[1])
        out[t, ..., 2] = (x * 3 + y * 2 + 5 * t + 40 * phase[2]) % 256
        out[t, :4] = (t * 37) % 256
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """root/<class>/<video>.mp4 (or .avi): 3 classes, 2 good videos each, 96x128, 1 s at 30 fps; plus
    broken ones: a zero-byte file, text, an mp4 cut in half. Returns root."""
    root = tmp_path_factory.mktemp("sources")
    for c, name in enumerate(("archery", "bowling", "cooking")):
        (root / name).mkdir()
        for v in range(2):
            ext = ".avi" if (c, v) == (2, 1) else ".mp4"
            kw = dict(codec="mpeg4") if ext == ".avi" else {}
            video.write_video(str(root / name / f"v{v}{ext}"), frames(30, 96, 128, seed=10 * c + v), fps=30, **kw)
    (root / "archery" / "zero.mp4").write_bytes(b"")
    (root / "bowling" / "text.mp4").write_bytes(b"not a video\n" * 50)
    raw = (root / "archery" / "v0.mp4").read_bytes()
    (root / "cooking" / "cut.mp4").write_bytes(raw[: len(raw) // 2])
    return root


def kinetics_list(root, path):
    """A PySlowFast list of the sources: labels on most lines, none on one, a missing file too."""
    lines = ["archery/v0.mp4 0", "archery/v1.mp4 0", "archery/zero.mp4 0", "bowling/v0.mp4", "bowling/v1.mp4 1",
             "bowling/text.mp4 1", "cooking/v0.mp4 2", "cooking/v1.avi 2", "cooking/cut.mp4 2", "cooking/gone.mp4 2"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def run(argv):
    return prepare.main(prepare.get_args_parser().parse_args(argv))


def part_files(folder):
    return [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".part")]


# ---- the copy ---------------------------------------------------------------------------------

@pytest.mark.parametrize("height, width, short_side, expected", [
    (1080, 1920, 320, (320, 568)),  # ffmpeg -vf scale=-2:320 gives 568x320 (av_rescale(320, 1920, 2160) * 2)
    (720, 1280, 320, (320, 568)),
    (360, 480, 320, (320, 426)),
    (1920, 1080, 320, (568, 320)),  # portrait: the width is the short side
    (1080, 1920, 256, (256, 456)),  # 1920 * 256 / 1080 = 455.1 -> 456 (the nearest even)
    (240, 320, 320, (240, 320)),    # never scaled up
])
def test_copy_size_is_ffmpegs_short_side_scale(height, width, short_side, expected):
    assert video.copy_size(height, width, short_side) == expected


def full_decode(path):
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_copy_keeps_every_frame_at_its_index_and_resamples_to_fps(tmp_path):
    """Lossless (crf 0) and unscaled, so pixels compare exactly: at the source's rate, copy frame k is
    source frame k; at a third of the rate, source frame 3k; a variable-rate source (frames at 0, 1,
    3, 4, 6, ... of 30 fps) gives read_frames' frame at every index."""
    src = str(tmp_path / "src.mp4")
    video.write_video(src, frames(45, 48, 64), fps=30, gop_size=15)
    source = full_decode(src)
    out = str(tmp_path / "copy.mp4")
    _, copy = video.write_resized(src, out, 64, crf=0)
    got = full_decode(out)
    assert copy["frames"] == len(got) == 45 and all(np.array_equal(a, b) for a, b in zip(got, source))
    _, copy = video.write_resized(src, out, 64, fps=10, crf=0)
    got = full_decode(out)
    assert copy["frames"] == len(got) == 15 and all(np.array_equal(got[k], source[3 * k]) for k in range(15))
    vfr = str(tmp_path / "vfr.mp4")
    video.write_video(vfr, frames(40, 48, 64), fps=30, pts=[k + k // 2 for k in range(40)])
    video.write_resized(vfr, out, 64, crf=0)
    wanted = np.arange(0, 70)
    _, want = video.read_frames(vfr, lambda _: wanted)
    _, have = video.read_frames(out, lambda _: wanted)
    assert all(np.array_equal(want[i], have[i]) for i in wanted)


def test_copy_has_the_keyframe_interval_asked_not_the_sources(tmp_path):
    src = str(tmp_path / "src.mp4")
    video.write_video(src, frames(90, 48, 64), fps=30, gop_size=10)  # keyframes at 0, 10, 20, ...
    out = str(tmp_path / "copy.mp4")
    video.write_resized(src, out, 32, keyframe_every=1.0)
    with av.open(out) as c:
        stream = c.streams.video[0]
        keys = sorted(round(p.pts * stream.time_base * 30) for p in c.demux(stream) if p.size and p.is_keyframe)
        audio = len(c.streams.audio)
    # at most 30 frames apart (libx264 may place one a little early, before a run of B-frames); the
    # source's 9 keyframes are not copied
    assert keys[0] == 0 and all(0 < b - a <= 30 for a, b in zip(keys, keys[1:] + [90])) and len(keys) <= 4
    assert audio == 0


def test_verification_rejects_a_truncated_copy(tmp_path):
    src = str(tmp_path / "src.mp4")
    video.write_video(src, frames(60, 48, 64), fps=30)
    out = str(tmp_path / "copy.mp4")
    source, copy = video.write_resized(src, out, 32)
    assert prepare.verify_copy(out, source, copy) is None
    raw = open(out, "rb").read()
    cut = str(tmp_path / "cut.mp4")
    open(cut, "wb").write(raw[: len(raw) // 2])  # the index (moov) is written last: it is gone
    assert prepare.verify_copy(cut, source, copy).startswith("InvalidDataError")
    # index first (faststart), data cut in half: it opens, its header says 60 frames, decoding fails
    fast = str(tmp_path / "fast.mp4")
    with av.open(out) as inp, av.open(fast, "w", options={"movflags": "faststart"}) as o:
        stream = o.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(video=0):
            if packet.size:
                packet.stream = stream
                o.mux(packet)
    raw = open(fast, "rb").read()
    open(cut, "wb").write(raw[: len(raw) // 2])
    with av.open(cut) as c:
        assert c.streams.video[0].frames == 60
    assert prepare.verify_copy(cut, source, copy).startswith("InvalidDataError")
    # a copy with fewer frames than written, or another length than its source
    short = str(tmp_path / "short.mp4")
    video.write_video(short, frames(59, copy["height"], copy["width"]), fps=30)
    assert prepare.verify_copy(short, source, copy) == "59 frames decoded (59 in the header), not the 60 written"
    assert "lasts" in prepare.verify_copy(out, dict(source, seconds=source["seconds"] + 0.1), copy)


def test_a_copy_that_fails_verification_is_listed_and_never_kept(sources, tmp_path, monkeypatch):
    write = video.write_resized

    def write_then_cut(src, dst, *a, **k):
        result = write(src, dst, *a, **k)
        raw = open(dst, "rb").read()
        open(dst, "wb").write(raw[: len(raw) // 2])
        return result

    monkeypatch.setattr(video, "write_resized", write_then_cut)
    lst = tmp_path / "one.txt"
    lst.write_text("archery/v0.mp4 0\n")
    out = tmp_path / "out"
    result = run(["--data_root", str(sources), "--list", str(lst), "--output_dir", str(out)] + SMALL)
    reason = result["broken"][str(sources / "archery" / "v0.mp4")]["reason"]
    assert reason.startswith("copy failed verification: InvalidDataError")
    assert not (out / "archery" / "v0.mp4").exists() and part_files(out) == []
    assert (out / "train.csv").read_text() == ""


def test_a_source_scan_accepts_but_that_cannot_be_copied_is_listed_as_a_failed_copy(tmp_path):
    src = str(tmp_path / "jump.mp4")  # frames at 0, 1/30, 2/30 s, then 80 s later: a broken clock
    video.write_video(src, frames(6, 48, 64), fps=30, pts=[0, 1, 2, 2400, 2401, 2402])
    assert video.undecodable_reason(src) is None
    record = prepare.prepare_video((src, str(tmp_path / "jump_copy.mp4"), str(tmp_path), dict(
        short_side=64, fps=None, keyframe_every=2.0, crf=23, preset="medium")))
    assert record["reason"] == "copy failed: UndecodableVideo: timestamps jump 80 s ahead at frame 4"
    assert os.listdir(tmp_path) == ["jump.mp4"]


# ---- lists, labels, broken sources, manifest ------------------------------------------------------

def test_kinetics_list_keeps_its_format_and_labels_and_lists_broken_sources(sources, tmp_path):
    lst = kinetics_list(sources, tmp_path / "train.txt")
    out = tmp_path / "out"
    result = run(["--data_root", str(sources), "--list", lst, "--output_dir", str(out)] + SMALL)
    good = ["archery/v0.mp4 0", "archery/v1.mp4 0", "bowling/v0.mp4", "bowling/v1.mp4 1", "cooking/v0.mp4 2",
            "cooking/v1.mp4 2"]  # the .avi source is an .mp4 in the copy
    assert (out / "train.csv").read_text() == "\n".join(good) + "\n"
    copied, _ = data.read_video_list("kinetics", str(out), "train")
    original, _ = data.read_video_list("kinetics", str(sources), "train", lst)
    assert [y for _, y in copied] == [y for p, y in original if p.endswith(("v0.mp4", "v1.mp4", "v1.avi"))]
    assert all(os.path.isfile(p) for p, _ in copied)
    # broken: the reason is scan.py's, word for word (one definition of "undecodable")
    broken = dict(line.split("\t") for line in (out / "train_broken.txt").read_text().splitlines())
    assert sorted(os.path.relpath(p, sources) for p in broken) == [
        "archery/zero.mp4", "bowling/text.mp4", "cooking/cut.mp4", "cooking/gone.mp4"]
    scanned = scan.main(scan.get_args_parser().parse_args(
        ["--dataset", "kinetics", "--data_root", str(sources), "--list", lst, "--num_workers", "0",
         "--output", str(tmp_path / "scan.txt")]))
    assert broken == scanned
    assert broken[str(sources / "cooking" / "gone.mp4")] == video.MISSING == "missing: no such file"
    assert broken[str(sources / "archery" / "zero.mp4")].startswith("InvalidDataError")
    assert set(result["broken"]) == set(broken) and part_files(out) == []


def test_csv_with_class_names_and_folder_data_sets_keep_their_labels(sources, tmp_path):
    lst = tmp_path / "labels.csv"
    lst.write_text("path,label\narchery/v1.mp4,archery\ncooking/v1.avi,cooking\nbowling/text.mp4,bowling\n"
                   "bowling/v0.mp4,bowling\n")
    out = tmp_path / "csv"
    run(["--dataset", "csv", "--data_root", str(sources), "--list", str(lst), "--output_dir", str(out)] + SMALL)
    assert (out / "train.csv").read_text() == ("path,label\narchery/v1.mp4,archery\ncooking/v1.mp4,cooking\n"
                                              "bowling/v0.mp4,bowling\n")
    assert data.read_video_list("csv", str(out), "train")[1] == ["archery", "bowling", "cooking"]
    # a folder data set: the copy is one too, with every class folder (the same ids), and a CSV list
    out = tmp_path / "folder"
    run(["--dataset", "folder", "--data_root", str(sources), "--output_dir", str(out)] + SMALL)
    original, classes = data.read_video_list("folder", str(sources))
    copied, copied_classes = data.read_video_list("folder", str(out))
    listed, _ = data.read_video_list("csv", str(out), "train")
    assert copied_classes == classes
    expected = [(os.path.splitext(os.path.relpath(p, sources))[0] + ".mp4", y) for p, y in original
                if video.undecodable_reason(p) is None]
    assert [(os.path.relpath(p, out), y) for p, y in copied] == expected == \
        [(os.path.relpath(p, out), y) for p, y in listed]
    # its CSV names the classes (ids alone would be this split's: lists prepared apart could not be matched)
    rows = (out / "train.csv").read_text().splitlines()[1:]
    assert [row.split(",")[1] for row in rows] == [classes[y] for _, y in expected]


def test_manifest_records_sources_copies_and_settings(sources, tmp_path, capsys):
    lst = kinetics_list(sources, tmp_path / "train.txt")
    out = tmp_path / "out"
    result = run(["--data_root", str(sources), "--list", lst, "--output_dir", str(out), "--fps", "15"] + SMALL)
    text = (out / "train_manifest.json").read_bytes()
    assert hashlib.sha256(text).hexdigest() == result["manifest_sha256"]
    assert result["manifest_sha256"] in capsys.readouterr().out
    manifest = json.loads(text)
    assert manifest["settings"] == dict(short_side=64, fps=15.0, keyframe_every=2.0, crf=23, preset="medium")
    copies = [r for r in manifest["records"] if "copy" in r]
    assert len(copies) == 6 and len(manifest["records"]) == 10
    for r in copies:
        src, copy = r["source"], r["copy"]
        raw = open(src["path"], "rb").read()
        assert src["size"] == len(raw) and src["sha256_first_mb"] == hashlib.sha256(raw[: 1 << 20]).hexdigest()
        assert (src["height"], src["width"], src["fps"], src["frames"]) == (96, 128, 30.0, 30)
        path = out / copy["path"]
        assert copy["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and copy["size"] == path.stat().st_size
        found = video.count_frames(str(path))
        assert (copy["height"], copy["width"], copy["fps"], copy["frames"]) == (64, 86, 15.0, 15) == \
            (found["height"], found["width"], found["fps"], found["frames"])
    assert not (out / "train_manifest.partial.jsonl").exists()


# ---- resume ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_resume_after_sigkill_redoes_only_unfinished_files(tmp_path, capsys):
    """prepare.py killed (SIGKILL) mid-run: the same command then redoes only what was not recorded
    as finished (a finished copy damaged since is redone too), every copy verifies, no .part stays."""
    src = tmp_path / "src"
    src.mkdir()
    for k in range(4):
        video.write_video(str(src / f"base{k}.mp4"), frames(45, 120, 160, seed=k), fps=30)
    for k in range(24):  # 24 videos, 4 distinct files: each copy takes a few tens of ms
        os.symlink(src / f"base{k % 4}.mp4", src / f"v{k:02d}.mp4")
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"v{k:02d}.mp4 {k % 3}\n" for k in range(24)))
    out = tmp_path / "out"
    argv = ["--data_root", str(src), "--list", str(lst), "--output_dir", str(out), "--short_side", "64",
            "--num_workers", "1"]
    journal = out / "train_manifest.partial.jsonl"
    child = subprocess.Popen([sys.executable, os.path.join(ROOT, "prepare.py")] + argv, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and (not journal.exists() or journal.read_text().count("\n") < 3):
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    before = [json.loads(line) for line in journal.read_text().splitlines()[1:] if line.endswith("}")]
    assert 2 <= len(before) < 24, "not killed mid-run: the test would prove nothing"
    done = {r["copy"]["path"]: os.stat(out / r["copy"]["path"]).st_mtime_ns for r in before}
    damaged = sorted(done)[0]
    with open(out / damaged, "r+b") as f:
        f.truncate(os.path.getsize(out / damaged) // 2)
    result = run(argv)
    assert f"resuming: {len(before) - 1} of 24 videos done before" in capsys.readouterr().out
    assert len(result["good"]) == 24 and not result["broken"] and part_files(out) == []
    manifest = json.loads((out / "train_manifest.json").read_text())
    for r in manifest["records"]:
        path = out / r["copy"]["path"]
        assert prepare.verify_copy(str(path), r["source"], r["copy"]) is None
        if r["copy"]["path"] in done:
            same = os.stat(path).st_mtime_ns == done[r["copy"]["path"]]
            assert same == (r["copy"]["path"] != damaged)  # finished before the kill: kept, unless damaged
    assert not journal.exists()


def test_a_run_resumes_only_with_its_own_settings(sources, tmp_path):
    lst = tmp_path / "one.txt"
    lst.write_text("archery/v0.mp4 0\n")
    argv = ["--data_root", str(sources), "--list", str(lst), "--output_dir", str(tmp_path / "out")]
    run(argv + SMALL)
    with pytest.raises(ValueError, match=r"holds a copy made with other settings: --short_side 64 -> 128; "
                                         r"pass the same flags to finish it, or another --output_dir"):
        run(argv + ["--short_side", "128", "--num_workers", "0"])


# ---- bad input: one line each, nothing half-written ---------------------------------------------

def run_cli(argv, monkeypatch, capsys):
    """Run prepare.py's command line in this process: (exit status, stderr lines)."""
    monkeypatch.setattr(sys, "argv", ["prepare.py"] + argv)
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # run_cli's SIGTERM handler: not in pytest
    with pytest.raises(SystemExit) as stop:
        cli.run_cli(prepare.main, prepare.get_args_parser())
    return stop.value.code, capsys.readouterr().err.splitlines()


def test_bad_input_ends_in_one_line(sources, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    cases = [
        (["--dataset", "folder", "--data_root", str(tmp_path / "nope"), "--output_dir", str(out)],
         f"error: --data_root {tmp_path / 'nope'}: no such folder"),
        (["--dataset", "folder", "--data_root", str(sources), "--output_dir", str(sources / "small")],
         f"error: --output_dir {sources / 'small'} is inside --data_root {sources}: the copy would mix with the "
         f"sources (a folder data set would read it as a class); pass a folder outside it"),
        (["--dataset", "folder", "--data_root", str(sources), "--output_dir", str(out), "--short_side", "8"],
         "error: --short_side 8: must be in [32, 2160]"),
        (["--dataset", "folder", "--data_root", str(sources), "--output_dir", str(out), "--short_side", "4000"],
         "error: --short_side 4000: must be in [32, 2160]"),
        (["--dataset", "folder", "--data_root", str(sources), "--output_dir", str(out), "--short_side", "321"],
         "error: --short_side 321: must be even (H.264 4:2:0 stores colour at half size)"),
    ]
    for argv, line in cases:
        assert run_cli(argv, monkeypatch, capsys) == (2, [line])
    assert not out.exists() and not (sources / "small").exists()


def test_a_full_disk_stops_with_one_line_and_keeps_the_finished_copies(sources, tmp_path, monkeypatch, capsys):
    write = video.write_resized

    def fills_up(src, dst, *a, **k):
        if src.endswith(os.path.join("bowling", "v0.mp4")):  # the fifth in order, after two copies, two broken
            with open(dst, "wb") as f:
                f.write(b"\0" * 1000)  # what a writer leaves when the disk fills mid-file
            raise av.error.OSError(errno.ENOSPC, "No space left on device")
        return write(src, dst, *a, **k)

    monkeypatch.setattr(video, "write_resized", fills_up)
    out = tmp_path / "out"
    argv = ["--dataset", "folder", "--data_root", str(sources), "--output_dir", str(out)] + SMALL
    assert run_cli(argv, monkeypatch, capsys) == (2, [
        f"error: no space left on the device of --output_dir {out} after 4 of 9 videos; the finished copies stay: "
        f"free space there and run the same command again to finish"])
    kept = sorted(str(p.relative_to(out)) for p in out.rglob("*.mp4"))
    assert len(kept) == 2 and part_files(out) == [] and not (out / "train.csv").exists()
    for name in kept:
        assert video.count_frames(str(out / name))["frames"] == 30
    monkeypatch.setattr(video, "write_resized", write)  # space freed: the same command finishes
    result = run(argv)
    assert len(result["good"]) == 6 and "resuming: 4 of 9 videos done before" in capsys.readouterr().out
