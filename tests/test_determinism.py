"""Bit-identity across machines: the encoder, torch's capped kernels, stable checkpoint bytes,
digests checked on reuse (see xpool/determinism.py and xpool/integrity.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xpool.determinism import cpu_flags
from xpool.errors import XPoolError

REPO = Path(__file__).resolve().parents[1]

# x264 instruction-set levels (x264's own names) and the /proc/cpuinfo flags each needs.
X264_LEVELS = {
    "SSSE3": ["ssse3"],
    "SSE4.2": ["sse4_2"],
    "AVX": ["avx"],
    "AVX2": ["avx2"],
    "AVX512": ["avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"],
}

ENCODE = r"""
import hashlib, json, sys, tempfile
from pathlib import Path
from xpool.config import load_config
from xpool.data.synthetic import encode_mp4, build_specs, render_video
cfg = load_config("embedded").synth
frames = render_video(build_specs(cfg)[0], cfg)
out = {}
with tempfile.TemporaryDirectory() as d:
    for level in json.loads(sys.argv[1]):
        sums = set()
        for repeat in range(3):  # the AVX-512 mbtree bug showed within one process too
            p = Path(d) / f"{repeat}.mp4"
            encode_mp4(frames, cfg.fps, p, x264_params=f"asm={level}" if level else None)
            sums.add(hashlib.sha256(p.read_bytes()).hexdigest())
        out[level or "auto"] = sorted(sums)
print(json.dumps(out))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("XPOOL_CPU_ISA", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _python(code: str, *args: str, **env: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=_env(**env), cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_one_video_encodes_to_one_sha256_under_any_heap_state_and_isa_level() -> None:
    flags = set(cpu_flags())
    levels = [""] + [name for name, need in X264_LEVELS.items() if flags.issuperset(need)]
    if len(levels) < 2:
        pytest.skip("no x264 instruction-set level to compare (no /proc/cpuinfo flags)")
    sums: dict[str, set[str]] = {}
    for perturb in ("0", "85", "170"):  # glibc fills freed/allocated memory with this byte
        out = json.loads(_python(ENCODE, json.dumps(levels), MALLOC_PERTURB_=perturb))
        for level, found in out.items():
            sums.setdefault(f"{level} MALLOC_PERTURB_={perturb}", set()).update(found)
    assert len(set().union(*sums.values())) == 1, sums


PRETRAIN = r"""
import json, sys, tempfile
from pathlib import Path
import torch
from xpool.config import load_config
from xpool.engine.pretrain import ensure_pretrained
with tempfile.TemporaryDirectory() as d:
    cfg = load_config("smoke", {"pretrain.cache_dir": d, "pretrain.steps": 6,
                                "pretrain.eval_images": 8})
    out = ensure_pretrained(cfg, progress=False).parent
    losses = [line.split(",")[1] for line in (out / "loss.csv").read_text().splitlines()[1:]]
    sha = json.loads((out / "metrics.json").read_text())["tensors_sha256"]
print(json.dumps({"capability": str(torch.backends.cpu.get_cpu_capability()),
                  "losses": losses, "sha": sha}))
"""


def test_capped_pretraining_gives_the_same_losses_whatever_the_cpu_offers() -> None:
    # XPOOL_CPU_ISA=avx2 on this CPU, and the same run as torch does on a CPU without AVX-512
    # (its capability set to AVX2 by hand, nothing from xpool): same losses, same tensors. A
    # request for AVX-512 kernels alongside the cap is overridden by it.
    capped = json.loads(_python(PRETRAIN, XPOOL_CPU_ISA="avx2"))
    by_hand = json.loads(_python(PRETRAIN, ATEN_CPU_CAPABILITY="avx2",
                                 ONEDNN_MAX_CPU_ISA="AVX2"))
    overridden = json.loads(_python(PRETRAIN, XPOOL_CPU_ISA="avx2",
                                    ATEN_CPU_CAPABILITY="avx512"))
    assert capped["capability"] == "AVX2" or capped["capability"] in ("DEFAULT", "NO AVX")
    assert overridden["capability"] == capped["capability"]
    assert len(capped["losses"]) == 6
    assert capped == by_hand == overridden


def test_an_unknown_isa_cap_is_refused() -> None:
    done = subprocess.run([sys.executable, "-c", "import xpool"], capture_output=True, text=True,
                          env=_env(XPOOL_CPU_ISA="avx9000"), cwd=REPO, timeout=60)
    assert done.returncode != 0 and "XPOOL_CPU_ISA" in done.stderr


def test_torch_save_writes_the_same_bytes_for_the_same_tensors(tmp_path: Path) -> None:
    from xpool.io import torch_save

    state = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(3)}
    a, b = torch_save(state, tmp_path / "x" / "best.pt"), torch_save(state, tmp_path / "best.pt")
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / "x").glob(".*"))


def test_tensors_sha256_is_content_only() -> None:
    from xpool.integrity import tensors_sha256

    w = torch.arange(6, dtype=torch.float32)
    assert tensors_sha256({"w": w, "s": torch.tensor(2.0)}) == tensors_sha256(
        {"s": torch.tensor(2.0), "w": w.clone()})
    assert tensors_sha256({"w": w}) != tensors_sha256({"w": w.double()})
    bumped = w.clone()
    bumped[3] = torch.nextafter(bumped[3], torch.tensor(10.0))
    assert tensors_sha256({"w": w}) != tensors_sha256({"w": bumped})


def test_a_changed_checkpoint_or_feature_file_is_a_clear_error(tmp_path: Path) -> None:
    from xpool.engine.features import feature_sha256_path, verify_features
    from xpool.engine.pretrain import CHECKPOINT, METRICS_FILE, verify_checkpoint
    from xpool.integrity import file_sha256, tensors_sha256
    from xpool.io import torch_save, write_json

    state = {"w": torch.ones(4)}
    torch_save(state, tmp_path / CHECKPOINT)
    write_json(tmp_path / METRICS_FILE, {"tensors_sha256": tensors_sha256(state)})
    assert verify_checkpoint(tmp_path) == tensors_sha256(state)
    torch_save({"w": torch.zeros(4)}, tmp_path / CHECKPOINT)
    with pytest.raises(XPoolError, match="delete"):
        verify_checkpoint(tmp_path)

    feats = tmp_path / "test.pt"
    torch_save({"x": torch.ones(2)}, feats)
    with pytest.raises(XPoolError, match="missing"):
        verify_features(feats)
    feature_sha256_path(feats).write_text(f"{file_sha256(feats)}  test.pt\n")
    assert verify_features(feats) == file_sha256(feats)
    torch_save({"x": torch.zeros(2)}, feats)
    with pytest.raises(XPoolError, match="changed or damaged"):
        verify_features(feats)


def test_a_changed_video_is_regenerated(tmp_path: Path) -> None:
    from xpool.config import SynthConfig
    from xpool.data.synthetic import META_FILE, generate_corpus
    from xpool.integrity import digest_of, file_sha256

    cfg = SynthConfig(num_train=3, num_test=2, resolution=32, scenes=2, frames_per_scene=2)
    root = generate_corpus(cfg, tmp_path / "c", progress=False)
    meta = json.loads((root / META_FILE).read_text())
    assert meta["corpus_sha256"] == digest_of(meta["video_sha256"])
    video = root / "videos" / f"{next(iter(meta['video_sha256']))}.mp4"
    original = video.read_bytes()
    video.write_bytes(original[:-10])
    generate_corpus(cfg, root, progress=False)
    assert video.read_bytes() == original
    assert file_sha256(video) == meta["video_sha256"][video.stem]


def test_cpu_state_records_the_mkl_branch_requested(monkeypatch: pytest.MonkeyPatch) -> None:
    from xpool.determinism import cpu_state

    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    assert cpu_state()["mkl_cbwr"] == "COMPATIBLE"
    monkeypatch.delenv("MKL_CBWR")
    assert cpu_state()["mkl_cbwr"] is None
