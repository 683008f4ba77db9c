"""Hugging Face CLIPModel -> open_clip conversion: same features as HF's own forward on real
frames and real MSR-VTT captions, through the backbone loader (HF folders, safetensors and
pytorch_model.bin); the tokenizer against HF's CLIPTokenizer on all 1k-A captions. Offline:
random weights, and tokenizer files built from the BPE vocabulary open_clip ships."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from hf_helpers import (
    SMOKE,
    VIT_B_32,
    features,
    hf_tokenizer,
    msrvtt_test_captions,
    random_clip,
)

from xpool.data.transforms import VideoTransform
from xpool.data.video import sample_frames
from xpool.errors import XPoolError
from xpool.model.backbone import build_backbone
from xpool.model.hf_clip import (
    convert_hf_clip_state_dict,
    open_clip_config_from_hf,
    read_hf_clip_folder,
)

RTOL = 1e-4


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


def real_frames(fixture_videos, size: int, per_video: int, mean, std) -> torch.Tensor:
    transform = VideoTransform(size, mean, std, train=False)
    clips = [transform(sample_frames(p, per_video)[0]) for p in fixture_videos.values()]
    return torch.cat(clips)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return hf_tokenizer(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def smoke_hf():
    return random_clip(SMOKE, seed=0)


def test_conversion_maps_every_key_and_packs_qkv_in_order(smoke_hf):
    sd = smoke_hf.state_dict()
    # transformers 4.6.1 files carry position_ids buffers: dropped, not an error.
    sd = {**sd, "text_model.embeddings.position_ids": torch.arange(32)[None],
          "vision_model.embeddings.position_ids": torch.arange(17)[None]}
    conv = convert_hf_clip_state_dict(sd)
    cfg = open_clip_config_from_hf(smoke_hf.config.to_dict())
    model = open_clip.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=True)
    assert set(conv) == set(model.state_dict())
    pre = "text_model.encoder.layers.1.self_attn."
    packed = conv["transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(packed[:64], sd[pre + "q_proj.weight"])
    assert torch.equal(packed[64:128], sd[pre + "k_proj.weight"])
    assert torch.equal(packed[128:], sd[pre + "v_proj.weight"])
    assert torch.equal(conv["visual.proj"], sd["visual_projection.weight"].T)
    assert torch.equal(conv["text_projection"], sd["text_projection.weight"].T)
    with pytest.raises(XPoolError, match="not part of a Hugging Face CLIP"):
        convert_hf_clip_state_dict({**sd, "text_model.pooler.weight": torch.zeros(1)})
    del sd[pre + "k_proj.bias"]
    with pytest.raises(XPoolError, match="lacks the k projection bias"):
        convert_hf_clip_state_dict(sd)


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_smoke_size_folder_matches_hf_forward(tmp_path, smoke_hf, tokenizer, fixture_videos,
                                              fixtures_dir, weights):
    folder = tmp_path / "clip"
    if weights == "safetensors":
        smoke_hf.save_pretrained(folder)  # transformers 5 writes model.safetensors
        assert (folder / "model.safetensors").is_file()
    else:  # the layout transformers 4.x wrote (and many HF caches still hold)
        folder.mkdir()
        torch.save(smoke_hf.state_dict(), folder / "pytorch_model.bin")
        (folder / "config.json").write_text(smoke_hf.config.to_json_string())
    bb = build_backbone("xpool-smoke", pretrained=str(folder)).eval()
    frames = real_frames(fixture_videos, 32, 3, bb.image_mean, bb.image_std)
    captions = msrvtt_test_captions(fixtures_dir)[:200]
    with torch.no_grad():
        img_err = rel_err(bb.encode_images(frames), features(smoke_hf.get_image_features(pixel_values=frames)))
        hf_in = tokenizer(captions, padding=True, truncation=True, max_length=32, return_tensors="pt")
        ref = features(smoke_hf.get_text_features(**hf_in))
        txt_err = rel_err(bb.encode_text(bb.tokenize(captions)), ref)
    assert img_err < RTOL and txt_err < RTOL, (img_err, txt_err)
    assert float(bb.logit_scale.detach()) == pytest.approx(float(smoke_hf.logit_scale.detach()))


@pytest.mark.slow
def test_vit_b_32_matches_hf_forward(tmp_path, tokenizer, fixture_videos, fixtures_dir):
    hf = random_clip(VIT_B_32, seed=3)
    sd = convert_hf_clip_state_dict(hf.state_dict())
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf.state_dict(), path)
    bb = build_backbone("ViT-B-32", pretrained=str(path)).eval()
    assert bb.model.visual.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"
    assert set(sd) == set(bb.model.state_dict())
    frames = real_frames(fixture_videos, 224, 2, bb.image_mean, bb.image_std)
    captions = msrvtt_test_captions(fixtures_dir)[:64]
    with torch.no_grad():
        ours_img = bb.encode_images(frames)
        ref_img = features(hf.get_image_features(pixel_values=frames))
        hf_in = tokenizer(captions, padding=True, truncation=True, max_length=77, return_tensors="pt")
        ours_txt = bb.encode_text(bb.tokenize(captions))
        ref_txt = features(hf.get_text_features(**hf_in))
    img_err, txt_err = rel_err(ours_img, ref_img), rel_err(ours_txt, ref_txt)
    print(f"ViT-B/32 parity: image rel err {img_err:.2e} ({len(frames)} real frames), "
          f"text rel err {txt_err:.2e} ({len(captions)} MSR-VTT captions)")
    assert img_err < RTOL and txt_err < RTOL, (img_err, txt_err)


def test_tokenizer_matches_hf_on_every_1k_a_caption(tokenizer, fixtures_dir):
    captions = msrvtt_test_captions(fixtures_dir)
    # A caption longer than the context, to exercise truncation (none of 1k-A is).
    captions.append(" ".join(["a man plays guitar on a stage and sings"] * 12))
    ours = open_clip.get_tokenizer("ViT-B-32")(captions)  # [N, 77], zero padded
    hf = tokenizer(captions, padding="max_length", truncation=True, max_length=77,
                   return_tensors="pt")
    mask = hf["attention_mask"].bool()
    assert ours.shape == hf["input_ids"].shape == (len(captions), 77)
    assert torch.equal(ours[mask], hf["input_ids"][mask])  # every real token, BOS and EOT
    assert (ours[~mask] == 0).all()  # we pad with 0, HF with <|endoftext|>: causal, so unread
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    hf_eot = (hf["input_ids"] == eot).int().argmax(1)  # first EOT: where HF pools the text
    assert torch.equal(ours.argmax(1), hf_eot)  # where open_clip pools
    assert mask[-1].all() and ours[-1, -1] == eot  # truncated, ending with EOT
    lengths = mask.sum(1).numpy()
    print(f"tokenizer: {len(captions) - 1} 1k-A captions + 1 truncated, "
          f"{int(lengths[:-1].sum())} tokens, lengths {lengths[:-1].min()}..{lengths[:-1].max()}")


def test_folder_errors_are_clear(tmp_path, smoke_hf):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(XPoolError, match="without model.safetensors or pytorch_model.bin"):
        build_backbone("xpool-smoke", pretrained=str(empty))
    with pytest.raises(XPoolError, match="neither model.safetensors nor pytorch_model.bin"):
        read_hf_clip_folder(empty)
    folder = tmp_path / "clip"
    smoke_hf.save_pretrained(folder)
    with pytest.raises(XPoolError, match="size mismatch|could not load"):
        build_backbone("xpool-tiny", pretrained=str(folder))


def test_config_conversion_of_vit_b_32():
    from transformers import CLIPConfig

    cfg = open_clip_config_from_hf(CLIPConfig(**VIT_B_32).to_dict())
    ref = open_clip.get_model_config("ViT-B-32")
    assert cfg["embed_dim"] == ref["embed_dim"] == 512
    for key in ("image_size", "layers", "width", "patch_size"):
        assert cfg["vision_cfg"][key] == ref["vision_cfg"][key], key
    for key in ("context_length", "vocab_size", "width", "heads", "layers"):
        assert cfg["text_cfg"][key] == ref["text_cfg"][key], key
    assert np.isclose(cfg["vision_cfg"]["mlp_ratio"], 4.0)
