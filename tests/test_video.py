"""video.py: selective decoding gives exactly the frames of a plain full decode, on every kind of file."""
import av
import numpy as np
import pytest

import video

N = 90  # 3 s at 30 fps, 64x48: every file here encodes and decodes in milliseconds


def moving_frames(n, h=48, w=64):
    """A drifting smooth pattern plus a per-frame code in the top rows: no two frames look alike, so a
    wrong frame cannot pass for the right one, and the motion gives the encoder B-frames to make."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        frames[t, ..., 0] = 128 + 100 * np.sin((x + 1.5 * t) / 7)
        frames[t, ..., 1] = 128 + 100 * np.cos((y - 0.7 * t) / 5)
        frames[t, ..., 2] = (x * 3 + y * 2 + 5 * t) % 256
        frames[t, :4, :] = (t * 37) % 256
    return frames


# name -> write_video arguments; vfr drops every third frame after the first (gaps in the timestamps)
FILES = {
    "h264_bframes.mp4": dict(gop_size=30),
    "h264_baseline.mp4": dict(options={"profile": "baseline"}),
    "vp9.webm": dict(codec="libvpx-vp9"),
    "mpeg4.avi": dict(codec="mpeg4", gop_size=12),
    "mpeg4_bframes.avi": dict(codec="mpeg4", gop_size=12, options={"bf": "2"}),
    "vfr.mp4": dict(pts=[k + k // 2 for k in range(N)]),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("formats")
    out = {}
    for name, kw in FILES.items():
        out[name] = str(d / name)
        video.write_video(out[name], moving_frames(N), fps=30, **kw)
    # header over-counts frames: an mkv (duration in its header) cut at 60%
    full = str(d / "truncated_full.mkv")
    video.write_video(full, moving_frames(N), fps=30, gop_size=30)
    raw = open(full, "rb").read()
    out["truncated.mkv"] = str(d / "truncated.mkv")
    open(out["truncated.mkv"], "wb").write(raw[: int(len(raw) * 0.6)])
    return out


def full_decode(path):
    """Every frame, decoded plainly with PyAV, as (index, RGB) in output order; a truncated file ends
    at its first error."""
    frames = []
    with av.open(path) as c:
        info = video.VideoInfo(c)
        try:
            for k, f in enumerate(c.decode(info.stream)):
                frames.append((info.frame_index(f, k), f.to_ndarray(format="rgb24")))
        except video.DECODE_ERRORS:
            pass
    return info, frames


def expected_frame(frames, i):
    """The last frame whose index is <= i, else the first frame."""
    before = [rgb for idx, rgb in frames if idx <= i]
    return before[-1] if before else frames[0][1]


def plans(num_frames, rng):
    """Index sets the reader must get right: everything, 3-clip plans, the start, past the end."""
    yield np.arange(num_frames + 3)
    yield np.array([0])
    yield np.array([num_frames - 1, num_frames + 10])
    for _ in range(6):
        starts = rng.integers(0, max(1, num_frames - 16), 3)
        idx = np.concatenate([np.linspace(s, s + 15, 4).astype(int) for s in starts])
        yield np.unique(np.clip(idx, 0, num_frames - 1))


@pytest.mark.parametrize("name", list(FILES) + ["truncated.mkv"])
def test_wanted_frames_identical_to_a_full_decode(files, name):
    path = files[name]
    info, frames = full_decode(path)
    assert len(frames) >= 20
    rng = np.random.default_rng(0)
    for wanted in plans(info.num_frames, rng):
        stats = {}
        _, got = video.read_frames(path, lambda _: wanted, stats=stats)
        assert sorted(got) == wanted.tolist()
        for i in wanted:
            assert np.array_equal(got[int(i)], expected_frame(frames, i)), (name, int(i), stats)
        assert stats["sent"] > 0, f"{name}: fell back to the forward path"


def test_truncated_header_over_counts(files):
    info, frames = full_decode(files["truncated.mkv"])
    assert info.num_frames == N and len(frames) < 0.8 * N


def test_non_reference_frames_nobody_needs_are_not_decoded(files):
    path = files["h264_bframes.mp4"]
    with av.open(path) as c:
        pts = [p.pts for p in c.demux(video=0) if p.size]
    assert any(b < a for a, b in zip(pts, pts[1:])), "no B-frames: the test would prove nothing"
    stats = {}
    video.read_frames(path, lambda _: np.array([3, 11, 19, 27]), stats=stats)
    # one run from the first keyframe: 28 packets sent, the B-frames between wanted frames dropped
    assert stats["runs"] == 1 and stats["decoded"] < stats["sent"] <= 32


def test_decoding_restarts_at_a_keyframe_between_clips(files):
    path = files["h264_bframes.mp4"]  # keyframes at 0, 30, 60
    stats = {}
    video.read_frames(path, lambda _: np.array([2, 5, 65, 68]), stats=stats)
    assert stats["runs"] == 2 and stats["sent"] < 20  # not the 69 packets up to frame 68


def test_gap_resolves_to_a_skippable_frame_which_is_decoded(files):
    # vfr.mp4 has frames at indices 0, 1, 3, 4, 6, ... (then scaled by the average rate): an index in
    # a gap resolves to the frame before it. Find such a frame that NONREF would drop, and ask for
    # the index after it only: it must be decoded anyway.
    path = files["vfr.mp4"]
    info, frames = full_decode(path)
    with av.open(path) as c:
        c.streams.video[0].codec_context.skip_frame = "NONREF"
        kept = {info.frame_index(f, k) for k, f in enumerate(c.decode(video=0))}
    present = {idx for idx, _ in frames}
    gaps = [j for j, _ in frames if j not in kept and j + 1 not in present and j + 1 < frames[-1][0]]
    assert gaps, "no dropped frame before a gap: the test would prove nothing"
    for j in gaps[:5]:
        _, got = video.read_frames(path, lambda _: np.array([j + 1]))
        assert np.array_equal(got[j + 1], expected_frame(frames, j + 1))
        assert np.array_equal(got[j + 1], dict(frames)[j])


def test_frame_threads_give_the_same_pixels(files):
    path = files["h264_bframes.mp4"]
    _, frames = full_decode(path)
    wanted = np.array([1, 7, 13, 40, 47, 88])
    _, got = video.read_frames(path, lambda _: wanted, decode_threads=2)
    for i in wanted:
        assert np.array_equal(got[int(i)], expected_frame(frames, i))


def test_stream_without_timestamps_takes_the_forward_path(tmp_path):
    path = str(tmp_path / "raw.h264")
    video.write_video(path, moving_frames(40), gop_size=10)
    _, frames = full_decode(path)
    stats = {}
    _, got = video.read_frames(path, lambda _: np.array([0, 17, 39]), stats=stats)
    assert stats["sent"] == 0
    for i in (0, 17, 39):
        assert np.array_equal(got[i], frames[i][1])


def test_a_needed_frame_that_does_not_come_out_takes_the_forward_path(files, monkeypatch):
    # e.g. a decoder that starts with too small a reorder depth and drops a frame: simulated by a
    # plan that needs a timestamp no packet carries
    path = files["h264_bframes.mp4"]
    _, frames = full_decode(path)
    resolve = video._resolve
    monkeypatch.setattr(video, "_resolve", lambda *a: {**resolve(*a), -1: -12345})
    stats = {}
    _, got = video.read_frames(path, lambda _: np.array([4, 50]), stats=stats)
    assert stats["sent"] == 0 and sorted(got) == [4, 50]
    for i in (4, 50):
        assert np.array_equal(got[i], expected_frame(frames, i))
