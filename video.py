"""Reading and writing video files with PyAV: the one frame reader of the project.

    read_frames(path, plan)   open a video once, decode only what the frames `plan(info)` asks for need
    VideoInfo                 fps, frame count and timestamps of the first video stream
    DECODE_ERRORS             what a broken or unreadable file raises while it is read
    undecodable_reason(path)  the one definition of a video the project cannot use (scan.py, prepare.py)
    write_video(path, frames) H.264 (or another codec) writer for the synthetic set, tests and benchmarks
    write_resized(src, dst)   a copy of a video at a smaller short side, H.264 without audio (prepare.py)
    count_frames(path)        header and fully decoded frame count of a file (prepare.py's verification)

Index i of a video is the last frame whose timestamp index is <= i (the first frame if none; past the
end, the last frame). read_frames decodes as little as that allows (selective decoding):
  1. Demux first, decode after. One seek to the keyframe before the earliest wanted index, then the
     packets are read (demuxing decodes nothing) up to a little past the last wanted index. Packets
     carry their frame's presentation timestamp and a keyframe flag, so the frame every wanted index
     resolves to, and where decoding could restart, are known before any decoding.
  2. Runs. Decoding restarts (decoder drained and flushed) at a keyframe lying between two needed
     frames, so frames between clips that fall in different GOPs are never decoded.
  3. Within a run, a packet whose frame is not needed is sent with FFmpeg's skip_frame = NONREF: the
     decoder drops it when no other frame references it (H.264/HEVC non-reference B-frames, MPEG-4
     B-VOPs) and decodes it otherwise, so every needed frame is bit-identical to a full decode.
  4. Only the needed frames are converted to RGB, through one single-threaded swscale context.
  5. The file is opened without FFmpeg's probe decoding (_SELECTIVE_OPEN), which costs more than
     decoding a frame and tells the selective path nothing it uses.
Files whose packets have no timestamps (raw streams), whose decoded frames do not carry the packets'
timestamps, or that fail part-way are decoded plainly from the start instead (the forward path).
"""
import bisect
import math
import os
from fractions import Fraction

import av
from av.video.reformatter import VideoReformatter
import numpy as np


class UndecodableVideo(Exception):
    """A file that opens but holds nothing we can use (no video stream, no frame)."""


# What opening and decoding a broken or unreadable file raises, and nothing else: PyAV's errors all
# derive from av.error.FFmpegError (a missing file is av.error.FileNotFoundError, garbage
# InvalidDataError, a cut stream EOFError); UndecodableVideo is ours (no video stream, no frame). A bug
# in the pipeline or a failed allocation (TypeError, IndexError, MemoryError, ...) is not a bad video:
# it surfaces with its traceback.
DECODE_ERRORS = (av.error.FFmpegError, UndecodableVideo)

# Opening a file runs FFmpeg's stream probe, which decodes the first frames only to fill in fields the
# selective path does not use (pixel format, a guess of the reorder depth): 3.1 of the 3.8 ms an open of
# a 340x256 H.264 file costs (measured). skip_frame=all reaches only that probing decoder; rates, frame
# counts and timestamps came out the same on 328 files. A decoder that starts with too small a
# reorder depth may drop a frame of a stream whose SPS does not state it: a needed frame then does not
# come out, and the forward path (opened with the full probe) decodes the file.
_SELECTIVE_OPEN = {"skip_frame": "all"}

# Packets read past the first one beyond the last wanted index: a B-frame of an earlier frame can
# still follow it in decode order, at most H.264's largest reorder depth (16) packets later.
_REORDER_MARGIN = 16


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------

class VideoInfo:
    """What sampling needs from the header: fps, frame count, timestamps of the first video stream."""

    def __init__(self, container):
        if not container.streams.video:
            raise UndecodableVideo("no video stream")
        self.stream = stream = container.streams.video[0]
        self.time_base = float(stream.time_base) if stream.time_base else None
        fps = None
        for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
            try:
                if rate and 0 < float(rate) < 10000:
                    fps = float(rate)
                    break
            except (ZeroDivisionError, TypeError, ValueError):
                continue
        # No usable rate in the header: index frames as if they were 30 fps (the sampling's reference).
        self.fps = fps or 30.0
        self.start_pts = stream.start_time or 0
        n = stream.frames or 0
        if n <= 0:  # webm and some avi headers carry no frame count: estimate it from the duration
            seconds = None
            if stream.duration and self.time_base:
                seconds = stream.duration * self.time_base
            elif container.duration:
                seconds = container.duration / av.time_base
            n = int(round(seconds * self.fps)) if seconds else 0
        self.num_frames = int(n)

    def pts_index(self, pts):
        """Frame index of a timestamp (needs time_base)."""
        return int(round((pts - self.start_pts) * self.time_base * self.fps))

    def frame_index(self, frame, counter):
        """Index of a decoded frame from its timestamp (robust to dropped frames), else its position."""
        if frame.pts is None or self.time_base is None:
            return counter
        return self.pts_index(frame.pts)


class _Fallback(Exception):
    """Selective decoding does not hold for this file: decode it forward from the start instead."""


class _SeekLanded(_Fallback):
    """The seek landed after the first wanted frame: decode selectively from the start instead."""


class _RGB:
    """Converts frames to uint8 (h, w, 3) RGB at one working size per video, through one swscale
    context per video with one thread: swscale's default (a thread per core) spawned threads for
    every video, and converting the 24 frames of a sample cost 3.4 ms instead of 1.2 ms (measured,
    340x256; the worker is single-threaded by design anyway)."""

    def __init__(self, max_short_side):
        self.max_short_side, self.size = max_short_side, None
        self.reformatter = VideoReformatter()

    def __call__(self, frame):
        if self.size is None:
            self.size = _working_size(frame, self.max_short_side)
        h, w = self.size
        if h == frame.height and w == frame.width:
            return self.reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
        # swscale's bilinear widens its filter when shrinking, so this is antialiased like AREA, but faster.
        return self.reformatter.reformat(frame, format="rgb24", width=w, height=h, interpolation="BILINEAR",
                                         threads=1).to_ndarray()


def _working_size(frame, max_short_side):
    """Convert HD frames straight to a smaller size (swscale resizes and converts YUV->RGB in one pass):
    no clip needs more than max_short_side pixels on the short side. Only worth it from three times
    that size on: the unscaled YUV->RGB conversion has a fast path that a scaled one lacks (measured per
    frame, unscaled vs scaled to a 320 short side: 640x360 0.22 vs 0.94 ms; 1280x720 1.0 vs 1.6 ms;
    1920x1080 2.4-2.9 vs 2.0 ms)."""
    h, w = frame.height, frame.width
    if not max_short_side or min(h, w) < 3 * max_short_side:
        return h, w
    s = max_short_side / min(h, w)
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


# ---- selective path: demux, plan, decode only what the plan needs ----------------------------

def _demux(container, info, wanted, seek, max_extra_frames, stats):
    """Packets (decode order) from the keyframe before wanted[0] (from the start if not seek) to a
    little past wanted[-1]."""
    if info.time_base is None:
        raise _Fallback("no time base")
    first, last = int(wanted[0]), int(wanted[-1])
    seek = seek and first > 0
    if seek:
        target = info.start_pts + int(first / info.fps / info.time_base)
        container.seek(target, stream=info.stream, backward=True, any_frame=False)
    stats["seeked"] = seek
    packets, after_last = [], 0
    cap = last + 1 + max_extra_frames  # hang guard: never read more packets than this
    try:
        for packet in container.demux(info.stream):
            if not packet.size:  # the end-of-stream marker, empty AVI chunks
                continue
            if packet.pts is None:
                raise _Fallback("packet without timestamp")
            packets.append(packet)
            if after_last or info.pts_index(packet.pts) > last:
                after_last += 1
            if after_last > _REORDER_MARGIN or len(packets) >= cap:
                break
    except DECODE_ERRORS:
        if not packets:
            raise
        # A truncated or corrupt file: the packets before the damage are the video.
    if not packets:
        raise UndecodableVideo("no packet")
    # Frames that follow the keyframe in decode order but precede it on screen may refer to frames
    # before the seek point (MPEG-4 B-VOPs, open GOPs): the seek must land at or before wanted[0].
    if seek and info.pts_index(packets[0].pts) > first:
        raise _SeekLanded(f"seek landed at frame {info.pts_index(packets[0].pts)}, after {first}")
    return packets


def _resolve(packets, info, wanted):
    """{wanted index: pts of the frame it resolves to}: the last frame whose index is <= it, else
    the first frame; timestamps come from the packets, in presentation order."""
    pts = sorted(p.pts for p in packets)
    if any(a == b for a, b in zip(pts, pts[1:])):
        raise _Fallback("two packets with one timestamp")
    index = [info.pts_index(t) for t in pts]  # non-decreasing, as pts
    return {int(i): pts[max(bisect.bisect_right(index, int(i)) - 1, 0)] for i in wanted}


def _runs(packets, needed):
    """[start, stop] packet ranges (decode order) to decode so that every needed packet is decoded.

    A run starts at the head of the packet list or at a restart point: a keyframe that no later
    packet precedes in presentation order (no leading frame refers to the GOP before it). A run ends
    at a needed packet; the next needed packet opens a new run when a restart point lies between.
    """
    restart_at = [False] * len(packets)
    earliest_after = float("inf")
    for k in range(len(packets) - 1, -1, -1):
        pts = packets[k].pts
        restart_at[k] = packets[k].is_keyframe and pts < earliest_after
        earliest_after = min(earliest_after, pts)
    runs, restart = [], 0
    for k, packet in enumerate(packets):
        if restart_at[k]:
            restart = k
        if packet.pts in needed:
            if runs and restart <= runs[-1][1]:
                runs[-1][1] = k
            else:
                runs.append([restart, k])
    return runs


def _decode_runs(codec, packets, runs, needed, convert, stats):
    """{pts: RGB} of the needed frames. Packets of frames nobody needs go in with skip_frame NONREF."""
    all_pts = {p.pts for p in packets}
    rgb = {}

    def take(frames):
        for frame in frames:
            stats["decoded"] += 1
            if frame.pts not in all_pts:  # the decoder re-timed frames: packet timestamps mean nothing
                raise _Fallback("decoded frame with a timestamp no packet has")
            if frame.pts in needed and frame.pts not in rgb:
                rgb[frame.pts] = convert(frame)

    for start, stop in runs:
        for packet in packets[start:stop + 1]:
            codec.skip_frame = "DEFAULT" if packet.pts in needed else "NONREF"
            take(codec.decode(packet))
        codec.skip_frame = "DEFAULT"
        take(codec.decode(None))  # drain: the frames the decoder holds back for reordering
        codec.flush_buffers()     # ready for the next run's keyframe
    if len(rgb) < len(needed):
        raise _Fallback("a needed frame did not come out of the decoder")
    return rgb


def _decode_selected(container, info, wanted, seek, convert, max_extra_frames, stats):
    """{index: RGB} for the sorted unique `wanted` indices, decoding only the frames they need."""
    stats.update(decoded=0, seeked=False, runs=0, sent=0)
    packets = _demux(container, info, wanted, seek, max_extra_frames, stats)
    resolved = _resolve(packets, info, wanted)
    needed = set(resolved.values())
    runs = _runs(packets, needed)
    stats.update(runs=len(runs), sent=sum(stop - start + 1 for start, stop in runs))
    rgb = _decode_runs(info.stream.codec_context, packets, runs, needed, convert, stats)
    return {i: rgb[pts] for i, pts in resolved.items()}


# ---- forward path: decode from the start, frame by frame -----------------------------------

def _decode_forward(container, info, wanted, seek, convert, max_extra_frames, stats):
    """{index: RGB} by decoding every frame from the start (frames without timestamps are indexed by
    position). Stops at the first frame past the last wanted index; a corrupt packet after some good
    frames ends the video, as a header that over-counts frames does (both clamp to the last frame)."""
    stats.update(decoded=0, seeked=False, runs=1, sent=0)
    out, p = {}, 0
    held, held_rgb = None, None  # the last frame so far, and its RGB once converted
    cap = int(wanted[-1]) + 1 + max_extra_frames  # hang guard: never decode more than this many frames
    try:
        for counter, frame in enumerate(container.decode(info.stream)):
            stats["decoded"] += 1
            idx = info.frame_index(frame, counter)
            while p < len(wanted) and wanted[p] < idx:
                if held is None:  # an index before the first frame gets the first frame
                    held = frame
                held_rgb = held_rgb if held_rgb is not None else convert(held)
                out[int(wanted[p])] = held_rgb
                p += 1
            if p == len(wanted) or counter >= cap:
                break
            if held is not frame:
                held, held_rgb = frame, None
    except DECODE_ERRORS:
        if held is None:
            raise
    if held is None:
        raise UndecodableVideo("no frame decoded")
    for i in wanted[p:]:  # end of stream before these indices: the last frame
        held_rgb = held_rgb if held_rgb is not None else convert(held)
        out[int(i)] = held_rgb
    return out


def _count_packets(path):
    with av.open(path, metadata_errors="ignore") as container:
        return sum(1 for p in container.demux(video=0) if p.size)


def read_frames(path, plan, max_short_side=None, decode_threads=1, max_extra_frames=300, stats=None):
    """Open `path` once and decode the frames that `plan(info) -> sorted unique indices` asks for.

    stats (a dict, optional) receives "decoded" (frames out of the decoder), "seeked" (whether it
    sought), "runs" (decoder restarts at a keyframe) and "sent" (packets given to the decoder; 0 on
    the forward path).

    Returns (info, {index: uint8 (H, W, 3)}), index i holding the last frame whose timestamp index is
    <= i. Decodes selectively (module docstring); if the seek fails or lands badly, selectively from
    the start; where selective decoding does not hold for a file, plainly from the start (the plan is
    asked again at each try). Raises one of DECODE_ERRORS.
    """
    stats = stats if stats is not None else {}
    tries = ((_decode_selected, True), (_decode_selected, False), (_decode_forward, False))
    t = 0
    while t < len(tries):
        decode, seek = tries[t]
        probe = _SELECTIVE_OPEN if decode is _decode_selected else None
        with av.open(path, metadata_errors="ignore", options=probe) as container:
            info = VideoInfo(container)
            if info.num_frames <= 0:  # no count and no duration in the header (raw streams): count packets
                info.num_frames = _count_packets(path)
            # One decoding thread per worker: data-loader workers already use every core, and on the
            # 2-core machine thread_type AUTO/FRAME with 2 threads decoded no faster (0.54-0.61 vs
            # 0.53-0.62 ms per 340x256 frame).
            info.stream.codec_context.thread_count = decode_threads
            wanted = plan(info)
            try:
                return info, decode(container, info, wanted, seek, _RGB(max_short_side), max_extra_frames,
                                    stats)
            except _SeekLanded:
                t += 1
            except _Fallback:
                t = len(tries) - 1
            except DECODE_ERRORS:
                if decode is _decode_forward:
                    raise
                t = len(tries) - 1  # e.g. the demuxer cannot seek this file: decode from the start
    raise UndecodableVideo("decoding failed")


# The frames undecodable_reason decodes, spread over the whole length (first and last included).
SCAN_FRAMES = 5
MISSING = "missing: no such file"


def undecodable_reason(path, num_frames=SCAN_FRAMES):
    """None when the video can be used, else why not: MISSING when there is no such file, else the
    error (type: message) that read_frames, the training reader, raises at num_frames frames spread
    over the whole length. So a zero-byte or garbage file, no video stream, and an mp4 cut short
    (its index is written last) are undecodable; a file without an index (mkv, webm, avi) cut short
    decodes up to the cut, as training reads it (clamped to its last frame)."""
    if not os.path.isfile(path):
        return MISSING
    try:
        read_frames(path, lambda info: np.unique(np.linspace(0, max(info.num_frames - 1, 0), num_frames)
                                                 .round().astype(int)))
    except DECODE_ERRORS as e:
        return f"{type(e).__name__}: {e}"
    return None


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

def write_video(path, frames, fps=30, codec="libx264", pix_fmt="yuv420p", options=None, gop_size=None,
                pts=None):
    """Write uint8 frames (T, H, W, 3) to path (container from the extension), atomically.

    pts: increasing integer timestamps of the frames in units of 1/fps (a variable-frame-rate file
    when they have gaps); frame k is at k/fps when None."""
    frames = np.asarray(frames, dtype=np.uint8)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.part{os.getpid()}{ext}"
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, int) else fps
    with av.open(tmp, "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = dict(options)
        if gop_size:
            stream.codec_context.gop_size = gop_size
        for k, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = int(pts[k]), 1 / Fraction(rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    os.replace(tmp, path)


# ---- resized copies (prepare.py) ----------------------------------------------------------------

def copy_size(height, width, short_side):
    """(height, width) of a copy: the short side scaled down to short_side, the other in proportion;
    never scaled up (a larger picture adds no detail and costs decoding); both even (H.264 4:2:0)."""
    scale = min(1.0, short_side / min(height, width))
    return max(2, int(round(height * scale / 2)) * 2), max(2, int(round(width * scale / 2)) * 2)


# A copy repeats a frame over a gap in the timestamps, but a jump longer than this is a broken clock,
# not a pause: the copy stops with an error instead of writing minutes of one frame.
MAX_GAP_SECONDS = 60


def _add_copy_stream(out, size, rate, keyframe_every, crf, preset):
    """The copy's H.264 stream: one encoder thread (prepare.py runs one process per core), a keyframe
    at least every keyframe_every seconds (libx264 adds some at scene cuts), 4:2:0."""
    stream = out.add_stream("libx264", rate=rate)
    stream.height, stream.width = size
    stream.pix_fmt = "yuv420p"
    stream.codec_context.thread_count = 1
    stream.codec_context.gop_size = max(1, int(round(keyframe_every * rate)))
    stream.options = {"crf": str(crf), "preset": preset}
    return stream


class _CopyWriter:
    """Source frames into copy slots: put(frame, slot) holds a frame until the next one shows where it
    ends (the later of two frames in one slot wins); finish(slots) fills up to the end and flushes."""

    def __init__(self, out, stream, rate):
        self.out, self.stream, self.rate = out, stream, rate
        self.held, self.slot = None, 0  # the held frame fills the copy from self.slot on

    def put(self, frame, at):
        if self.held is not None and at > self.slot:
            self._emit(at)
        self.held = frame

    def finish(self, slots):
        self._emit(slots)
        self._encode(None)
        return self.slot

    def _emit(self, until):
        for k in range(self.slot, until):
            # BICUBIC: ffmpeg's scale filter default, so the copy looks like the usual ones. reformat copies the
            # source frame's picture type, which would force libx264's (keyframes where the source had them).
            picture = self.held.reformat(width=self.stream.width, height=self.stream.height, format="yuv420p",
                                         interpolation="BICUBIC")
            picture.pts, picture.time_base = k, 1 / self.rate
            picture.pict_type = av.video.frame.PictureType.NONE
            self._encode(picture)
        self.slot = max(self.slot, until)

    def _encode(self, picture):
        for packet in self.stream.encode(picture):
            self.out.mux(packet)


def _decoded(container, stream):
    """The frames of stream, forward; a decode error after some frames ends them there (as read_frames
    treats a damaged file), before any frame it is raised."""
    frames, count = container.decode(stream), 0
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except DECODE_ERRORS:
            if count == 0:
                raise
            return
        count += 1
        yield frame


# Seconds between keyframes of prepare.py's copies. Samples/s per core of the training reader (3 clips, T=8,
# tau=8) on copies with a keyframe every 1 s / 2 s / 4 s / 250 frames (bench/data.py --prepared): generated
# 10-s 1080p sources 5.31 / 5.10 / 4.40 / 4.20, 10-s 720p 5.12 / 4.77 / 4.08 / 3.95, one 60-s 720p 2.64 / 2.15
# / 1.61 / 1.12, 30 surveillance-fight clips (2 s on average) 45.4 / 47.2 / 48.1 / 48.0; files at 1 s are
# 4-16% larger than at 2 s. 2 s is within 7% of the fastest for clips of up to 10 s (Kinetics); 1 s gains 23%
# at 60 s.
KEYFRAME_EVERY = 2.0


def write_resized(src, dst, short_side, fps=None, keyframe_every=KEYFRAME_EVERY, crf=23, preset="medium"):
    """Decode src forward (one thread) and write dst: mp4, H.264 at copy_size(), fps (default: the
    source's rate, VideoInfo.fps), no audio. Returns (source, copy) dicts of height, width, fps and
    frames (decoded from the source; written to the copy), and for the source header_frames and
    seconds (its decoded length: index of the last frame + 1, over its fps).

    Copy frame k holds the source frame that read_frames would give for the time k / fps: the last one
    whose time (its index over the source fps) is at or before it, the first frame before the first.
    So a constant-rate video copied at its own rate keeps every frame at its index, one copied at a
    third of its rate keeps frames 0, 3, 6, ..., and a variable-rate one becomes constant-rate with the
    same frame at every index. The copy has round(seconds * fps) frames. A decode error after
    some frames ends the source there; before any frame it is raised (one of DECODE_ERRORS), as are
    write errors (an OSError, e.g. ENOSPC, which is an av.error.FFmpegError too)."""
    with av.open(src, metadata_errors="ignore") as inp, av.open(dst, "w", format="mp4") as out:
        info = VideoInfo(inp)
        info.stream.codec_context.thread_count = 1
        source_rate = Fraction(info.fps).limit_denominator(1001)
        rate = Fraction(fps).limit_denominator(1001) if fps else source_rate
        writer, first, last, counter = None, None, -1, 0
        for counter, frame in enumerate(_decoded(inp, info.stream), 1):
            index = info.frame_index(frame, counter - 1)
            if writer is None:
                first = (frame.height, frame.width)
                stream = _add_copy_stream(out, copy_size(*first, short_side), rate, keyframe_every, crf, preset)
                writer = _CopyWriter(out, stream, rate)
            elif (index - last) / info.fps > MAX_GAP_SECONDS:
                raise UndecodableVideo(f"timestamps jump {(index - last) / info.fps:.0f} s ahead at frame {counter}")
            last = max(last, index)
            writer.put(frame, max(0, math.ceil(index * rate / source_rate)))  # exact: Fractions
        if writer is None:
            raise UndecodableVideo("no frame decoded")
        seconds = (last + 1) / info.fps
        frames = writer.finish(max(1, int(round(seconds * rate))))
    source = dict(height=first[0], width=first[1], fps=info.fps, frames=counter,
                  header_frames=info.num_frames, seconds=seconds)
    return source, dict(height=stream.height, width=stream.width, fps=float(rate), frames=frames)


def count_frames(path):
    """What a plain forward decode from the start finds in path: {height, width, fps, header_frames,
    frames (decoded)}; raises one of DECODE_ERRORS, a cut or damaged stream included."""
    with av.open(path, metadata_errors="ignore") as container:
        info = VideoInfo(container)
        info.stream.codec_context.thread_count = 1
        frames = sum(1 for _ in container.decode(info.stream))
        return dict(height=info.stream.height, width=info.stream.width, fps=info.fps,
                    header_frames=info.num_frames, frames=frames)
