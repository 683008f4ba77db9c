"""The embedded synthetic text-video benchmark (docs/architecture.md, "The synthetic benchmark").

A video is a sequence of K scenes. A scene shows one object with five attributes a caption names
(size, colour, shape, motion, background pattern); the object moves across the frame and leaves a
fading trail, so the motion is visible in a single frame, and every frame gets its own sensor
noise, so frames are never copies. Every word survives the paper's training augmentation (random
resized crop at scale 0.5-1 and horizontal flip): motions are up, down or sideways (never left vs
right, which a flip swaps), and the two sizes stay apart under a crop's zoom of up to 1.41x.
Frames are rendered with numpy and encoded as real H.264 mp4 files with PyAV; annotations are
written in MSR-VTT's own layout, so `load_msrvtt` reads the corpus unchanged.

Captions name part of their video: an in-order proper subset of its scenes when K > 1, joined with
"then". Every test caption identifies its video uniquely within the test split (no other test
video contains the caption's scenes in that order); the generator enforces and re-verifies that.

The same renderer feeds the pretraining stage: `SceneImageStream` yields single-scene images with
the single-scene caption wording the video captions are made of, and `held_out_scenes` is a fixed
evaluation set drawn from a separate random stream.

Its modules, bottom up, each importing only from those below it (the `synthetic-layers`
contract in pyproject.toml):

- `scenes`: the vocabulary, `Scene`, every scene, the caption wording and its parser;
- `specs`: which scenes each train and test video shows and what its captions name;
- `render`: the frames of a scene or a video (numpy); `encode`: H.264 mp4 with PyAV;
- `stream`: single-scene images for pretraining; `corpus`: the corpus written to disk.

This facade re-exports their public names, so `from xpool.data.synthetic import X` works for
each of them.
"""

from xpool.data.synthetic.corpus import (
    DATA_FILE,
    FORMAT_VERSION,
    META_FILE,
    TEST_FILE,
    TRAIN_7K_FILE,
    TRAIN_7K_FRACTION,
    TRAIN_9K_FILE,
    corpus_meta,
    ensure_corpus,
    generate_corpus,
    load_meta,
    settings_dict,
    settings_hash,
)
from xpool.data.synthetic.encode import X264_OPTIONS, encode_mp4
from xpool.data.synthetic.render import (
    RENDERER_VERSION,
    Layout,
    render_frame,
    render_scene_frames,
    render_video,
    sample_layout,
)
from xpool.data.synthetic.scenes import (
    ALL_SCENES,
    BACKGROUND_PHRASE,
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    SIZES,
    Scene,
    caption_for,
    is_subsequence,
    parse_caption,
)
from xpool.data.synthetic.specs import VideoSpec, build_specs, verify_unique_test_captions
from xpool.data.synthetic.stream import SceneImageStream, held_out_scenes

__all__ = [
    "ALL_SCENES",
    "BACKGROUNDS",
    "BACKGROUND_PHRASE",
    "COLOURS",
    "DATA_FILE",
    "FORMAT_VERSION",
    "META_FILE",
    "MOTIONS",
    "RENDERER_VERSION",
    "SHAPES",
    "SIZES",
    "TEST_FILE",
    "TRAIN_7K_FILE",
    "TRAIN_7K_FRACTION",
    "TRAIN_9K_FILE",
    "X264_OPTIONS",
    "Layout",
    "Scene",
    "SceneImageStream",
    "VideoSpec",
    "build_specs",
    "caption_for",
    "corpus_meta",
    "encode_mp4",
    "ensure_corpus",
    "generate_corpus",
    "held_out_scenes",
    "is_subsequence",
    "load_meta",
    "parse_caption",
    "render_frame",
    "render_scene_frames",
    "render_video",
    "sample_layout",
    "settings_dict",
    "settings_hash",
    "verify_unique_test_captions",
]
