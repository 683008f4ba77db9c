"""Config loading: profiles, validation errors that name key/value/file, overrides."""

from __future__ import annotations

import pytest
import yaml

from xpool.config import (
    Config,
    config_from_dict,
    list_profiles,
    load_config,
    parse_overrides,
    save_config,
)
from xpool.errors import ConfigError

REQUIRED = {"smoke", "embedded", "paper-msrvtt9k", "paper-msrvtt7k", "paper-msvd", "paper-lsmdc"}


def test_all_shipped_profiles_load():
    names = set(list_profiles())
    assert REQUIRED <= names
    for name in names:
        cfg = load_config(name)
        assert cfg.profile == name


def test_paper_profiles_carry_the_authors_recipe():
    c9 = load_config("paper-msrvtt9k")
    assert (c9.data.num_frames, c9.train.batch_size, c9.train.epochs) == (12, 32, 5)
    assert (c9.train.lr_clip, c9.train.lr_new, c9.train.weight_decay) == (1e-6, 3e-5, 0.2)
    assert (c9.train.adam_eps, c9.train.warmup_fraction, c9.train.grad_clip) == (1e-6, 0.1, 1.0)
    assert (c9.train.seed, c9.model.backbone, c9.model.pretrained) == (24, "ViT-B-32", "openai")
    assert c9.model.dropout == 0.3
    c7 = load_config("paper-msrvtt7k")
    assert (c7.data.train_list, c7.model.dropout, c7.train.lr_new) == ("7k", 0.4, 1e-5)
    cm = load_config("paper-msvd")
    assert (cm.data.corpus, cm.model.dropout, cm.train.lr_new) == ("msvd", 0.4, 1e-5)
    cl = load_config("paper-lsmdc")
    assert (cl.data.corpus, cl.model.dropout, cl.train.lr_new) == ("lsmdc", 0.3, 1e-5)


def test_overrides_from_strings_and_dicts_are_the_same_path():
    a = load_config("smoke", ["train.epochs=3", "model.pooling=mean", "train.lr_new=2e-4"])
    b = load_config("smoke", {"train.epochs": 3, "model.pooling": "mean", "train.lr_new": 2e-4})
    assert a == b
    assert (a.train.epochs, a.model.pooling, a.train.lr_new) == (3, "mean", 2e-4)
    assert parse_overrides(["train.max_steps=null"]) == {"train.max_steps": None}


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.lr_new=-1", ["train.lr_new", "-1", "overrides"]),
        ("data.num_frames=0", ["data.num_frames", "0"]),
        ("model.pooling=max", ["model.pooling", "max", "xpool"]),
        ("train.epochs=abc", ["train.epochs", "abc", "int"]),
        ("train.epochs=1.5", ["train.epochs", "1.5"]),
        ("model.residual=3", ["model.residual", "bool"]),
        ("train.foo=1", ["train.foo", "unknown"]),
        ("foo.bar=1", ["foo", "section"]),
        ("epochs=1", ["section.key"]),
    ],
)
def test_bad_overrides_name_key_and_value(override, words):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", [override])
    for w in words:
        assert w in str(e.value)


def test_bad_yaml_file_errors_name_the_file(tmp_path):
    cases = {
        "unknown_key.yaml": {"train": {"epochz": 1}},
        "wrong_type.yaml": {"data": {"num_frames": "twelve"}},
        "bad_value.yaml": {"train": {"lr_clip": -0.1}},
        "bad_pooling.yaml": {"model": {"pooling": "maxpool"}},
        "bad_section.yaml": {"trian": {"epochs": 1}},
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_text(yaml.safe_dump(content))
        with pytest.raises(ConfigError) as e:
            load_config(path)
        assert str(path) in str(e.value), name


def test_int_accepted_for_float_and_extends(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: paper-msrvtt9k\ntrain:\n  lr_new: 1\n")
    cfg = load_config(path)
    assert cfg.train.lr_new == 1.0 and isinstance(cfg.train.lr_new, float)
    assert cfg.train.lr_clip == 1e-6  # inherited


def test_unknown_profile_lists_available():
    with pytest.raises(ConfigError, match="smoke"):
        load_config("no-such-profile")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("embedded", ["train.epochs=2"])
    path = save_config(cfg, tmp_path / "config.yaml")
    back = config_from_dict(yaml.safe_load(path.read_text()))
    assert back == cfg
    assert isinstance(back, Config)


def test_fingerprint_tracks_content_and_synthetic_roots_differ():
    a = load_config("smoke")
    b = load_config("smoke", ["synth.scenes=3"])
    assert a.fingerprint() != b.fingerprint()
    assert a.data_root != b.data_root
    assert a.fingerprint() == load_config("smoke").fingerprint()
    assert a.fingerprint() == load_config("smoke", ["output.run_name=x"]).fingerprint()
