"""The `xpool` command: the same verbs the Makefile and the notebooks use.

Heavy modules (torch, open_clip, decord) are imported inside each handler so that `xpool --help`
is instant.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from xpool.config import DEFAULT_PROFILE
from xpool.errors import XPoolError
from xpool.malloc import keep_freed_memory
from xpool.paths import project_root

PROFILE_HELP = "a profile name from xpool/profiles/ (e.g. smoke, embedded, paper-msrvtt9k) or a YAML path"
OVERRIDE_HELP = "dotted key=value overrides, e.g. train.epochs=1 model.pooling=mean"


def _config(args: argparse.Namespace):
    from xpool.config import load_config

    return load_config(args.profile, args.overrides)


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from xpool.recipe import deviations

    print(cfg.to_yaml(), end="")
    devs = deviations(cfg)
    print("# deviations from the authors' recipe (docs/fidelity.md): "
          + ("none" if not devs else ""))
    for key, mine, theirs in devs:
        print(f"#   {key}: {mine!r} (authors: {theirs!r})")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from xpool.data.synthetic import ensure_corpus
    from xpool.engine.pretrain import ensure_pretrained
    root = ensure_corpus(cfg)
    print(f"synthetic corpus: {root}")
    if cfg.model.pretrained == "synthetic" and not args.no_pretrain:
        ckpt = ensure_pretrained(cfg)
        print(f"pretrained tiny CLIP: {ckpt}")
    return 0


def _urls(items: Sequence[str], corpus: str) -> dict[str, str]:
    """`--url KEY=URL` options -> {key: url}; the keys are those of DEFAULT_URLS[corpus]."""
    from xpool.data.download import DEFAULT_URLS

    valid = sorted(DEFAULT_URLS.get(corpus, {}))
    urls: dict[str, str] = {}
    for item in items:
        key, sep, url = item.partition("=")
        if not sep or key not in valid or not url:
            raise XPoolError(f"--url {item!r}: expected KEY=URL with KEY one of {valid} "
                             f"(e.g. --url videos=https://mirror.example/MSRVTT.zip)")
        urls[key] = url
    return urls


def cmd_download(args: argparse.Namespace) -> int:
    from xpool.data.download import download_corpus

    download_corpus(args.corpus, args.root, urls=_urls(args.url, args.corpus))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from xpool.data.prepare import compress_videos

    report = compress_videos(args.root, out_root=args.out, fps=args.fps, short_side=args.short_side,
                             workers=args.workers)
    print(report)
    return 0


def cmd_extract_features(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from xpool.engine.features import extract_features
    for split in args.splits:
        path = extract_features(cfg, split)
        print(f"{split}: {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from xpool.engine.train import train
    record = train(cfg, resume=args.resume, fresh=args.fresh)
    print(f"run record: {record.run_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from xpool.model.checkpoints import is_authors_file
    if is_authors_file(args.checkpoint):
        from xpool.authors import evaluate_authors_checkpoint
        res = evaluate_authors_checkpoint(cfg, args.checkpoint, split=args.split)
        print(res.markdown)
        print(f"run record: {res.record_dir}")
        print(f"table: {res.table_path} (and .md)")
        return 0
    if args.sharded:
        from xpool.engine.evaluate import evaluate_checkpoint_sharded
        result = evaluate_checkpoint_sharded(cfg, args.checkpoint, split=args.split)
        if int(os.environ.get("RANK", "0")) != 0:
            return 0  # every rank has the metrics; one prints them
        print(f"sharded over {os.environ.get('WORLD_SIZE', '1')} process(es), raw similarities "
              f"(no DSL)")
    else:
        from xpool.engine.evaluate import evaluate_checkpoint
        result = evaluate_checkpoint(cfg, args.checkpoint, split=args.split)
    for direction, metrics in result.items():
        print(direction, " ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    if "=" in args.profile:  # `xpool index DIR key=value`: no profile given, only overrides
        args.overrides, args.profile = [args.profile, *args.overrides], "paper-msrvtt9k"
    cfg = _config(args)
    from xpool.search import build_index, default_index_dir
    report = build_index(cfg, args.videos_dir, args.out or default_index_dir(),
                         checkpoint=args.checkpoint)
    print(report.summary())
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from xpool.search import default_index_dir, format_hits, load_index, search, search_method

    index = load_index(args.index or default_index_dir())
    hits = search(index, args.caption, top=args.top, pooling=args.pooling)
    head = args.pooling or index.cfg.model.pooling
    method = search_method(len(index.paths), args.top)
    print(f"top {len(hits)} of {len(index.paths)} videos for {args.caption!r} ({head} pooling, "
          f"{method})")
    print(format_hits(hits))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from xpool.reproduce import reproduce

    return reproduce(args.profile, fresh=args.fresh, figures_only=args.figures_only)


def cmd_bench(args: argparse.Namespace) -> int:
    # The suite lives in the repository's bench/, outside the package (which never imports it):
    # run it as its own process from the project root, with this interpreter.
    root = project_root()
    if not (root / "bench" / "suite.py").is_file():
        raise XPoolError(f"no benchmark suite at {root / 'bench'}: `xpool bench` needs a source "
                         f"checkout of the project (git clone + make setup); an installed package "
                         f"has no bench/ folder")
    cmd = [sys.executable, "-m", "bench.suite", *(["--quick"] if args.quick else []),
           *(["--only", *args.only] if args.only is not None else [])]
    with subprocess.Popen(cmd, cwd=root) as proc:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            # The Ctrl-C reached the suite too (same process group): it stops and reports itself.
            return proc.wait()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `xpool` command."""
    parser = argparse.ArgumentParser(
        prog="xpool",
        description="X-Pool reproducibility study: data, training, evaluation, reports.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def with_profile(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("profile", help=PROFILE_HELP)
        p.add_argument("overrides", nargs="*", default=[], help=OVERRIDE_HELP)
        return p

    p = with_profile(sub.add_parser("config", help="print the resolved recipe of a profile"))
    p.set_defaults(func=cmd_config)

    p = with_profile(sub.add_parser("synth", help="generate the synthetic corpus and pretrain the tiny CLIP"))
    p.add_argument("--no-pretrain", action="store_true", help="only generate the corpus")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("download", help="download a real corpus (msrvtt, msvd) into --root")
    p.add_argument("corpus", choices=["msrvtt", "msvd", "lsmdc"])
    p.add_argument("--root", required=True, help="corpus root directory (e.g. data/msrvtt)")
    p.add_argument("--url", action="append", default=[], metavar="KEY=URL",
                   help="fetch KEY (annotations, videos; msvd also captions) from a mirror "
                        "instead; repeatable. Annotation checksums are still enforced")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("prepare", help="prepare videos (compress: re-encode to 3 fps, short side 224)")
    p.add_argument("action", choices=["compress"])
    p.add_argument("--root", required=True, help="corpus root whose videos/ to re-encode")
    p.add_argument("--out", default=None, help="output root (default: see README)")
    p.add_argument("--fps", type=int, default=3)
    p.add_argument("--short-side", type=int, default=224)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_prepare)

    p = with_profile(sub.add_parser("extract-features", help="cache frozen CLIP features of a corpus"))
    p.add_argument("--splits", nargs="+", default=["train", "test"], help="splits to extract")
    p.set_defaults(func=cmd_extract_features)

    p = with_profile(sub.add_parser("train", help="train a retrieval model from a profile"))
    what = p.add_mutually_exclusive_group()
    what.add_argument("--resume", action="store_true", help="continue an interrupted run")
    what.add_argument("--fresh", action="store_true",
                      help="start the run over, discarding its checkpoint or finished record")
    p.set_defaults(func=cmd_train)

    p = with_profile(sub.add_parser("eval", help="evaluate a checkpoint"))
    p.add_argument("--checkpoint", required=True,
                   help="a run's checkpoint (best.pt) or an authors' model_best.pth")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--sharded", action="store_true",
                   help="split the gallery over the torchrun processes (`torchrun "
                        "--nproc_per_node N -m xpool.cli eval ... --sharded`): exact metrics, no "
                        "rank holds the whole score matrix; raw similarities only (no DSL)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("index", help="embed every video in a folder for `xpool search`")
    p.add_argument("videos_dir", help="folder of videos (searched recursively)")
    p.add_argument("profile", nargs="?", default="paper-msrvtt9k",
                   help=PROFILE_HELP + " (default paper-msrvtt9k)")
    p.add_argument("overrides", nargs="*", default=[], help=OVERRIDE_HELP)
    p.add_argument("--checkpoint", default=None,
                   help="a run's checkpoint or an authors' model_best.pth (default: the profile's "
                        "model.pretrained weights)")
    p.add_argument("--out", default=None, help="index folder (default $XPOOL_INDEX or index/)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="rank the indexed videos for a caption")
    p.add_argument("caption", help="the text query")
    p.add_argument("--top", type=int, default=5, help="how many videos to show (default 5)")
    p.add_argument("--index", default=None, help="index folder (default $XPOOL_INDEX or index/)")
    p.add_argument("--pooling", default=None,
                   help="another pooling head than the index's (parameter-free: mean, topk, "
                        "attention)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("reproduce", help="run every notebook of a profile with papermill")
    p.add_argument("profile", nargs="?", default=DEFAULT_PROFILE, help=PROFILE_HELP)
    p.add_argument("--fresh", action="store_true", help="recompute finished runs")
    p.add_argument("--figures-only", action="store_true",
                   help="re-render tables and figures from saved runs, no training")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("bench", help="run the performance benchmarks under bench/")
    p.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes")
    p.add_argument("--only", nargs="*", default=None, help="names of benchmarks to run")
    p.set_defaults(func=cmd_bench)
    return parser


# Commands that train, extract or evaluate on the CPU: glibc keeps freed memory for them and for
# the processes they start (xpool.malloc; `bench` measures the machine's defaults).
KEEP_FREED_MEMORY = ("synth", "extract-features", "train", "eval", "reproduce")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `xpool` console script."""
    parser = build_parser()
    # Overrides may come after options too (`eval P --checkpoint X data.root=Y`): argparse ends
    # a nargs="*" positional at the first option, so the rest arrives as unknown arguments.
    args, extra = parser.parse_known_args(argv)
    if extra:
        stray = [e for e in extra if e.startswith("-") or "=" not in e]
        if stray or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.command in KEEP_FREED_MEMORY:
        keep_freed_memory()
    try:
        return args.func(args)
    except XPoolError as e:
        print(f"xpool {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        detail = f": {e}" if str(e) else ""
        print(f"xpool {args.command}: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
