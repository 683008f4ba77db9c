"""Configuration: dataclasses, YAML profiles, validation and `key=value` overrides.

A profile is a YAML file under `xpool/profiles/` (or any path). It may name another profile in
`extends:`; its sections are merged over that one. Overrides (`train.epochs=1` from the command
line, or a dict from notebook parameters) go through the same code path, `load_config`, and every
value is checked against the dataclass field's type and range. Errors name the key, the value and
the file they came from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xpool.errors import ConfigError
from xpool.io import atomic_write_text
from xpool.paths import resolve

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"

CORPORA = ("msrvtt", "msvd", "lsmdc", "synthetic")
# What `make reproduce`, `xpool reproduce` and `make report` run when no profile is named: the
# embedded study small enough to retrain in under 5 minutes (the full one is `embedded`). The
# Makefile's `PROFILE ?=` repeats it; a test holds the two together.
DEFAULT_PROFILE = "embedded-quick"
# How float32 matrix products (and sqrt, exp, log) run on the CPU: "native" (torch's MKL and
# oneDNN kernels, which pick their code path by CPU vendor and model) or "exact" (computed exactly,
# or from ATen's own kernels in float64, and rounded once: the same bits on every x86-64 CPU; see
# xpool.exact_gemm and xpool.exact_math).
GEMM_MODES = ("native", "exact")
# The pooling heads, in the order tables list them (the one copy of these names).
POOLINGS = ("mean", "self_attention", "topk", "attention", "xpool")
# The two retrieval directions, their dual-softmax columns, and all four as results carry them
# (here, not in metrics, so that reporting can name them without loading torch).
DIRECTIONS = ("t2v", "v2t")
DSL_DIRECTIONS = tuple(f"{d}_dsl" for d in DIRECTIONS)
RESULT_DIRECTIONS = DIRECTIONS + DSL_DIRECTIONS


@dataclass
class DataConfig:
    """Which corpus to read and how frames are sampled."""

    corpus: str = "synthetic"
    root: str | None = None
    train_list: str = "9k"
    num_frames: int = 12
    train_sampling: str = "uniform"
    train_augment: bool = True
    frame_cache: bool = False
    num_workers: int = 0
    missing: str = "error"
    val_videos: int = 0
    # Folder under the corpus root that holds the videos (same file names), e.g. the
    # `videos_3fps_224` copies that `xpool prepare compress` writes.
    videos_dir: str = "videos"
    # Frame indices: "authors" (their VideoCapture rule) or "midpoint" (floor((i + 0.5) n / F),
    # this project's earlier rule, kept for the embedded study). See xpool.data.video.
    sampling_rule: str = "midpoint"
    # Antialiased resizing (and clamping after bicubic) instead of the authors' plain
    # torchvision-0.9 tensor resize. See xpool.data.transforms.
    antialias: bool = True
    # LSMDC captions: "authors" (one caption per clip id, last one wins, their skipped clip
    # dropped) or "all" (every row of the annotation file). See xpool.data.corpora.
    lsmdc_captions: str = "authors"
    # A video listed in both the training and the test split is an error unless this is true.
    allow_overlap: bool = False


@dataclass
class SynthConfig:
    """The synthetic benchmark generator (used when `data.corpus` is `synthetic`)."""

    num_train: int = 400
    num_test: int = 200
    scenes: int = 3
    frames_per_scene: int = 4
    resolution: int = 64
    captions_per_video: int = 4
    fps: int = 8
    seed: int = 0


@dataclass
class PretrainConfig:
    """Image-text pretraining of the tiny CLIP on single synthetic scenes."""

    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    seed: int = 0
    eval_images: int = 500
    cache_dir: str = "cache/pretrain"
    # Scenes per group of a batch: a random scene and group_size - 1 one-attribute variants of it
    # (hard negatives; see xpool.data.synthetic.SceneImageStream). 1 = independent scenes.
    group_size: int = 4
    # Fraction of the steps during which the text tower stays at its random initialisation (only
    # the image tower learns; see xpool.engine.pretrain). 0 = joint training from the start.
    text_freeze: float = 0.5


@dataclass
class ModelConfig:
    """Backbone and pooling head.

    `pretrained` is an open_clip tag (`openai`), a path to a local checkpoint, `synthetic` (the
    tiny CLIP pretrained in-study on synthetic scenes, see `xpool.engine.pretrain`) or null
    (random).
    """

    backbone: str = "ViT-B-32"
    pretrained: str | None = "openai"
    pooling: str = "xpool"
    num_heads: int = 1
    dropout: float = 0.3
    residual: bool = True
    topk: int = 3
    attention_temperature: float = 0.01
    sa_layers: int = 4
    sa_heads: int = 8
    # self_attention (CLIP4Clip seqTransf) initialisation: "clip_text" (CLIP's text transformer
    # layers and position embedding, as CLIP4Clip) or "random" (CLIP4Clip's own init_weights).
    sa_init: str = "random"
    frozen: bool = False
    # "native" or "exact" (GEMM_MODES above): the CPU's float32 matrix products, convolutions and
    # sqrt/exp/log of pretraining, feature extraction, training and evaluation. The embedded
    # profiles use "exact", which makes them bit-identical across CPU vendors; GPUs are
    # unaffected.
    gemm: str = "native"


@dataclass
class TrainConfig:
    """The optimisation recipe (defaults: the authors' MSR-VTT 9k settings)."""

    epochs: int = 5
    batch_size: int = 32
    lr_clip: float = 1e-6
    lr_new: float = 3e-5
    weight_decay: float = 0.2
    adam_eps: float = 1e-6
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    seed: int = 24
    precision: str = "auto"
    max_steps: int | None = None
    checkpoint_every: int = 200
    evals_per_epoch: int = 1
    selection: str = "test"
    selection_window: int = 1
    # The progress bar's loss and speed are updated every N steps (and at the last);
    # train_log.csv, the run's training curve, keeps every step.
    log_every: int = 10
    # "hf_adamw" (Hugging Face transformers' AdamW, the authors' optimizer: eps before the bias
    # correction) or "torch_adamw" (torch.optim.AdamW). See xpool.optim.
    optimizer: str = "torch_adamw"
    # Where the logit scale is capped at ln 100: "param" (the authors: clamp the parameter after
    # each step, the loss uses exp(scale) as is) or "param_and_loss" (also clamp inside the loss,
    # which zeroes the scale's gradient at the cap).
    logit_scale_clamp: str = "param_and_loss"
    # Warmup's first step: "zero" (the authors, HF get_cosine_schedule_with_warmup: multiplier
    # step / warmup, so the first update is at lr 0) or "one" ((step + 1) / warmup).
    warmup_start: str = "one"
    # When to evaluate within an epoch of S steps: "authors" (after 0-based batches
    # int(linspace(0, S - 1, n + 1))[1:]) or "rounded" (after 1-based steps round(k S / n)).
    eval_steps: str = "rounded"


@dataclass
class EvalConfig:
    """Evaluation settings."""

    batch_size: int = 32
    chunk_size: int | None = None
    dsl: bool = True
    dsl_temperature: float = 100.0
    # Video-to-text ranking: "groups" (the authors' and CLIP4Clip's: each video ranks the
    # caption groups of all videos, a group scored by its best caption) or "captions" (each video
    # ranks every individual caption). Identical with one caption per video.
    v2t_convention: str = "captions"


@dataclass
class OutputConfig:
    """Where results go."""

    results_dir: str = "results"
    run_name: str | None = None


@dataclass
class Config:
    """A fully resolved configuration."""

    profile: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what run records store)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved config as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self, sections: Sequence[str] | None = None) -> str:
        """A short stable hash of the given sections (default: everything but `output`)."""
        d = self.to_dict()
        keys = sections if sections is not None else [k for k in d if k not in ("output", "profile")]
        payload = json.dumps({k: d[k] for k in keys}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    @property
    def data_root(self) -> Path:
        """The corpus root: `data.root`, or by default `data/<corpus>`; a synthetic corpus
        defaults to `data/synthetic/<hash of the synth section>` so every variant has its own.
        Relative paths are taken against the project root (`xpool.paths`), not the current
        directory, so a kernel started in `notebooks/` finds the same corpus."""
        if self.data.root is not None:
            return resolve(self.data.root)
        if self.data.corpus == "synthetic":
            return resolve(Path("data") / "synthetic" / self.fingerprint(["synth"]))
        return resolve(Path("data") / self.data.corpus)

    @property
    def profile_dir(self) -> Path:
        """`results/<profile>` under the project root: this profile's tables, figures and runs."""
        return resolve(self.output.results_dir) / self.profile


def _positive(v: Any) -> bool:
    return v > 0


def _nonneg(v: Any) -> bool:
    return v >= 0


def _fraction(v: Any) -> bool:
    return 0 <= v < 1


def _one_of(*choices: Any):
    def check(v: Any) -> bool:
        return v in choices

    check.choices = choices  # type: ignore[attr-defined]
    return check


# Range checks beyond the type: key -> (predicate, what a valid value looks like).
_CHECKS: dict[str, tuple[Any, str]] = {
    "data.corpus": (_one_of(*CORPORA), f"one of {CORPORA}"),
    "data.train_list": (_one_of("9k", "7k"), "'9k' or '7k'"),
    "data.num_frames": (_positive, "a positive integer"),
    "data.train_sampling": (_one_of("uniform", "random"), "'uniform' or 'random'"),
    "data.num_workers": (_nonneg, "an integer >= 0"),
    "data.missing": (_one_of("error", "drop", "ignore"), "'error', 'drop' or 'ignore'"),
    "data.val_videos": (_nonneg, "an integer >= 0"),
    "data.videos_dir": (lambda v: v != "" and not Path(v).is_absolute() and ".." not in Path(v).parts,
                        "a folder name relative to the corpus root (not empty, no '..')"),
    "data.sampling_rule": (_one_of("authors", "midpoint"), "'authors' or 'midpoint'"),
    "data.lsmdc_captions": (_one_of("authors", "all"), "'authors' or 'all'"),
    "synth.num_train": (_positive, "a positive integer"),
    "synth.num_test": (_positive, "a positive integer"),
    "synth.scenes": (_positive, "a positive integer"),
    "synth.frames_per_scene": (_positive, "a positive integer"),
    "synth.resolution": (lambda v: v >= 16, "an integer >= 16"),
    "synth.captions_per_video": (_positive, "a positive integer"),
    "synth.fps": (_positive, "a positive integer"),
    "pretrain.steps": (_nonneg, "an integer >= 0"),
    "pretrain.batch_size": (lambda v: v >= 2, "an integer >= 2"),
    "pretrain.lr": (_positive, "a positive number"),
    "pretrain.weight_decay": (_nonneg, "a number >= 0"),
    "pretrain.warmup_steps": (_nonneg, "an integer >= 0"),
    "pretrain.eval_images": (_positive, "a positive integer"),
    "pretrain.group_size": (_positive, "a positive integer"),
    "pretrain.text_freeze": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "model.pooling": (_one_of(*POOLINGS), f"one of {POOLINGS}"),
    "model.num_heads": (_positive, "a positive integer"),
    "model.dropout": (_fraction, "a number in [0, 1)"),
    "model.topk": (_positive, "a positive integer"),
    "model.attention_temperature": (_positive, "a positive number"),
    "model.sa_layers": (_positive, "a positive integer"),
    "model.sa_heads": (_positive, "a positive integer"),
    "model.gemm": (_one_of(*GEMM_MODES), f"one of {GEMM_MODES}"),
    "model.sa_init": (_one_of("clip_text", "random"), "'clip_text' or 'random'"),
    "train.epochs": (_positive, "a positive integer"),
    "train.batch_size": (lambda v: v >= 2, "an integer >= 2 (contrastive loss needs negatives)"),
    "train.lr_clip": (_nonneg, "a number >= 0"),
    "train.lr_new": (_nonneg, "a number >= 0"),
    "train.weight_decay": (_nonneg, "a number >= 0"),
    "train.adam_eps": (_positive, "a positive number"),
    "train.warmup_fraction": (_fraction, "a number in [0, 1)"),
    "train.grad_clip": (_nonneg, "a number >= 0 (0 disables clipping)"),
    "train.precision": (_one_of("auto", "fp32", "bf16"), "'auto', 'fp32' or 'bf16'"),
    "train.max_steps": (lambda v: v is None or v > 0, "a positive integer or null"),
    "train.checkpoint_every": (_positive, "a positive integer"),
    "train.evals_per_epoch": (_positive, "a positive integer"),
    "train.selection": (_one_of("test", "val"), "'test' or 'val'"),
    "train.selection_window": (_positive, "a positive integer"),
    "train.log_every": (_positive, "a positive integer"),
    "train.optimizer": (_one_of("hf_adamw", "torch_adamw"), "'hf_adamw' or 'torch_adamw'"),
    "train.logit_scale_clamp": (_one_of("param", "param_and_loss"), "'param' or 'param_and_loss'"),
    "train.warmup_start": (_one_of("zero", "one"), "'zero' or 'one'"),
    "train.eval_steps": (_one_of("authors", "rounded"), "'authors' or 'rounded'"),
    "eval.batch_size": (_positive, "a positive integer"),
    "eval.chunk_size": (lambda v: v is None or v > 0, "a positive integer or null"),
    "eval.dsl_temperature": (_positive, "a positive number"),
    "eval.v2t_convention": (_one_of("groups", "captions"), "'groups' or 'captions'"),
}


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return isinstance(value, annotation)


def _coerce_number(value: Any, annotation: Any) -> Any:
    """Ints are valid floats, and YAML 1.1 reads `1e-5` (no dot) as a string: accept both."""
    accepts_float = annotation is float or float in typing.get_args(annotation)
    if not accepts_float or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("<class '", "").replace("'>", "")


def _build_section(cls: type, raw: Mapping[str, Any], section: str, sources: dict[str, str]):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{section}.{key}"
        where = sources.get(dotted, sources.get(section, "<defaults>"))
        if key not in hints:
            valid = ", ".join(sorted(hints))
            raise ConfigError(
                f"unknown key '{dotted}' (value {value!r}) in {where}; valid keys of "
                f"'{section}': {valid}"
            )
        annotation = hints[key]
        value = _coerce_number(value, annotation)
        if not _type_ok(value, annotation):
            raise ConfigError(
                f"'{dotted}' must be of type {_type_name(annotation)}, got {value!r} "
                f"({type(value).__name__}) in {where}"
            )
        check = _CHECKS.get(dotted)
        if check is not None and value is not None and not check[0](value):
            raise ConfigError(f"invalid value {value!r} for '{dotted}' in {where}: expected {check[1]}")
        kwargs[key] = value
    return cls(**kwargs)


_SECTIONS = {k: v for k, v in typing.get_type_hints(Config).items() if k != "profile"}


def resolve_profile_path(profile: str | Path) -> Path:
    """A profile name (`smoke`) or a path to a YAML file -> the file's path."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"profile file {p} does not exist")
        return p
    candidate = PROFILE_DIR / f"{profile}.yaml"
    if not candidate.is_file():
        names = ", ".join(list_profiles())
        raise ConfigError(f"unknown profile '{profile}': no file {candidate}; available: {names}")
    return candidate


def list_profiles() -> list[str]:
    """Names of the profiles shipped with the package."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _read_profile(path: Path, sources: dict[str, str], seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise ConfigError(f"profile {path} extends itself (cycle: {' -> '.join(map(str, seen))})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse profile {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"profile {path} must be a mapping of sections, got {type(raw).__name__}")
    merged: dict[str, Any] = {}
    parent = raw.pop("extends", None)
    if parent is not None:
        merged = _read_profile(resolve_profile_path(parent), sources, seen + (path,))
    for section, values in raw.items():
        if section not in _SECTIONS:
            raise ConfigError(
                f"unknown section '{section}' in {path}; valid sections: {', '.join(_SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"section '{section}' in {path} must be a mapping, got {values!r}")
        merged.setdefault(section, {})
        for key, value in values.items():
            merged[section][key] = value
            sources[f"{section}.{key}"] = str(path)
    return merged


def parse_overrides(overrides: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """`["train.epochs=1", ...]` or `{"train.epochs": 1}` -> {dotted key: value}.

    String values are parsed as YAML scalars, so `1` is an int, `1e-5` a float, `null` None.
    """
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    parsed: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse the value of override '{item}': {e}") from e
        parsed[key.strip()] = value
    return parsed


def dataset_key(cfg: Config) -> str | None:
    """Which paper dataset a config trains on (`msrvtt9k`, ...), None for the synthetic corpus."""
    if cfg.data.corpus == "msrvtt":
        return f"msrvtt{cfg.data.train_list}"
    if cfg.data.corpus in ("msvd", "lsmdc"):
        return cfg.data.corpus
    return None


def load_config(
    profile: str | Path = "smoke",
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> Config:
    """Load a profile, apply overrides, validate everything and return the resolved Config."""
    path = resolve_profile_path(profile)
    sources: dict[str, str] = {}
    raw = _read_profile(path, sources)
    for dotted, value in parse_overrides(overrides).items():
        parts = dotted.split(".")
        if len(parts) != 2:
            raise ConfigError(
                f"override key '{dotted}' must be section.key (e.g. train.epochs); "
                f"sections: {', '.join(_SECTIONS)}"
            )
        section, key = parts
        if section not in _SECTIONS:
            raise ConfigError(
                f"unknown section '{section}' in override '{dotted}={value!r}'; "
                f"valid sections: {', '.join(_SECTIONS)}"
            )
        raw.setdefault(section, {})[key] = value
        sources[dotted] = "overrides"
    sections = {
        name: _build_section(cls, raw.get(name, {}), name, sources)
        for name, cls in _SECTIONS.items()
    }
    name = path.stem if path.parent == PROFILE_DIR else str(path)
    cfg = Config(profile=name, **sections)
    _check_consistency(cfg, str(path))
    return cfg


def _check_consistency(cfg: Config, where: str) -> None:
    if cfg.model.pretrained == "synthetic" and cfg.data.corpus != "synthetic":
        raise ConfigError(
            f"'model.pretrained' = 'synthetic' (the in-study tiny CLIP) only makes sense with "
            f"data.corpus = synthetic, got {cfg.data.corpus!r} in {where}"
        )


def config_from_dict(d: Mapping[str, Any], where: str = "<dict>") -> Config:
    """Rebuild a Config from `Config.to_dict()` output (for example a run record)."""
    sources = {name: where for name in _SECTIONS}
    sections = {
        name: _build_section(cls, d.get(name, {}), name, sources) for name, cls in _SECTIONS.items()
    }
    return Config(profile=d.get("profile", "custom"), **sections)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    return atomic_write_text(path, cfg.to_yaml())
