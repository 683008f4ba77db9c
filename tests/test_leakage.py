"""Leakage guards over the real evaluation path: embed (CLIP towers) -> similarity (fast and plain,
every pooling head) -> metrics.

The score of a pair (caption i, video j) may depend only on caption i and video j:

- permuting the captions permutes the rows, permuting the videos permutes the columns;
- adding or removing other captions or videos leaves the remaining scores unchanged;
- changing which video a caption is labelled with changes its rank only through the label,
  never a score.

The sets have unequal numbers of captions and videos and several captions per video. The last
tests build, on purpose, an evaluation that pools each video with its own ground-truth caption
(the bug found in T-MASS's test code): it reports better numbers than this project's path on the
same embeddings, and the guards catch it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from head_helpers import random_weights

from xpool.config import EvalConfig
from xpool.engine.embed import Embeddings, embed_texts, embed_videos
from xpool.engine.evaluate import score
from xpool.metrics import rank_metrics, t2v_ranks, v2t_ranks
from xpool.model.pooling import build_pooling
from xpool.model.retrieval import RetrievalModel
from xpool.similarity import plain_similarity_matrix, similarity_matrix

HEADS = [
    ("mean", {}),
    ("self_attention", {"num_layers": 2, "num_heads": 2}),
    ("topk", {"k": 2}),
    ("attention", {"temperature": 0.05}),
    ("xpool", {"num_heads": 1}),
    ("xpool", {"num_heads": 4}),
    ("xpool", {"num_heads": 1, "residual": False}),
]
HEAD_IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in o.items())}" for n, o in HEADS]
ATOL = 1e-5
NUM_FRAMES = 4
# 17 captions over 7 videos (1 to 4 captions each, not grouped by video)
LABELS = np.array([0, 0, 3, 1, 1, 2, 3, 3, 3, 4, 5, 5, 6, 6, 0, 6, 2])
WORDS = ["red", "blue", "circle", "square", "moving", "up", "down", "on", "stripes", "dots",
         "large", "small", "a", "green", "triangle"]

# An evaluation: (captions, videos [V, F, 3, H, W], caption -> video) -> (sims [T, V], t2v ranks,
# v2t ranks)
Evaluate = Callable[[list[str], torch.Tensor, np.ndarray],
                    tuple[torch.Tensor, np.ndarray, np.ndarray]]


@pytest.fixture(scope="module")
def backbone():
    from xpool.model.backbone import build_backbone

    torch.manual_seed(0)
    bb = build_backbone("xpool-smoke", pretrained=None)
    bb.eval()
    return bb


def _captions(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 8)))) for _ in range(n)]


def _videos(n: int, seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, NUM_FRAMES, 3, size, size, generator=g)


def _random_model(backbone, name: str, options: dict) -> tuple[torch.nn.Module, RetrievalModel]:
    """The pooling head `name` with random weights, on the shared CLIP towers."""
    head = build_pooling(name, backbone.embed_dim, **options)
    random_weights(head)
    return head, RetrievalModel(backbone, head).eval()


def project_evaluation(backbone, name: str, options: dict, fast: bool) -> Evaluate:
    """This project's path: the CLIP towers embed (in batches), the similarity module scores,
    `xpool.engine.evaluate.score` (fast) or the metrics module (plain) ranks."""
    head, model = _random_model(backbone, name, options)
    cpu = torch.device("cpu")

    def evaluate(texts, videos, labels):
        t = embed_texts(model.backbone, list(texts), batch_size=5, device=cpu)
        e = embed_videos(model.backbone, list(videos), batch_size=3, device=cpu)
        if fast:
            sims = similarity_matrix(head, t, e)
            emb = Embeddings(t, e, np.asarray(labels), [str(i) for i in range(len(e))],
                                 list(texts))
            res = score(head, emb, EvalConfig(dsl=False))
            r_t2v, r_v2t = np.asarray(res["ranks"]["t2v"]), np.asarray(res["ranks"]["v2t"])
            # score() ranks what the similarity module returns, nothing else
            np.testing.assert_array_equal(r_t2v, t2v_ranks(sims, labels))
            np.testing.assert_array_equal(r_v2t, v2t_ranks(sims, labels))
            assert res["t2v"] == rank_metrics(r_t2v)
        else:
            sims = plain_similarity_matrix(head, t, e, chunk_size=4)
            r_t2v, r_v2t = t2v_ranks(sims, labels), v2t_ranks(sims, labels)
        return sims, r_t2v, r_v2t

    return evaluate


def guard_violations(evaluate: Evaluate, texts: list[str], videos: torch.Tensor,
                     labels: np.ndarray, seed: int = 0) -> list[str]:
    """Every leakage property checked on one evaluation; returns what failed (empty: none)."""
    rng = np.random.default_rng(seed)
    bad: list[str] = []
    n_t, n_v = len(texts), len(videos)
    sims, r_t2v, _ = evaluate(texts, videos, labels)

    def same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
        if a.shape != b.shape or not torch.allclose(a, b, atol=ATOL, rtol=0):
            bad.append(what)

    # permuting captions permutes rows
    p = rng.permutation(n_t)
    same(evaluate([texts[i] for i in p], videos, labels[p])[0], sims[p], "caption permutation")
    # permuting videos permutes columns (labels follow their video)
    q = rng.permutation(n_v)
    new_index = np.argsort(q)
    same(evaluate(texts, videos[q], new_index[labels])[0], sims[:, q], "video permutation")
    # removing other captions (every video keeps its last one, so all labels stay valid)
    keep = np.unique(np.concatenate([np.flatnonzero(labels == v)[-1:] for v in range(n_v)] +
                                    [rng.choice(n_t, size=n_t // 3, replace=False)]))
    same(evaluate([texts[i] for i in keep], videos, labels[keep])[0], sims[keep],
         "removing captions")
    # adding captions
    extra = _captions(5, seed + 100)
    out = evaluate(texts + extra, videos, np.concatenate([labels, rng.integers(0, n_v, 5)]))[0]
    same(out[:n_t], sims, "adding captions")
    # removing videos (with their captions) and adding videos
    drop = {int(rng.integers(0, n_v)), int(rng.integers(0, n_v))}
    kv = np.array([v for v in range(n_v) if v not in drop])
    kt = np.flatnonzero(np.isin(labels, kv))
    remap = {int(v): i for i, v in enumerate(kv)}
    out = evaluate([texts[i] for i in kt], videos[kv],
                   np.array([remap[int(v)] for v in labels[kt]]))[0]
    same(out, sims[kt][:, kv], "removing videos")
    # adding videos (each with a caption of its own: video-to-text needs one)
    more = torch.cat([videos, _videos(3, seed + 200)])
    out = evaluate(texts + _captions(3, seed + 300), more,
                   np.concatenate([labels, [n_v, n_v + 1, n_v + 2]]))[0]
    same(out[:n_t, :n_v], sims, "adding videos")
    # relabelling a caption (the first of a video with several, and a random one): its rank
    # follows the label, no score moves
    several = next(v for v in range(n_v) if (labels == v).sum() > 1)
    for i in (int(np.flatnonzero(labels == several)[0]), int(rng.integers(0, n_t))):
        moved = labels.copy()
        moved[i] = (labels[i] + 1 + rng.integers(0, n_v - 1)) % n_v
        s2, r2, _ = evaluate(texts, videos, moved)
        same(s2, sims, "relabelling (scores)")
        expected = t2v_ranks(sims, moved)
        if not (np.array_equal(r2, expected) and np.array_equal(np.delete(r2, i),
                                                                 np.delete(r_t2v, i))):
            bad.append("relabelling (ranks)")
    return sorted(set(bad))


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("name,options", HEADS, ids=HEAD_IDS)
def test_pair_scores_depend_only_on_the_pair(backbone, name, options, fast):
    evaluate = project_evaluation(backbone, name, options, fast)
    texts, videos = _captions(len(LABELS), 0), _videos(7, 0)
    assert len(texts) != len(videos) and np.bincount(LABELS).max() > 1
    for seed in (0, 1):
        assert guard_violations(evaluate, texts, videos, LABELS, seed) == []


@pytest.mark.parametrize("name,options", HEADS, ids=HEAD_IDS)
def test_fast_and_plain_paths_agree_on_the_same_inputs(backbone, name, options):
    texts, videos = _captions(len(LABELS), 3), _videos(7, 3)
    s_fast, rf, vf = project_evaluation(backbone, name, options, True)(texts, videos, LABELS)
    s_plain, rp, vp = project_evaluation(backbone, name, options, False)(texts, videos, LABELS)
    assert torch.allclose(s_fast, s_plain, atol=ATOL, rtol=0)
    np.testing.assert_array_equal(rf, rp)
    np.testing.assert_array_equal(vf, vp)


# ----------------------------------------------------------------------------------------------
# A deliberately leaking evaluation (each video pooled with its own ground-truth caption)


def leaky_similarity(head: torch.nn.Module, t: torch.Tensor, e: torch.Tensor,
                     labels: np.ndarray) -> torch.Tensor:
    """Pool video j once, conditioned on its first ground-truth caption, and score every caption
    against that one embedding: the label decides what a column looks like."""
    own = np.array([np.flatnonzero(labels == v)[0] for v in range(e.shape[0])])
    with torch.no_grad():
        head.eval()
        pooled = head(t[own], e)  # [V, V, D] for text-conditioned heads
        if head.text_conditioned:
            pooled = pooled[torch.arange(e.shape[0]), torch.arange(e.shape[0])]
        return F.normalize(t, dim=-1) @ F.normalize(pooled, dim=-1).T


def _leaky_evaluation(backbone, name: str, options: dict) -> Evaluate:
    head, model = _random_model(backbone, name, options)
    cpu = torch.device("cpu")

    def evaluate(texts, videos, labels):
        t = embed_texts(model.backbone, list(texts), batch_size=5, device=cpu)
        e = embed_videos(model.backbone, list(videos), batch_size=3, device=cpu)
        sims = leaky_similarity(head, t, e, labels)
        return sims, t2v_ranks(sims, labels), v2t_ranks(sims, labels)

    return evaluate


def _subregion_embeddings(num_videos: int, captions_per_video: int, seed: int = 0,
                          dim: int = 64):
    """Each caption is close to one frame of its video (a caption describes part of a video),
    the other frames are unrelated: the structure text-conditioned pooling exploits."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(num_videos, NUM_FRAMES, dim, generator=g)
    labels = np.repeat(np.arange(num_videos), captions_per_video)
    frame = torch.randint(0, NUM_FRAMES, (len(labels),), generator=g)
    t = e[torch.as_tensor(labels), frame] + 1.6 * torch.randn(len(labels), dim, generator=g)
    return t, e, labels


@pytest.mark.parametrize("name,options", [h for h in HEADS if h[0] in ("topk", "attention",
                                                                        "xpool")],
                         ids=[i for i, h in zip(HEAD_IDS, HEADS, strict=True)
                              if h[0] in ("topk", "attention", "xpool")])
def test_leaky_evaluation_reports_better_numbers_on_the_same_embeddings(name, options):
    # one caption per test video, as MSR-VTT's 1k-A split (where T-MASS reported its number)
    t, e, labels = _subregion_embeddings(num_videos=100, captions_per_video=1)
    head = build_pooling(name, t.shape[1], **options)
    if name == "xpool":
        # A head whose attention follows the text (queries = keys, values = frames): the
        # regime a trained X-Pool is in, where pooling with the right caption helps.
        with torch.no_grad():
            for p in head.parameters():
                p.zero_()
            for proj in (head.q_proj, head.k_proj, head.v_proj, head.out_proj):
                proj.weight.copy_(torch.eye(t.shape[1]) * (3.0 if proj is head.q_proj else 1.0))
            for norm in [m for m in head.modules() if isinstance(m, torch.nn.LayerNorm)]:
                norm.weight.fill_(1.0)
    ours = similarity_matrix(head, t, e)
    leak = leaky_similarity(head, t, e, labels)
    r_ours = rank_metrics(t2v_ranks(ours, labels))["R1"]
    r_leak = rank_metrics(t2v_ranks(leak, labels))["R1"]
    assert r_leak >= r_ours + 5.0, (r_ours, r_leak)
    # the mechanism: a leaking column is pooled for its own caption, so that caption's score is
    # exactly this project's score, while every other video's score drops
    own = np.array([np.flatnonzero(labels == v)[0] for v in range(e.shape[0])])
    gt = torch.arange(e.shape[0])
    assert torch.allclose(leak[own, gt], ours[own, gt], atol=ATOL)


@pytest.mark.parametrize("name,options", [("xpool", {"num_heads": 1}), ("attention", {}),
                                          ("topk", {"k": 2})])
def test_guards_catch_the_leaking_evaluation(backbone, name, options):
    texts, videos = _captions(len(LABELS), 0), _videos(7, 0)
    bad = guard_violations(_leaky_evaluation(backbone, name, options), texts, videos, LABELS)
    assert "relabelling (scores)" in bad and "removing captions" in bad, bad


def test_guards_pass_a_leak_free_evaluation_of_text_agnostic_heads(backbone):
    """For mean pooling the 'leaking' construction pools without the text at all, so it is the
    same computation as ours: the guards must not flag it (they are not failing by default)."""
    texts, videos = _captions(len(LABELS), 0), _videos(7, 0)
    assert guard_violations(_leaky_evaluation(backbone, "mean", {}), texts, videos, LABELS) == []
