"""H.264 mp4 encoding of rendered frames with PyAV, with the x264 settings that make it
deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# x264 settings. Near-lossless (crf 6) keeps colours and small shapes intact at 32-64 px. One
# thread alone does not make x264 deterministic: the libx264 bundled with PyAV reads uninitialised
# heap memory in its AVX-512 macroblock-tree code, so on an AVX-512 CPU the same frames encoded
# twice can give different files. Without mbtree the output is one byte stream in fresh processes
# under any heap state and on every x264 instruction-set level from SSSE3 to AVX-512
# (tests/test_determinism.py checks both); x264's C-only and SSE2/SSE3-only paths, which no
# x86-64 CPU made since 2008 uses, give another one.
X264_OPTIONS = {"crf": "6", "preset": "medium", "threads": "1", "x264-params": "mbtree=0"}


def encode_mp4(frames: np.ndarray, fps: int, path: Path,
               x264_params: str | None = None) -> None:
    """Encode uint8 [F, H, W, 3] as H.264 (yuv420p) mp4 at `path`."""
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p"
        options = dict(X264_OPTIONS)
        if x264_params:  # tests: e.g. "asm=AVX2" caps x264's instruction set
            options["x264-params"] = f"{options['x264-params']}:{x264_params}"
        stream.options = options
        stream.codec_context.thread_count = 1
        for arr in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
