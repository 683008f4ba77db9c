"""Helpers for the Hugging Face CLIP tests: random CLIPModels, a tokenizer built offline from the
BPE vocabulary open_clip ships, the fixture captions, and the authors' head written out plainly."""

from __future__ import annotations

import csv
import gzip
import json
import math
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

# The project's xpool-smoke config in Hugging Face's terms (xpool/model/configs/xpool-smoke.json).
SMOKE = dict(
    text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=32, vocab_size=49408),
    vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=2, image_size=32, patch_size=8),
    projection_dim=64,
)
# openai/clip-vit-base-patch32's architecture (transformers' CLIPConfig defaults are ViT-B/32).
VIT_B_32 = dict(text_config=dict(), vision_config=dict(), projection_dim=512)


def random_clip(spec: dict, seed: int = 0):
    """A CLIPModel with random weights, LayerNorms and logit scale included (so that a dropped or
    swapped norm would show), in eval mode. Filled here rather than by HF's initialiser, which
    takes three times as long at full size."""
    from transformers import CLIPConfig, CLIPModel

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights

    torch.manual_seed(seed)
    with no_init_weights():
        model = CLIPModel(CLIPConfig(**spec)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
            elif "embedding" in name or p.ndim < 2:
                p.normal_(0.0, 0.02)
            else:  # Linear and the patch convolution: unit-variance outputs
                p.normal_(0.0, (p.numel() / p.shape[0]) ** -0.5)
        model.logit_scale.fill_(math.log(1 / 0.05))
    return model


def features(out) -> torch.Tensor:
    """get_*_features returns a tensor in some transformers versions, an output object in others."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def bpe_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """vocab.json and merges.txt built from open_clip's bpe_simple_vocab_16e6.txt.gz, the way
    CLIP's tokenizer builds its vocabulary: 256 byte symbols, the same with '</w>', one token per
    merge (the first 48,894 merges), then the two special tokens."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges)
                                       + "\n")
    return folder / "vocab.json", folder / "merges.txt"


def hf_tokenizer(folder: Path):
    """Hugging Face's CLIPTokenizer from those files, with openai/clip-vit-base-patch32's special
    tokens (padding with <|endoftext|>, as the authors' tokenizer did)."""
    from transformers import CLIPTokenizer

    vocab, merges = bpe_tokenizer_files(folder)
    return CLIPTokenizer(vocab=str(vocab), merges=str(merges))


def msrvtt_test_captions(fixtures_dir: Path) -> list[str]:
    """The 1,000 captions of MSR-VTT's 1k-A test split."""
    with (fixtures_dir / "annotations" / "msrvtt" / "MSRVTT_JSFUSION_test.csv").open() as f:
        return [row["sentence"] for row in csv.DictReader(f)]


def random_authors_head(dim: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """A random X-Pool head under the authors' key names (``pool_frames.cross_attn.q_proj...``)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        out[f"pool_frames.cross_attn.{name}.weight"] = torch.randn(dim, dim, generator=g) / dim**0.5
        out[f"pool_frames.cross_attn.{name}.bias"] = 0.1 * torch.randn(dim, generator=g)
    out["pool_frames.linear_proj.weight"] = torch.randn(dim, dim, generator=g) / dim**0.5
    out["pool_frames.linear_proj.bias"] = 0.1 * torch.randn(dim, generator=g)
    for i in (1, 2, 3):
        out[f"pool_frames.layer_norm{i}.weight"] = 1 + 0.2 * torch.randn(dim, generator=g)
        out[f"pool_frames.layer_norm{i}.bias"] = 0.1 * torch.randn(dim, generator=g)
    return out


def authors_head_forward(w: dict[str, torch.Tensor], text: torch.Tensor, video: torch.Tensor,
                         num_heads: int = 1) -> torch.Tensor:
    """The authors' Transformer head (modules/transformer.py) at eval time, written out with
    torch.nn.functional: text [T, D], video [V, F, D] -> [V, T, D]."""
    import torch.nn.functional as F

    def lin(x, name):
        return F.linear(x, w[f"pool_frames.{name}.weight"], w[f"pool_frames.{name}.bias"])

    def ln(x, i):
        d = x.shape[-1]
        return F.layer_norm(x, (d,), w[f"pool_frames.layer_norm{i}.weight"],
                            w[f"pool_frames.layer_norm{i}.bias"])

    t, v = ln(text, 1), ln(video, 1)
    num_t, d = t.shape
    num_v, num_f, _ = v.shape
    hd = d // num_heads
    q = lin(t, "cross_attn.q_proj").reshape(num_t, num_heads, hd).permute(1, 2, 0)  # H, hd, T
    k = lin(v, "cross_attn.k_proj").reshape(num_v, num_f, num_heads, hd).permute(0, 2, 1, 3)
    val = lin(v, "cross_attn.v_proj").reshape(num_v, num_f, num_heads, hd).permute(0, 2, 3, 1)
    weights = torch.softmax((k @ q) / math.sqrt(hd), dim=2)  # V, H, F, T
    attn = (val @ weights).permute(0, 3, 1, 2).reshape(num_v, num_t, d)
    o = ln(lin(attn, "cross_attn.out_proj"), 2)
    return ln(o + lin(o, "linear_proj"), 3)


def ranks_of(sims: torch.Tensor) -> torch.Tensor:
    """Rank (from 1) of the diagonal entry in each row: how many scores are >= it."""
    return (sims >= sims.diagonal()[:, None]).sum(1)


def write_authors_checkpoint(path, hf, head, epoch=3):
    """{'epoch', 'state_dict', 'optimizer'} as their BaseTrainer._save_checkpoint writes it, with
    the position_ids buffers transformers 4.6.1 kept in the state dict."""
    state = {f"clip.{k}": v for k, v in hf.state_dict().items()}
    state["clip.text_model.embeddings.position_ids"] = torch.arange(32)[None]
    state["clip.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    state.update(head)
    optimizer = {"state": {0: {"step": 10, "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
                 "param_groups": [{"lr": 1e-6, "betas": (0.9, 0.999), "eps": 1e-8,
                                   "weight_decay": 0.2, "params": [0]}]}
    torch.save({"epoch": epoch, "state_dict": state, "optimizer": optimizer}, path)
    return path
