"""data.py: list formats, PySlowFast sampling, one-pass decoding, bad input, memory."""
import hashlib
import json
import os
import wave

import av
import numpy as np
import pytest
import torch

import data
import eval_knn
import eval_linear
import finetune
import pretrain
import video
from helpers import EVAL_TINY, PRETRAIN_TINY, run_script


def gray_video(path, n, fps=30, size=(32, 48), gop_size=None, **kw):
    """Frame i is uniformly gray at level 4*i (lossless H.264), so a decoded frame names its index."""
    frames = np.zeros((n, size[0], size[1], 3), np.uint8)
    for i in range(n):
        frames[i] = min(255, 4 * i)
    # scenecut=0: keyframes only every gop_size frames (x264 would otherwise make every frame one)
    video.write_video(str(path), frames, fps=fps, options={"qp": "0", "x264-params": "scenecut=0"},
                     gop_size=gop_size, **kw)
    return str(path)


def frame_ids(clip):
    """clip uint8 (3, T, H, W) of gray_video frames -> the frame index of every t."""
    return [int(round(v / 4)) for v in clip.float().mean(dim=(0, 2, 3)).tolist()]


# ------------------------------------------------------------------------------------------------
# Sampling, against hand-computed PySlowFast indices
# ------------------------------------------------------------------------------------------------

def test_window_maps_frame_rates_onto_30fps():
    assert data.clip_window(30, 8, 8) == 64  # the paper's 64 raw frames
    assert data.clip_window(15, 8, 8) == 32
    assert data.clip_window(60, 8, 8) == 128


def test_clip_indices_linspace_and_clamp():
    # linspace(10, 73, 8): step 9
    assert data.clip_indices(300, 64, 8, 10).tolist() == [10, 19, 28, 37, 46, 55, 64, 73]
    # a 20-frame video under a 64-frame window: clamped to the last frame, not dropped
    assert data.clip_indices(20, 64, 8, 0).tolist() == [0, 9, 18, 19, 19, 19, 19, 19]


@pytest.mark.parametrize("n,spacing,k,expected", [
    # PySlowFast decoder.get_start_end_idx, USE_OFFSET_SAMPLING False (default): delta * i / K.
    (100, "uniform", 1, [0]),                                    # delta 36: one clip starts at 0
    (100, "uniform", 3, [0, 12, 24]),
    (100, "uniform", 10, [0, 3.6, 7.2, 10.8, 14.4, 18, 21.6, 25.2, 28.8, 32.4]),
    (101, "uniform", 3, [0, 37 / 3, 74 / 3]),                    # delta 37
    # USE_OFFSET_SAMPLING True: floor(delta / 2) for one clip, else i * floor(delta / (K - 1)).
    (100, "offset", 1, [18]),
    (100, "offset", 3, [0, 18, 36]),
    (100, "offset", 10, [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]),
    (101, "offset", 1, [18]),                                    # floor(18.5)
    (101, "offset", 10, [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]),  # 4 = floor(37 / 9)
    (40, "uniform", 3, [0, 0, 0]),                               # shorter than the window: delta 0
])
def test_test_clip_starts_as_pyslowfast(n, spacing, k, expected):
    assert [data.clip_start(n, 64, i, k, spacing=spacing) for i in range(k)] == pytest.approx(expected)


def test_test_clip_frames_and_random_starts():
    # the second of 3 uniform clips of a 101-frame video: linspace(37/3, 37/3 + 63, 8), step 9, truncated
    start = data.clip_start(101, 64, 1, 3)
    assert data.clip_indices(101, 64, 8, start).tolist() == [12, 21, 30, 39, 48, 57, 66, 75]
    rng = np.random.default_rng(0)
    draws = [data.clip_start(100, 64, -1, 1, rng) for _ in range(500)]
    assert min(draws) >= 0 and max(draws) <= 36 and max(draws) - min(draws) > 30
    with pytest.raises(ValueError, match="--test_spacing"):
        data.clip_start(100, 64, 0, 3, spacing="centre")


@pytest.mark.parametrize("n,t,expected", [
    # PySlowFast ssv2.py get_seq_frames at test: s = (n - 1) / T, segment i = [round(s i), round(s (i+1))]
    # (numpy rounds halves to even), frame (start + end) // 2.
    (48, 8, [3, 9, 15, 21, 26, 32, 38, 44]),  # s = 5.875: bounds 0 6 12 18 24 29 35 41 47
    (10, 4, [1, 3, 5, 8]),                    # s = 2.25: bounds 0 2 4 (4.5 -> 4) 7 9
    (5, 8, [0, 0, 1, 2, 2, 2, 3, 4]),         # s = 0.5: bounds 0 0 1 2 2 2 3 4 4 (shorter than T)
    (1, 4, [0, 0, 0, 0]),
])
def test_ssv2_test_frames_by_hand(n, t, expected):
    assert data.segment_indices(n, t).tolist() == expected


def test_ssv2_training_frames_cover_each_segment():
    # n = 10, T = 4: segments [0, 2], [2, 4], [4, 7], [7, 9], a uniform frame of each (inclusive)
    rng = np.random.default_rng(0)
    draws = np.stack([data.segment_indices(10, 4, rng) for _ in range(400)])
    assert [sorted(set(draws[:, i].tolist())) for i in range(4)] == [[0, 1, 2], [2, 3, 4], [4, 5, 6, 7], [7, 8, 9]]


# ------------------------------------------------------------------------------------------------
# Decoding: the right frames, one open, one pass, seeking
# ------------------------------------------------------------------------------------------------

def test_read_frames_returns_exact_frames_after_seek(tmp_path):
    path = gray_video(tmp_path / "g.mp4", 60, gop_size=10)
    stats = {}
    _, frames = video.read_frames(path, lambda info: np.array([33, 41, 47]), stats=stats)
    assert {k: int(round(v.mean() / 4)) for k, v in frames.items()} == {33: 33, 41: 41, 47: 47}
    with av.open(path) as c:
        keyframes = [p.pts * c.streams.video[0].time_base * 30 for p in c.demux(video=0) if p.is_keyframe]
    assert keyframes[:4] == [0, 10, 20, 30]
    # decoding starts at the keyframe 30 before the first needed frame 33 and stops there, then
    # restarts at the keyframe 40 and stops at frame 47: 4 + 8 frames, not the 18 of one pass 30..47
    assert stats["seeked"] and stats["runs"] == 2 and stats["decoded"] == 12


def test_item_opens_video_once_and_decodes_all_clips_in_one_pass(tmp_path, monkeypatch):
    path = gray_video(tmp_path / "g.mp4", 60, gop_size=15)
    opened = []
    real_open = av.open
    monkeypatch.setattr(video.av, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    ds = data.VideoDataset([(path, 3)], num_clips=3, num_frames=4, stride=4, crop_size=32)
    item = ds[0]
    assert len(opened) == 1
    assert item["clips"].shape == (3, 3, 4, 32, 32) and item["clips"].dtype == torch.uint8
    assert item["label"] == 3 and item["index"] == 0
    for clip in item["clips"]:  # each clip: 4 frames spanning a 16-frame window (linspace step 5)
        ids = frame_ids(clip)
        assert [b - a for a, b in zip(ids, ids[1:])] == [5, 5, 5]


def test_test_views_frame_rate_mapping(tmp_path):
    # 15 fps, 60 frames: window = 64 * 15 / 30 = 32 frames. PySlowFast's one test clip starts at 0 and
    # takes linspace(0, 31, 8) = 0, 4.4, 8.9, 13.3, 17.7, 22.1, 26.6, 31 -> truncated; with offset spacing
    # the centre one, floor((60 - 32) / 2) = 14: linspace(14, 45, 8) = 14, 18.4, 22.9, 27.3, ...
    path = gray_video(tmp_path / "g15.mp4", 60, fps=15)
    ds = data.VideoDataset([(path, 0)], mode="test", test_clips=1, test_crops=1, crop_size=32, test_crop_size=32)
    clips = ds[0]["clips"]
    assert clips.shape == (1, 3, 8, 32, 32)
    assert frame_ids(clips[0]) == [0, 4, 8, 13, 17, 22, 26, 31]
    ds = data.VideoDataset([(path, 0)], mode="test", test_clips=1, test_crops=1, crop_size=32, test_crop_size=32,
                           test_spacing="offset")
    assert frame_ids(ds[0]["clips"][0]) == [14, 18, 22, 27, 31, 36, 40, 45]


def test_ten_by_three_test_views(tmp_path):
    path = gray_video(tmp_path / "g.mp4", 46, size=(32, 64))
    ds = data.VideoDataset([(path, 1)], mode="test", test_clips=10, test_crops=3, num_frames=2, stride=4,
                           crop_size=28)
    clips = ds[0]["clips"]
    # test views of round(28 x 256 / 224) = 32 (PySlowFast's 256 for 224 training crops)
    assert ds.test_crop_size == 32 and clips.shape == (30, 3, 2, 32, 32)
    # window 8: clip i starts at (46 - 8) * i / 10; the three crops of a clip share its frames
    starts = [frame_ids(clips[3 * i])[0] for i in range(10)]
    assert starts == [int(38 * i / 10) for i in range(10)]
    assert all(frame_ids(clips[3 * i + j]) == frame_ids(clips[3 * i]) for i in range(10) for j in range(3))


def test_ssv2_sampling_decodes_segment_frames(tmp_path):
    path = gray_video(tmp_path / "g.mp4", 48, size=(32, 48))
    ds = data.VideoDataset([(path, 0)], mode="test", test_clips=1, test_crops=3, crop_size=28, sampling="ssv2")
    clips = ds[0]["clips"]
    assert clips.shape == (3, 3, 8, 32, 32)  # 1 clip x 3 crops: Table 10's "3 views"
    assert all(frame_ids(c) == [3, 9, 15, 21, 26, 32, 38, 44] for c in clips)
    train = data.VideoDataset([(path, 0)], num_clips=2, crop_size=28, sampling="ssv2")
    for clip in train[0]["clips"]:
        ids = frame_ids(clip)
        bounds = [0, 6, 12, 18, 24, 29, 35, 41, 47]
        assert all(bounds[i] <= f <= bounds[i + 1] for i, f in enumerate(ids)), ids
    with pytest.raises(ValueError, match="--test_clips must be 1 with --sampling ssv2"):
        data.VideoDataset([(path, 0)], mode="test", test_clips=3, test_crops=1, sampling="ssv2")
    assert data.build_dataset("csv", list_file=_one_video_csv(tmp_path, path)).sampling == "kinetics"


def _one_video_csv(folder, path):
    listing = folder / "one.csv"
    listing.write_text(f"path,label\n{path},0\n")
    return str(listing)


def test_short_video_is_clamped_not_dropped(tmp_path):
    path = gray_video(tmp_path / "short.mp4", 20)
    ds = data.VideoDataset([(path, 0)], num_clips=2, num_frames=8, stride=8, crop_size=32)
    clips = ds[0]["clips"]
    assert clips.shape == (2, 3, 8, 32, 32)
    assert frame_ids(clips[0]) == [0, 9, 18, 19, 19, 19, 19, 19]


def test_static_video_gives_identical_frames_per_clip(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (1, 48, 64, 3), dtype=np.uint8).repeat(40, 0)
    path = str(tmp_path / "static.mp4")
    video.write_video(path, frames, options={"qp": "0"})
    ds = data.VideoDataset([(path, 0)], num_clips=3, num_frames=4, stride=8, crop_size=32)
    clips = ds[0]["clips"]
    # the same crop/flip on all T frames: every frame of a clip equals its first frame
    assert torch.equal(clips, clips[:, :, :1].expand_as(clips))


# ------------------------------------------------------------------------------------------------
# Dataset formats
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_mp4(tmp_path_factory):
    return gray_video(tmp_path_factory.mktemp("v") / "tiny.mp4", 12, size=(16, 24))


def place(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.symlink(src, dst)


def test_kinetics_list_space_comma_and_unlabelled(tmp_path, tiny_mp4):
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        place(tiny_mp4, str(tmp_path / "videos" / name))
    (tmp_path / "train.csv").write_text("videos/a.mp4 4\nvideos/b.mp4 7\n")
    (tmp_path / "val.csv").write_text("videos/a.mp4,1\nvideos/c.mp4,2\n\n")
    (tmp_path / "pretrain.txt").write_text("videos/b.mp4\nvideos/c.mp4\n")
    train = data.build_dataset("kinetics", root=str(tmp_path), split="train", num_frames=2, crop_size=16)
    assert [(os.path.basename(p), lab) for p, lab in train.videos] == [("a.mp4", 4), ("b.mp4", 7)]
    val = data.build_dataset("kinetics", root=str(tmp_path), split="val", mode="test", test_clips=1,
                             test_crops=1, num_frames=2, crop_size=16)
    assert [lab for _, lab in val.videos] == [1, 2]
    unl = data.build_dataset("kinetics", root=str(tmp_path), list_file=str(tmp_path / "pretrain.txt"),
                             num_frames=2, crop_size=16)
    assert [lab for _, lab in unl.videos] == [-1, -1]
    item = unl[1]
    assert item["label"] == -1 and item["clips"].shape == (1, 3, 2, 16, 16)


def test_ucf101_official_splits(tmp_path, tiny_mp4):
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    for k in (1, 2, 3):
        (lists / f"trainlist0{k}.txt").write_text(
            f"ApplyEyeMakeup/v_ApplyEyeMakeup_g0{k}_c01.avi 1\nArchery/v_Archery_g0{k}_c01.avi 2\n")
        (lists / f"testlist0{k}.txt").write_text(f"Archery/v_Archery_g1{k}_c01.avi\n")
        for rel in ((lists / f"trainlist0{k}.txt").read_text().split()[::2]
                    + [(lists / f"testlist0{k}.txt").read_text().strip()]):
            place(tiny_mp4, str(tmp_path / "UCF-101" / rel))
    train = data.build_dataset("ucf101", root=str(tmp_path), split="train", official_split=2, crop_size=16)
    assert [(os.path.basename(p), lab) for p, lab in train.videos] == [
        ("v_ApplyEyeMakeup_g02_c01.avi", 0), ("v_Archery_g02_c01.avi", 1)]
    test = data.build_dataset("ucf101", root=str(tmp_path), split="test", official_split=3, crop_size=16)
    assert [(os.path.basename(p), lab) for p, lab in test.videos] == [("v_Archery_g13_c01.avi", 1)]
    assert train.classes == ["ApplyEyeMakeup", "Archery"]
    with pytest.raises(ValueError, match="--split"):
        data.build_dataset("ucf101", root=str(tmp_path), official_split=4)


def test_hmdb51_official_splits(tmp_path, tiny_mp4):
    lists = tmp_path / "testTrainMulti_7030_splits"
    lists.mkdir()
    for cls in ("climb", "brush_hair"):
        for k in (1, 2, 3):
            (lists / f"{cls}_test_split{k}.txt").write_text(
                f"{cls}_a{k}.avi 1 \n{cls}_b{k}.avi 2 \n{cls}_c{k}.avi 0 \n")
            for v in "abc":
                place(tiny_mp4, str(tmp_path / cls / f"{cls}_{v}{k}.avi"))
    train = data.build_dataset("hmdb51", root=str(tmp_path), split="train", official_split=1, crop_size=16)
    assert [(os.path.basename(p), lab) for p, lab in train.videos] == [
        ("brush_hair_a1.avi", 0), ("climb_a1.avi", 1)]
    test = data.build_dataset("hmdb51", root=str(tmp_path), split="test", official_split=3, crop_size=16)
    assert [(os.path.basename(p), lab) for p, lab in test.videos] == [
        ("brush_hair_b3.avi", 0), ("climb_b3.avi", 1)]


def test_ssv2_json(tmp_path, tiny_mp4):
    (tmp_path / "something-something-v2-labels.json").write_text(json.dumps(
        {"Holding something": "0", "Putting something on something": "1"}))
    (tmp_path / "something-something-v2-train.json").write_text(json.dumps([
        {"id": "11", "label": "putting a cup on a table", "template": "Putting [something] on [something]",
         "placeholders": ["a cup", "a table"]},
        {"id": "12", "label": "holding a pen", "template": "Holding [something]", "placeholders": ["a pen"]}]))
    (tmp_path / "something-something-v2-validation.json").write_text(json.dumps([
        {"id": "13", "label": "holding x", "template": "Holding [something]", "placeholders": ["x"]}]))
    for i in ("11", "12", "13"):
        place(tiny_mp4, str(tmp_path / f"{i}.webm"))
    train = data.build_dataset("ssv2", root=str(tmp_path), split="train", crop_size=16)
    assert [(os.path.basename(p), lab) for p, lab in train.videos] == [("11.webm", 1), ("12.webm", 0)]
    val = data.build_dataset("ssv2", root=str(tmp_path), split="val", mode="test", test_clips=1,
                             test_crops=1, crop_size=16)
    # test views of round(16 x 256 / 224) = 18; ssv2 follows PySlowFast's ssv2.py (segment sampling)
    assert [lab for _, lab in val.videos] == [0] and val[0]["clips"].shape == (1, 3, 8, 18, 18)
    assert train.sampling == val.sampling == "ssv2"


def test_folder_per_class(tmp_path, tiny_mp4):
    for cls, names in (("walk", ["1.mp4", "2.avi"]), ("jump", ["3.mkv"])):
        for n in names:
            place(tiny_mp4, str(tmp_path / cls / n))
    (tmp_path / "walk" / "notes.txt").write_text("not a video")
    ds = data.build_dataset("folder", root=str(tmp_path), crop_size=16)
    assert [(os.path.basename(p), lab) for p, lab in ds.videos] == [("3.mkv", 0), ("1.mp4", 1), ("2.avi", 1)]
    assert ds.classes == ["jump", "walk"]


def test_csv_with_class_names_like_surveillance_fight(tmp_path, tiny_mp4):
    for rel in ("noFight/n1.mp4", "fight/f1.mp4", "fight/f2.mp4"):
        place(tiny_mp4, str(tmp_path / rel))
    (tmp_path / "labels.csv").write_text("path,label\nnoFight/n1.mp4,noFight\nfight/f1.mp4,fight\n"
                                         "fight/f2.mp4,fight\n")
    ds = data.build_dataset("csv", root=str(tmp_path), list_file=str(tmp_path / "labels.csv"), crop_size=16)
    assert ds.classes == ["fight", "noFight"]
    assert [lab for _, lab in ds.videos] == [1, 0, 0]
    (tmp_path / "bad.csv").write_text("file,class\nx.mp4,1\n")
    with pytest.raises(ValueError, match="path,label"):
        data.build_dataset("csv", list_file=str(tmp_path / "bad.csv"))


def test_synthetic_is_deterministic_cached_and_decodable(tmp_path):
    kw = dict(seed=3, num_classes=3, videos_per_class=2, val_videos_per_class=1, height=32, width=48,
              num_frames=16)
    root = data.make_synthetic_dataset(str(tmp_path / "a"), **kw)
    data.make_synthetic_dataset(str(tmp_path / "b"), **kw)
    a = open(os.path.join(root, "train/class1/train_1_001.mp4"), "rb").read()
    b = open(str(tmp_path / "b/train/class1/train_1_001.mp4"), "rb").read()
    assert a == b  # same seed, same bytes
    mtime = os.path.getmtime(os.path.join(root, "train.csv"))
    data.make_synthetic_dataset(root, **kw)  # cached: nothing rewritten
    assert os.path.getmtime(os.path.join(root, "train.csv")) == mtime
    train = data.build_dataset("synthetic", root=root, split="train", num_clips=2, num_frames=4, stride=2,
                               crop_size=24)
    val = data.build_dataset("synthetic", root=root, split="val", mode="test", test_clips=1, test_crops=1,
                             num_frames=4, stride=2, crop_size=24)
    assert sorted(lab for _, lab in train.videos) == [0, 0, 1, 1, 2, 2] and len(val) == 3
    assert train[0]["clips"].shape == (2, 3, 4, 24, 24)


def test_synthetic_classes_differ_in_appearance_and_motion():
    c = [data._synthetic_class(k, 6) for k in range(6)]
    assert len({tuple(np.round(x["colour"])) for x in c}) == 6
    assert len({(round(x["angle"], 3), x["speed"]) for x in c}) == 6


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------

def audio_only(path):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(8000, np.int16).tobytes())
    return str(path)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = gray_video(d / "good.mp4", 40)
    raw = open(good, "rb").read()
    files = {}
    files["zero"] = str(d / "zero.mp4")
    open(files["zero"], "wb").close()
    files["truncated_mp4"] = str(d / "trunc.mp4")
    open(files["truncated_mp4"], "wb").write(raw[: len(raw) // 2])
    files["text"] = str(d / "text.mp4")
    open(files["text"], "w").write("this is not a video\n" * 50)
    files["garbage"] = str(d / "garbage.avi")
    open(files["garbage"], "wb").write(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    files["audio_only"] = audio_only(d / "audio.wav")
    files["missing"] = str(d / "does_not_exist.mp4")
    return good, files


def test_undecodable_files_are_set_aside_with_their_reason(bad_files):
    _, files = bad_files
    for kind, path in files.items():
        item = data.VideoDataset([(path, 0)], num_clips=2, num_frames=4, crop_size=16)[0]
        assert item["undecodable"] == path and item["index"] == 0 and "clips" not in item, kind
        assert item["reason"].split(":")[0] in ("InvalidDataError", "FileNotFoundError", "UndecodableVideo",
                                                "EOFError"), (kind, item["reason"])


def test_damaged_but_readable_videos_still_decode(tmp_path):
    # header at the front (mkv) then cut in the middle: the frames before the cut are used
    path = gray_video(tmp_path / "cut.mkv", 60)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: int(len(raw) * 0.6)])
    # bytes overwritten inside the stream
    path2 = gray_video(tmp_path / "flipped.mp4", 60)
    raw = bytearray(open(path2, "rb").read())
    raw[len(raw) // 3: len(raw) // 3 + 200] = bytes(200)
    open(path2, "wb").write(bytes(raw))
    for p in (path, path2):
        item = data.VideoDataset([(p, 0)], num_clips=2, num_frames=4, crop_size=16)[0]
        assert "undecodable" in item or item["clips"].shape == (2, 3, 4, 16, 16)
    assert "clips" in data.VideoDataset([(path, 0)], num_clips=1, num_frames=4, crop_size=16)[0]


def test_odd_sizes_and_frame_rates(tmp_path):
    cases = [((17, 33), 30, 25), ((12, 16), 30, 25), ((40, 30), 5, 25), ((24, 32), 60, 25),
             ((24, 32), 29.97, 25), ((24, 32), 30, 1)]  # ..., a single-frame video
    for k, (size, fps, n) in enumerate(cases):
        frames = np.random.default_rng(k).integers(0, 255, (n,) + size + (3,), dtype=np.uint8)
        path = str(tmp_path / f"v{k}.mp4")
        video.write_video(path, frames, fps=fps, pix_fmt="yuv444p")
        for mode, side in (("train", 24), ("test", 27)):  # test views: round(24 x 256 / 224) = 27
            item = data.VideoDataset([(path, 0)], num_clips=2, num_frames=8, crop_size=24, mode=mode,
                                     test_clips=2, test_crops=3)[0]
            assert item["clips"].shape[1:] == (3, 8, side, side), (size, fps, mode)


def test_collate_counts_skipped_and_never_substitutes(bad_files):
    good, files = bad_files
    videos = [(good, 5), (files["zero"], 6), (files["text"], 7), (good, 8), (files["missing"], 9)]
    ds = data.VideoDataset(videos, num_clips=3, num_frames=2, crop_size=16)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=1, collate_fn=data.collate_skip_bad)
    batch = next(iter(loader))
    assert [p for p, _ in batch["skipped"]] == [files["zero"], files["text"], files["missing"]]
    assert batch["clips"].shape == (2, 3, 3, 2, 16, 16)
    assert batch["label"].tolist() == [5, 8] and batch["index"].tolist() == [0, 3]
    empty = data.collate_skip_bad([ds[1], ds[2]])
    assert len(empty["skipped"]) == 2 and empty["clips"].shape[0] == 0


def test_missing_files_fail_at_startup_with_count_and_paths(tmp_path, tiny_mp4, capsys):
    place(tiny_mp4, str(tmp_path / "ok.mp4"))
    lines = ["ok.mp4 0"] + [f"gone{i}.mp4 1" for i in range(7)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(FileNotFoundError) as e:
        data.build_dataset("kinetics", root=str(tmp_path))
    assert "7 of 8" in str(e.value) and "gone0.mp4" in str(e.value) and "--skip_missing" in str(e.value)
    assert "\n" not in str(e.value)
    ds = data.build_dataset("kinetics", root=str(tmp_path), skip_missing=True)
    assert len(ds) == 1 and "7 of 8" in capsys.readouterr().out
    # every missing path, not only the first, is written where the user sees it
    data.write_missing_videos(str(tmp_path / "out"), ds)
    listed = (tmp_path / "out" / "missing_videos.txt").read_text().splitlines()
    assert [os.path.basename(p) for p in listed] == [f"gone{i}.mp4" for i in range(7)]


def test_bad_arguments_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--dataset"):
        data.build_dataset("imagenet", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--data_root"):
        data.build_dataset("ucf101", root=str(tmp_path))
    with pytest.raises(ValueError, match="test_crops"):
        data.VideoDataset([], mode="test", test_crops=2)


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def test_repeated_decoding_keeps_memory_flat(tmp_path, bad_files):
    # the full 1,000-decode measurement is `python bench/data.py --memory`
    good, files = bad_files
    ds = data.VideoDataset([(good, 0), (files["truncated_mp4"], 0)], num_clips=3, num_frames=8,
                           crop_size=32)
    for i in range(30):
        ds[i % 2]
    before = rss_mb()
    for i in range(120):
        ds[i % 2]
    assert rss_mb() - before < 15


def test_raw_stream_without_timestamps_or_frame_count(tmp_path):
    # a raw .h264 elementary stream: no container frame count, no duration, no pts
    path = gray_video(tmp_path / "raw.h264", 50, gop_size=10)
    stats = {}
    info, frames = video.read_frames(path, lambda info: np.array([5, 33, 47]), stats=stats)
    assert info.num_frames == 50  # counted from the packets
    assert {k: int(round(v.mean() / 4)) for k, v in frames.items()} == {5: 5, 33: 33, 47: 47}


# ----------------------------------------------------------------------------------------------
# Lists: never another list in place of a missing one; what scan.py finds
# ----------------------------------------------------------------------------------------------

def test_no_validation_list_is_an_error_not_the_training_list(small_root, tmp_path):
    """A folder with a training list and no val.csv: an error naming --val_list, never validation on the
    training list."""
    videos, _ = data.read_csv_list(str(small_root / "data" / "train.csv"))
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(f"{p},{y}\n" for p, y in videos))
    with pytest.raises(FileNotFoundError, match=rf"--val_list: no list given and {tmp_path}/val.csv does not exist"):
        data.build_dataset("csv", root=str(tmp_path), split="val")
    with pytest.raises(FileNotFoundError, match=rf"^--val_list: no list given and {tmp_path}/val.csv"):
        run_script(eval_knn, ["--pretrained", str(small_root / "A.pth"), "--output_dir", str(tmp_path / "knn")] + EVAL_TINY
                   + ["--dataset", "csv", "--data_root", str(tmp_path), "--train_list", str(tmp_path / "labels.csv")])
    assert not (tmp_path / "knn").exists()


def test_the_synthetic_set_is_never_written_where_real_data_is_expected(small_root, tmp_path, monkeypatch):
    """--dataset synthetic without --data_root uses the synthetic cache, never the evaluations' real-data
    folders (data/k400, data/ucf101); a real data set without --data_root is one line."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "SYNTHETIC_ROOT", str(small_root / "data"))
    for module, extra in ((eval_knn, []), (finetune, ["--epochs", "1", "--max_iters_per_epoch", "1"])):
        out = tmp_path / module.__name__
        run_script(module, ["--pretrained", str(small_root / "A.pth"), "--output_dir", str(out),
                            "--results_dir", str(tmp_path / "res")] + EVAL_TINY + extra)
        with open(out / "config.json") as f:
            assert json.load(f)["data_root"] == str(small_root / "data")
    assert not (tmp_path / "data").exists()
    with pytest.raises(ValueError, match=r"^--data_root is required for --dataset ucf101$"):
        run_script(finetune, ["--pretrained", str(small_root / "A.pth"), "--dataset", "ucf101", "--output_dir",
                              str(tmp_path / "ucf")])
    assert not (tmp_path / "ucf").exists()


def test_a_csv_saved_with_a_byte_order_mark_reads_like_one_without(small_root, tmp_path):
    plain = (small_root / "data" / "train.csv").read_text()
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + plain.encode())
    (tmp_path / "plain.csv").write_text(plain)
    assert data.read_csv_list(str(tmp_path / "bom.csv"), str(small_root / "data")) == \
        data.read_csv_list(str(tmp_path / "plain.csv"), str(small_root / "data"))
    (tmp_path / "k.txt").write_bytes(b"\xef\xbb\xbfa.mp4 3\nb.mp4 4\n")
    assert data.read_kinetics_list(str(tmp_path / "k.txt"), "/r")[0] == [("/r/a.mp4", 3), ("/r/b.mp4", 4)]


def test_scan_lists_every_bad_video_of_a_list_before_training(small_root, tmp_path):
    import scan
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "garbage.mp4").write_bytes(b"not a video " * 20)
    good = [line.split(",") for line in (small_root / "data" / "train.csv").read_text().splitlines()[1:4]]
    lines = [f"{small_root / 'data' / p} {y}" for p, y in good] + ["garbage.mp4 1", "gone.mp4 2"]
    (mixed / "train.csv").write_text("\n".join(lines) + "\n")
    bad = scan.main(scan.get_args_parser().parse_args(
        ["--dataset", "kinetics", "--data_root", str(mixed), "--num_workers", "2",
         "--output", str(tmp_path / "bad.txt"), "--clean_list", str(tmp_path / "clean.csv")]))
    assert sorted(os.path.basename(p) for p in bad) == ["garbage.mp4", "gone.mp4"]
    written = dict(line.split("\t") for line in (tmp_path / "bad.txt").read_text().splitlines())
    assert written[str(mixed / "gone.mp4")] == "missing: no such file"
    assert written[str(mixed / "garbage.mp4")].startswith("InvalidDataError")
    clean, _ = data.read_kinetics_list(str(tmp_path / "clean.csv"))
    assert clean == [(str(small_root / "data" / p), int(y)) for p, y in good]


# ----------------------------------------------------------------------------------------------
# What lists hold (copies, videos in both, labels training lacks) and what the records say of them
# ----------------------------------------------------------------------------------------------

def small_lists(small_root, folder):
    """The small set's training and validation rows (absolute paths, labels 0-2)."""
    rows = {}
    for split in ("train", "val"):
        videos, _ = data.read_csv_list(str(small_root / "data" / f"{split}.csv"))
        rows[split] = [(os.path.normpath(p), y) for p, y in videos]
    os.makedirs(folder, exist_ok=True)
    return rows


def write_list(path, rows):
    path.write_text("path,label\n" + "".join(f"{p},{y}\n" for p, y in rows))
    return str(path)


def knn_argv(small_root, tmp_path, train, val):
    return ["--pretrained", str(small_root / "A.pth"), "--output_dir", str(tmp_path / "knn"), "--results_dir",
            str(tmp_path / "res")] + EVAL_TINY + ["--dataset", "csv", "--train_list", train, "--val_list", val]


def test_validation_labels_training_never_saw_stop_an_evaluation(small_root, tmp_path):
    """A validation video whose label no training video has can never be classified right: the
    evaluation stops before anything is written, with the count and the first classes, unless
    --allow_unseen_labels says the user means it (open-set: scored, and wrong)."""
    rows = small_lists(small_root, tmp_path)
    train = write_list(tmp_path / "train.csv", rows["train"])
    val_rows = rows["val"][:-2] + [(rows["val"][-2][0], 7), (rows["val"][-1][0], 9)]
    val = write_list(tmp_path / "val.csv", val_rows)
    with pytest.raises(ValueError) as e:
        run_script(eval_knn, knn_argv(small_root, tmp_path, train, val))
    assert str(e.value) == (f"2 of the 9 videos of the csv val list ({val}) have a label that the csv train list "
                            f"({train}) does not have (labels 7, 9): no classifier can get them right; fix the lists, "
                            f"or pass --allow_unseen_labels to score them anyway (open-set)")
    assert not (tmp_path / "knn").exists() and not (tmp_path / "res").exists()
    with pytest.raises(ValueError, match=r"^2 of the 9 videos of the csv val list"):
        run_script(eval_linear, knn_argv(small_root, tmp_path, train, val) + ["--epochs", "1", "--warmup_epochs", "0"])
    record = run_script(eval_knn, knn_argv(small_root, tmp_path, train, val) + ["--allow_unseen_labels"])
    assert record["num_videos"] == 9 and record["value"] <= 100 * 7 / 9


def test_a_list_with_class_names_beside_one_with_ids_stops_an_evaluation(tmp_path, tiny_mp4):
    """Training names its classes (ids: sorted names), validation gives ids: nothing says which id is which
    name, so the run stops naming both lists rather than compare the two numberings."""
    for rel in ("t/a.mp4", "t/b.mp4", "v/a.mp4"):
        place(tiny_mp4, str(tmp_path / rel))
    (tmp_path / "train.csv").write_text("path,label\nt/a.mp4,run\nt/b.mp4,jump\n")
    (tmp_path / "val.csv").write_text("path,label\nv/a.mp4,1\n")
    sets = [data.build_dataset("csv", root=str(tmp_path), split=split, list_file=str(tmp_path / f"{split}.csv"),
                               crop_size=16) for split in ("train", "val")]
    message = (f"the csv train list ({tmp_path / 'train.csv'}) names its classes and the csv val list "
               f"({tmp_path / 'val.csv'}) gives class ids: which id is which name is nowhere said; give both "
               f"lists class names, or both ids")
    for train, val in (sets, sets[::-1]):  # either way round, the list with names is named first
        with pytest.raises(ValueError) as e:
            data.check_eval_lists(train, val, allow_unseen=True)
        assert str(e.value) == message


def test_class_names_of_a_validation_list_take_the_training_lists_ids(tmp_path, tiny_mp4):
    """Lists that name their classes: ids are the training list's (sorted names), whatever names the
    validation list happens to hold; a name training lacks is reported by name."""
    for rel in ("t/a.mp4", "t/b.mp4", "t/c.mp4", "v/a.mp4", "v/c.mp4", "v/d.mp4"):
        place(tiny_mp4, str(tmp_path / rel))
    (tmp_path / "train.csv").write_text("path,label\nt/a.mp4,run\nt/b.mp4,jump\nt/c.mp4,walk\n")
    (tmp_path / "val.csv").write_text("path,label\nv/a.mp4,run\nv/c.mp4,walk\n")
    train = data.build_dataset("csv", root=str(tmp_path), list_file=str(tmp_path / "train.csv"), crop_size=16)
    val = data.build_dataset("csv", root=str(tmp_path), split="val", list_file=str(tmp_path / "val.csv"),
                             crop_size=16)
    assert train.classes == ["jump", "run", "walk"] and val.classes == ["run", "walk"]
    assert data.check_eval_lists(train, val) == 0
    assert [y for _, y in val.videos] == [1, 2] and val.classes == train.classes  # run, walk as in training
    (tmp_path / "val2.csv").write_text("path,label\nv/a.mp4,run\nv/d.mp4,swim\n")
    val2 = data.build_dataset("csv", root=str(tmp_path), split="val", list_file=str(tmp_path / "val2.csv"),
                              crop_size=16)
    with pytest.raises(ValueError, match=r"^1 of the 2 videos of the csv val list .* \(label swim\)"):
        data.check_eval_lists(train, val2)
    assert data.check_eval_lists(train, val2, allow_unseen=True) == 1
    assert [y for _, y in val2.videos] == [1, 3]  # swim: an id no training video has


def test_videos_in_both_lists_stop_an_evaluation(small_root, tmp_path):
    rows = small_lists(small_root, tmp_path)
    train = write_list(tmp_path / "train.csv", rows["train"])
    val = write_list(tmp_path / "val.csv", rows["val"] + rows["train"][:4])
    with pytest.raises(ValueError) as e:
        run_script(eval_knn, knn_argv(small_root, tmp_path, train, val))
    assert str(e.value) == (f"4 videos are in both the csv train list ({train}) and the csv val list ({val}) (first: "
                            f"{sorted(p for p, _ in rows['train'][:4])[0]}): a score on them is no test; remove them "
                            f"from one of the lists")
    assert not (tmp_path / "knn").exists()


def test_a_list_with_every_video_twice_is_a_warning_line(small_root, tmp_path, capsys):
    """Copies double the weight of those videos (and, across lists, leak): said in one line with counts."""
    rows = small_lists(small_root, tmp_path)
    twice = write_list(tmp_path / "twice.csv", rows["train"] + rows["train"])
    run_script(pretrain, PRETRAIN_TINY + ["--dataset", "csv", "--train_list", twice, "--val_list",
                                          str(small_root / "data" / "val.csv"), "--output_dir", str(tmp_path / "run"),
                                          "--teacher", "efficientnet_lite0", "--monitor_videos", "0"])
    warnings = [line for line in capsys.readouterr().out.splitlines() if "more than once" in line]
    assert warnings == [f"warning: 18 videos of the csv train list are listed more than once (18 extra copies of 36 "
                        f"lines; first: {rows['train'][0][0]}); each copy counts as a video"]


def test_records_state_the_data_they_saw(small_root, tmp_path, tiny_mp4):
    """Every run's config.json and every evaluation record: the list file and its sha256 (of the bytes,
    as sha256sum gives it), the data root, and the videos listed, found and (records) skipped."""
    rows = small_lists(small_root, tmp_path)
    (tmp_path / "broken.mp4").write_bytes(b"not a video " * 20)
    train = write_list(tmp_path / "train.csv", rows["train"] + [(str(tmp_path / "gone.mp4"), 0),
                                                                 (str(tmp_path / "broken.mp4"), 1)])
    val = write_list(tmp_path / "val.csv", rows["val"])
    record = run_script(eval_knn, knn_argv(small_root, tmp_path, train, val) + [
        "--skip_missing", "--max_skip_share", "0.2", "--data_root", str(tmp_path)])
    sha = {name: hashlib.sha256(open(path, "rb").read()).hexdigest() for name, path in (("train", train), ("val", val))}
    assert record["data"] == {
        "train": dict(list=train, sha256=sha["train"], data_root=str(tmp_path), listed=20, found=19, skipped=1),
        "val": dict(list=val, sha256=sha["val"], data_root=str(tmp_path), listed=9, found=9, skipped=0)}
    with open(tmp_path / "knn" / "config.json") as f:
        config = json.load(f)["data"]
    assert config == {k: {f: v for f, v in d.items() if f != "skipped"} for k, d in record["data"].items()}
    out = tmp_path / "pretrain"
    run_script(pretrain, PRETRAIN_TINY + ["--dataset", "csv", "--train_list", val, "--data_root", str(tmp_path),
                                          "--val_list", val, "--output_dir", str(out), "--monitor_videos", "0",
                                          "--teacher", "efficientnet_lite0"])
    with open(out / "config.json") as f:
        assert json.load(f)["data"] == {"train": dict(list=val, sha256=sha["val"], data_root=str(tmp_path), listed=9,
                                                      found=9)}
