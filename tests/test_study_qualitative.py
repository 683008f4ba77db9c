"""xpool.study.qualitative on the smoke profile's synthetic corpus structure and hand-made
inputs: which frames a caption names, the frames a video shows, the representative query, the
attention mass on the named frames and the held-out captions' ambiguity (exact expectations)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from xpool.config import load_config
from xpool.data.corpora import Caption, Corpus
from xpool.data.synthetic import ALL_SCENES, build_specs, caption_for, render_video
from xpool.errors import CorpusError
from xpool.study import qualitative

# Two scenes of two frames per video, four frames sampled by the midpoint rule: frame i of the
# sample is frame i of the video, so frames 0-1 show scene 0 and frames 2-3 scene 1.
OVERRIDES = {"synth.scenes": 2, "synth.frames_per_scene": 2, "data.num_frames": 4,
             "data.sampling_rule": "midpoint"}


@pytest.fixture(scope="module")
def cfg():
    return load_config("smoke", OVERRIDES)


@pytest.fixture(scope="module")
def tests(cfg):
    """The smoke corpus's test videos (their structure only: nothing is rendered)."""
    return [s for s in build_specs(cfg.synth) if s.split == "test"]


def test_named_frames_marks_the_frames_of_the_named_scenes(cfg, tests):
    v = tests[0]
    first, second = v.scenes
    named = qualitative.named_frames
    assert named(cfg, v.video_id, caption_for([first])).tolist() == [True, True, False, False]
    assert named(cfg, v.video_id, caption_for([second])).tolist() == [False, False, True, True]
    assert named(cfg, v.video_id, caption_for(v.scenes)).tolist() == [True] * 4
    # Two frames sampled: the midpoints of the halves, frames 1 and 3.
    assert named(cfg, v.video_id, caption_for([first]), num_frames=2).tolist() == [True, False]
    other = next(s for s in ALL_SCENES if s not in v.scenes)
    assert named(cfg, v.video_id, caption_for([other])) is None  # not a scene of this video
    assert named(cfg, v.video_id, "a dog in the park") is None  # free text
    assert named(cfg, "video999999", caption_for([first])) is None  # no such video
    assert named(load_config("paper-msrvtt9k"), v.video_id, caption_for([first])) is None


def test_video_frames_are_re_rendered_when_the_corpus_is_not_on_disk(tmp_path, cfg, tests):
    away = load_config("smoke", {**OVERRIDES, "data.root": str(tmp_path / "nowhere")})
    v = tests[1]
    frames = qualitative.video_frames(away, v.video_id)
    full = render_video(v, away.synth)
    assert frames.dtype == np.uint8 and frames.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(frames, full[[0, 1, 2, 3]])
    np.testing.assert_array_equal(qualitative.video_frames(away, v.video_id, num_frames=2),
                                  full[[1, 3]])
    real = load_config("paper-msvd", {"data.root": str(tmp_path / "msvd")})
    with pytest.raises(CorpusError):
        qualitative.video_frames(real, "vid1")


def _outputs(cfg, captions: list[tuple[str, str]], ranks: list[int], attention=None):
    """What pick_query and attention_mass read of a run's outputs: test captions with their
    video ids, per-query ranks and the head's attention over a video's frames."""
    video_ids = sorted({v for v, _ in captions})
    return SimpleNamespace(
        config=cfg,
        result=SimpleNamespace(ranks=lambda direction="t2v": np.asarray(ranks)),
        emb=SimpleNamespace(texts=[t for _, t in captions], video_ids=video_ids,
                            video_of_text=np.array([video_ids.index(v) for v, _ in captions]),
                            text_embeds=np.eye(len(captions))),
        attention=attention or (lambda text_embed, video_index: None),
    )


def test_pick_query_prefers_a_partial_caption_ranked_first(cfg, tests):
    a, b, c = tests[:3]
    captions = [(a.video_id, caption_for(a.scenes)),  # names the whole video
                (b.video_id, caption_for(b.scenes[:1])),
                (c.video_id, caption_for(c.scenes[1:]))]
    assert qualitative.pick_query(_outputs(cfg, captions, [1, 3, 1])) == 2
    # No partial caption ranked first: the first partial caption.
    assert qualitative.pick_query(_outputs(cfg, captions, [1, 3, 2])) == 1
    # No partial caption at all: caption 0.
    whole = [(v.video_id, caption_for(v.scenes)) for v in (a, b)]
    assert qualitative.pick_query(_outputs(cfg, whole, [2, 1])) == 0


def test_attention_mass_on_the_named_frames(cfg, tests):
    a, b = tests[:2]
    captions = [(a.video_id, caption_for(a.scenes[:1])), (b.video_id, caption_for(b.scenes[1:])),
                (a.video_id, "free text names no scene")]

    def attention(text_embed, video_index):
        return np.array([0.4, 0.3, 0.2, 0.1])

    mass = qualitative.attention_mass(_outputs(cfg, captions, [1, 1, 1], attention))
    expected = pd.DataFrame([
        {"query": 0, "named_scenes_frames": 2, "uniform_share": 0.5, "attention_mass": 0.7,
         "argmax_on_named": True},
        {"query": 1, "named_scenes_frames": 2, "uniform_share": 0.5, "attention_mass": 0.3,
         "argmax_on_named": False}])
    pd.testing.assert_frame_equal(mass, expected, atol=1e-12)
    # A head without attention (any but X-Pool) gives no rows.
    assert qualitative.attention_mass(_outputs(cfg, captions, [1, 1, 1])).empty


def test_msvd_heldout_note_counts_captions_that_describe_another_video(cfg, monkeypatch):
    s1, s2, s3, s4 = ALL_SCENES[:4]
    specs = {"v1": SimpleNamespace(scenes=[s1, s2]), "v2": SimpleNamespace(scenes=[s1, s3]),
             "v3": SimpleNamespace(scenes=[s4, s2])}
    captions = [("v1", [s1]),  # also v2's first scene: ambiguous
                ("v1", [s2]),  # also v3's second scene: ambiguous
                ("v1", [s1, s2]),  # in this order only in v1
                ("v2", [s3]), ("v3", [s4])]
    split = Corpus("synthetic", "val", cfg.data_root, {v: cfg.data_root / v for v in specs},
                   [Caption(v, caption_for(c), str(i)) for i, (v, c) in enumerate(captions)])
    monkeypatch.setattr(qualitative, "_synthetic_specs", lambda c: specs)
    monkeypatch.setattr(qualitative, "load_split", lambda c, name: split)
    results = [SimpleNamespace(config=cfg)]
    assert qualitative.msvd_heldout_note(results) == (
        "Held-out evaluation set: 3 videos, 5 captions; 2 captions also describe another "
        "held-out video (ambiguous queries, which lower every strategy's text-to-video recall "
        "alike).")
    split.captions.append(Caption("v2", "a dog in the park", "9"))
    assert "captions not parseable" in qualitative.msvd_heldout_note(results)

    def missing(c, name):
        raise CorpusError("no corpus here")

    monkeypatch.setattr(qualitative, "load_split", missing)
    assert "its corpus is not on disk" in qualitative.msvd_heldout_note(results)


def test_synthetic_vocabulary_covers_every_caption_word(cfg, tests):
    vocab = qualitative.synthetic_vocabulary()
    assert list(vocab) == ["shape", "colour", "size", "motion", "background"]
    assert "plain grey" in vocab["background"] and "circle" in vocab["shape"]
    known = {w for words in vocab.values() for p in words for w in p.split()}
    for v in tests:
        assert set(caption_for(v.scenes).split()) <= known | qualitative.CAPTION_GLUE
