"""Notebook tier: every notebook executes under the smoke profile (papermill, through
`xpool.reproduce`), the tables it writes are well-formed, figures-only mode trains nothing,
failures name the notebook and cell, a missing corpus is a clear message, and a headless
JupyterLab serves the notebooks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from xpool import reproduce as rp
from xpool.errors import CorpusError
from xpool.protocol import PAIRS

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
METRICS = ["R1", "R5", "R10", "MdR", "MnR"]


def _kernel_available() -> bool:
    from jupyter_client.kernelspec import KernelSpecManager

    return rp.KERNEL in KernelSpecManager().find_kernel_specs()


needs_kernel = pytest.mark.skipif(
    not _kernel_available(),
    reason="the 'xpool' Jupyter kernel is not registered (make setup registers it)")


def test_notebooks_are_thin_parameterized_and_clean():
    for name in rp.NOTEBOOKS:
        nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "xpool"
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, name
        for key in ("profile", "output_dir", "data_root"):
            assert f"{key} =" in params[0].source, (name, key)
        # Training notebooks take a list of seeds; the read-only 07/08 draw one run (`seed`),
        # 09 evaluates fixed checkpoints (no seed); none of these declares figures_only/fresh,
        # which they could not honour.
        read_only = name in ("07_figures", "08_explore", "09_authors_checkpoints")
        if name != "09_authors_checkpoints":
            assert ("seed =" if read_only else "seeds =") in params[0].source, name
        for key in ("figures_only", "fresh"):
            assert (f"{key} =" in params[0].source) is not read_only, (name, key)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, name
                # Thin: logic lives in the package; no function or class definitions here.
                assert "def " not in cell.source and "class " not in cell.source, name


def _check_metrics(df: pd.DataFrame, max_rank: int) -> None:
    for m in ("R1", "R5", "R10"):
        assert df[m].between(0, 100).all(), m
    assert (df["R1"] <= df["R5"]).all() and (df["R5"] <= df["R10"]).all()
    for m in ("MdR", "MnR"):
        assert df[m].between(1, max_rank).all(), m


@needs_kernel
@pytest.mark.slow
def test_every_notebook_executes_under_smoke(tmp_path):
    t0 = time.time()
    lines: list[str] = []
    rc = rp.reproduce("smoke", results_dir=tmp_path, notebooks_dir=NB_DIR, log=lines.append)
    assert rc == 0, "\n".join(lines)
    out = tmp_path / "smoke"
    first = time.time() - t0
    for name in rp.NOTEBOOKS:
        assert (out / "notebooks" / f"{name}.ipynb").is_file()
    tables = out / "tables"
    abl = pd.read_csv(tables / "pooling_ablation.csv")
    assert list(abl.columns[:10]) == ["dataset", "pooling", "seed", "direction", *METRICS,
                                      "selection"]
    assert set(abl["pooling"]) == {"mean", "self_attention", "topk", "attention", "xpool"}
    assert set(abl["direction"]) == {"t2v", "v2t"}
    _check_metrics(abl, max_rank=12 * 2)
    sub = pd.read_csv(tables / "subregion_study.csv")
    assert list(sub.columns[:8]) == ["pooling", "K", *["seed"], *METRICS]
    assert set(sub["K"]) == {1, 2}
    _check_metrics(sub, max_rank=12 * 2)
    boot = pd.read_csv(tables / "pooling_bootstrap.csv")
    assert (boot["lo"] <= boot["diff_R1"]).all() and (boot["diff_R1"] <= boot["hi"]).all()
    for key in ("msrvtt9k", "msrvtt7k", "msvd", "lsmdc"):
        t = pd.read_csv(tables / f"results_{key}.csv")
        assert set(t["direction"]) == {"t2v", "v2t"}
        assert {"R1_mean", "R1_std", "DSL_R1_mean", "seeds", "selection"} <= set(t.columns)
        assert "NOT comparable" in (tables / f"results_{key}.md").read_text()
    assert pd.read_csv(tables / "results_msrvtt9k.csv")["n_seeds"].eq(2).all()
    assert "checkpoint: best single test evaluation" in (tables / "results_lsmdc.md").read_text()
    proto = pd.read_csv(tables / "protocol.csv")
    assert set(proto["rule"]) == {"test_best", "test_window", "val", "last"}
    assert set(proto["pooling"]) == {"mean", "self_attention", "topk", "attention", "xpool"}
    assert (proto["evaluations"] == 6).all()  # smoke: 3 frozen epochs x 2 evaluations
    _check_metrics(proto.assign(R10=100.0, MdR=1.0, MnR=1.0), max_rank=12 * 2)
    paired = pd.read_csv(tables / "protocol_paired.csv")
    assert set(zip(paired["rule"], paired["baseline"], strict=True)) == set(PAIRS)
    for fig in ("attention_weights", "top5_retrieval", "training_curves", "pooling_ablation",
                "subregion_r1_vs_k", "protocol"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    record = json.loads((out / "reproduce_record.json").read_text())
    assert record["latest"]["kind"] == "first" and record["latest"]["runs_after"] > 0

    # make figures: rebuilds tables and figures from the records without training anything
    # (two notebooks here to keep the tier short; every one runs the same read-only path).
    runs_before = sorted(p.name for p in (out / "runs").iterdir())
    (out / "figures" / "attention_weights.png").unlink()
    (out / "tables" / "pooling_ablation.csv").unlink()
    t1 = time.time()
    rc = rp.reproduce("smoke", results_dir=tmp_path, notebooks_dir=NB_DIR, figures_only=True,
                      only=["05_pooling_ablation", "07_figures"], log=lines.append)
    assert rc == 0, "\n".join(lines)
    assert (out / "figures" / "attention_weights.png").is_file()
    assert (out / "tables" / "pooling_ablation.csv").is_file()
    assert sorted(p.name for p in (out / "runs").iterdir()) == runs_before
    record = json.loads((out / "reproduce_record.json").read_text())
    assert record["latest"]["kind"] == "figures_only"
    assert time.time() - t1 < first


@needs_kernel
def test_failure_names_notebook_and_cell(tmp_path):
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("profile = 'smoke'\noutput_dir = None", metadata={
            "tags": ["parameters"]}),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise ValueError('boom')"),
    ])
    nb.metadata["kernelspec"] = {"name": "xpool", "display_name": "Python (xpool)",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, nb_dir / "01_msrvtt_9k.ipynb")
    runs = tmp_path / "res" / "smoke" / "runs" / "old"
    runs.mkdir(parents=True)
    (runs / "trained_here.json").write_text("{}")
    lines: list[str] = []
    rc = rp.reproduce("smoke", results_dir=tmp_path / "res", notebooks_dir=nb_dir,
                      only=["01_msrvtt_9k"], fresh=True, log=lines.append)
    assert rc == 1
    text = "\n".join(lines)
    assert "01_msrvtt_9k" in text and "ValueError" in text and "boom" in text and "cell" in text
    # fresh keeps the records (the committed reference) but forgets which ones were trained here
    assert runs.is_dir() and not (runs / "trained_here.json").exists()
    record = json.loads((tmp_path / "res" / "smoke" / "reproduce_record.json").read_text())
    assert record["latest"]["status"] == "failed"


def test_missing_corpus_is_a_clear_message(tmp_path):
    from xpool import study as xs

    st = xs.open_study("paper-msrvtt9k", tmp_path / "paper-msrvtt9k",
                       data_root=str(tmp_path / "nowhere"))
    with pytest.raises(CorpusError, match="xpool download msrvtt") as err:
        st.require_corpus()
    # IPython shows this instead of a traceback.
    rendered = err.value._render_traceback_()
    assert len(rendered) == 1 and "xpool download" in rendered[0]


@needs_kernel
def test_missing_corpus_stops_the_notebook_with_the_download_command(tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(NB_DIR / "01_msrvtt_9k.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"profile": "paper-msrvtt9k",
                                        "output_dir": str(tmp_path / "paper-msrvtt9k"),
                                        "data_root": str(tmp_path / "nowhere")},
                            kernel_name=rp.KERNEL, cwd=str(ROOT), progress_bar=False)
    assert "xpool download msrvtt" in err.value.evalue
    assert err.value.ename == "StudyStop"


def test_notebook_selection_per_profile():
    from xpool.config import load_config

    # The authors' checkpoints notebook: real-data profiles, and smoke (a random converted model).
    assert rp.notebooks_for(load_config("embedded")) == [
        n for n in rp.NOTEBOOKS if n != "09_authors_checkpoints"]
    assert rp.notebooks_for(load_config("smoke")) == list(rp.NOTEBOOKS)
    assert rp.notebooks_for(load_config("paper-msvd")) == [
        "03_msvd", "05_pooling_ablation", "07_figures", "08_explore", "09_authors_checkpoints",
        "10_protocol"]
    assert rp.notebook_parameters("paper-msvd", "10_protocol")["evals_per_epoch"] is None
    assert rp.notebooks_for(load_config("embedded-finetune-protocol")) == ["10_protocol"]
    assert rp.notebook_parameters("embedded-finetune-protocol", "10_protocol") == {
        "mode": None, "seeds": [0, 1, 2]}
    assert rp.notebook_parameters("frozen-msrvtt9k", "01_msrvtt_9k")["mode"] is None
    assert rp.notebook_parameters("embedded", "05_pooling_ablation") == {}
    # The fine-tuned variant of the embedded study: the pooling ablation only, one seed.
    assert rp.notebooks_for(load_config("embedded-finetune")) == [
        "05_pooling_ablation", "07_figures", "08_explore"]
    params = rp.notebook_parameters("embedded-finetune", "05_pooling_ablation")
    assert params == {"mode": None, "seeds": [0], "frames": [], "heads": []}


def test_quick_profile_is_the_default_and_the_embedded_study_made_small():
    import inspect

    from xpool import cli
    from xpool.config import load_config
    from xpool.model.backbone import build_backbone

    quick, full = load_config("embedded-quick"), load_config("embedded")
    # The same recipe and exact GEMM; a half-width image tower, fewer steps, epochs and videos.
    assert quick.model.gemm == full.model.gemm == "exact"
    assert quick.eval == full.eval and quick.train.lr_new == full.train.lr_new
    assert (quick.train.epochs, full.train.epochs) == (2, 3)
    assert (quick.synth.num_train, quick.synth.num_test) == (200, full.synth.num_test)
    assert (quick.pretrain.steps, full.pretrain.steps) == (150, 300)
    widths = [build_backbone(name, pretrained=None).model.visual.conv1.out_channels
              for name in ("xpool-mini", "xpool-tiny")]
    assert widths == [4, 8]  # open_clip's stem starts at width // 2
    assert rp.notebooks_for(quick) == rp.notebooks_for(full)
    assert rp.notebook_parameters("embedded-quick", "01_msrvtt_9k") == {"seeds": [0]}
    assert rp.notebook_parameters("embedded-quick", "10_protocol")["seeds"] == [0, 1]
    # `make reproduce`, `xpool reproduce` and `xpool.report` all default to it.
    makefile = (ROOT / "Makefile").read_text()
    assert "\nPROFILE ?= embedded-quick\n" in makefile
    assert inspect.signature(rp.reproduce).parameters["profile"].default == "embedded-quick"
    args = cli.build_parser().parse_args(["reproduce"])
    assert args.profile == "embedded-quick"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_headless_jupyter_lab_serves_the_notebooks(tmp_path):
    port = _free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
           "--ip=127.0.0.1", "--ServerApp.token=", "--ServerApp.password=",
           f"--ServerApp.root_dir={ROOT}", "--ServerApp.port_retries=0"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers often run as root; lab refuses without it
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "lab.log", "w"))
    try:
        url = f"http://127.0.0.1:{port}/api/contents/notebooks"
        deadline = time.time() + 90
        listing = None
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    listing = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert listing is not None, (tmp_path / "lab.log").read_text()[-2000:]
        names = {c["name"] for c in listing["content"]}
        assert {f"{n}.ipynb" for n in rp.NOTEBOOKS} <= names
        with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/api/contents/notebooks/08_explore.ipynb",
                timeout=10) as r:
            assert json.loads(r.read())["type"] == "notebook"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab", timeout=10) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_open_study_checks_output_dir_and_mode(tmp_path):
    from xpool import study as xs
    from xpool.errors import ConfigError

    st = xs.open_study("smoke", tmp_path / "smoke", mode="frozen")
    cfg = st.config({"model.pooling": "mean"}, seed=3)
    assert cfg.model.frozen and cfg.train.seed == 3 and cfg.model.pooling == "mean"
    assert cfg.profile_dir == tmp_path / "smoke"
    # The frozen recipe: larger head learning rate, more epochs, no augmentation.
    base = st.base
    assert cfg.train.lr_new == base.train.lr_new * xs.FROZEN_LR_FACTOR
    assert cfg.train.epochs == base.train.epochs * xs.FROZEN_EPOCH_FACTOR
    # Explicit overrides win over the mode's defaults.
    assert st.config({"train.epochs": 7}).train.epochs == 7
    assert xs.open_study("smoke", tmp_path / "smoke").config().model.frozen is False
    with pytest.raises(ConfigError, match="named after the profile"):
        xs.open_study("smoke", tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="mode"):
        xs.open_study("smoke", tmp_path / "smoke", mode="half")


def test_figures_only_never_trains_and_names_the_missing_run(tmp_path):
    from xpool import study as xs
    from xpool.errors import XPoolError

    st = xs.open_study("smoke", tmp_path / "smoke", mode="frozen", figures_only=True)
    with pytest.raises(XPoolError, match="no finished record.*make reproduce PROFILE=smoke"):
        st.run({"model.pooling": "xpool"}, seed=0)
    assert not (tmp_path / "smoke" / "runs").exists()


def test_standins_keep_the_caption_structure():
    from xpool import study as xs
    from xpool.config import load_config

    base = load_config("embedded")
    o, desc, source = xs.standin_overrides("lsmdc", base)
    assert o == {"synth.captions_per_video": 1} and source == "test"
    o, desc, source = xs.standin_overrides("msvd", base)
    assert "captions" in desc
    if source == "selected_eval":
        assert o["train.selection"] == "val" and 0 < o["data.val_videos"] <= 100
    assert xs.dataset_key(load_config("paper-msrvtt7k")) == "msrvtt7k"
    assert xs.dataset_key(base) is None


def test_relative_paths_resolve_against_the_project_root_from_any_folder(tmp_path):
    # Where JupyterLab starts a kernel (notebooks/) and an unrelated folder: the same places.
    probe = ("from xpool.config import load_config; from xpool import paths, reporting\n"
             "c = load_config('smoke')\n"
             "print(paths.project_root()); print(c.profile_dir); print(c.data_root)\n"
             "try:\n    reporting.read_table('results/smoke/nowhere', 'pooling_ablation')\n"
             "except Exception as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "XPOOL_ROOT"}
    env["PYTHONPATH"] = str(ROOT)
    for cwd in (NB_DIR, tmp_path):
        out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, check=True,
                             capture_output=True, text=True).stdout.splitlines()
        assert out[0] == str(ROOT), cwd
        assert out[1] == str(ROOT / "results" / "smoke")
        assert out[2].startswith(str(ROOT / "data" / "synthetic"))
        # The error names the absolute path it looked in.
        assert str(ROOT / "results" / "smoke" / "nowhere" / "pooling_ablation.csv") in out[3]
    # XPOOL_ROOT moves the root; a wrong one is a clear error.
    out = subprocess.run([sys.executable, "-c", probe], cwd=NB_DIR,
                         env={**env, "XPOOL_ROOT": str(tmp_path)}, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert out[0] == str(tmp_path.resolve()) and out[1] == str(tmp_path.resolve() / "results/smoke")
    from xpool import paths
    from xpool.errors import ConfigError

    old = os.environ.get(paths.ROOT_ENV)
    os.environ[paths.ROOT_ENV] = str(tmp_path / "missing")
    try:
        with pytest.raises(ConfigError, match="XPOOL_ROOT"):
            paths.project_root()
    finally:
        if old is None:
            del os.environ[paths.ROOT_ENV]
        else:
            os.environ[paths.ROOT_ENV] = old
    assert paths.resolve("/abs/x") == Path("/abs/x")
    assert paths.shown(paths.project_root() / "results" / "x") == "results/x"
    assert paths.shown("/elsewhere/x") == "/elsewhere/x"


@needs_kernel
def test_kernels_start_without_the_transport_warning(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    nb.metadata["kernelspec"] = {"name": "xpool", "display_name": "Python (xpool)",
                                 "language": "python"}
    nbformat.write(nb, tmp_path / "a.ipynb")
    # The kernel writes its start-up log to the stderr it inherits: run in a child to read it.
    code = (f"from xpool.notebook_exec import run_notebook; "
            f"print(run_notebook({str(tmp_path / 'a.ipynb')!r}, "
            f"{str(tmp_path / 'b.ipynb')!r}, {{}}, 'xpool', {str(tmp_path)!r}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 0 and "None)" in res.stdout, res.stderr
    assert "without encryption" not in res.stderr and "WARNING" not in res.stderr, res.stderr
    out = nbformat.read(tmp_path / "b.ipynb", as_version=4)
    assert out.cells[-1].outputs[0]["text"] == "42\n"


@needs_kernel
@pytest.mark.slow
def test_protocol_notebook_executes_fine_tuned(tmp_path):
    # `make reproduce PROFILE=embedded-finetune-protocol` runs notebook 10 with the backbone
    # fine-tuned (mode None: as the profile says), where no head is deterministic; the smoke
    # profile fine-tunes too. Two seeds keep the tier short.
    from xpool.notebook_exec import run_notebook

    assert rp.notebook_parameters("embedded-finetune-protocol", "10_protocol")["mode"] is None
    out = tmp_path / "smoke"
    params = {"profile": "smoke", "output_dir": str(out), "mode": None, "seeds": [0, 1],
              "evals_per_epoch": 2, "val_videos": 4, "n_boot": 200}
    seconds, failure = run_notebook(str(NB_DIR / "10_protocol.ipynb"),
                                    str(tmp_path / "10_protocol.ipynb"), params, "xpool",
                                    str(ROOT))
    assert failure is None, failure
    proto = pd.read_csv(out / "tables" / "protocol.csv")
    assert set(proto["rule"]) == {"test_best", "test_window", "val", "last"}
    assert set(proto["pooling"]) == {"mean", "self_attention", "topk", "attention", "xpool"}
    assert (proto["evaluations"] == 2).all()  # smoke: 1 fine-tuned epoch x 2 evaluations
    _check_metrics(proto.assign(R10=100.0, MdR=1.0, MnR=1.0), max_rank=12 * 2)
    config = (next((out / "runs").glob("mean-seed0-*")) / "config.yaml").read_text()
    assert "frozen: false" in config
    assert (out / "figures" / "protocol.png").stat().st_size > 1000


@needs_kernel
def test_notebooks_in_a_shared_kernel_start_from_an_empty_namespace(tmp_path):
    from xpool.notebook_exec import run_notebook, shared_kernel

    def notebook(name: str, *sources: str) -> str:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
        nb.metadata["kernelspec"] = {"name": "xpool", "display_name": "Python (xpool)",
                                     "language": "python"}
        nbformat.write(nb, tmp_path / name)
        return str(tmp_path / name)

    first = notebook("a.ipynb", "import os, matplotlib.pyplot as plt\nleak = 1\n"
                                "fig = plt.figure()\nprint(os.getpid())")
    second = notebook("b.ipynb", "import os\nimport matplotlib.pyplot as plt\n"
                                 "print(os.getpid(), 'leak' in globals(), len(plt.get_fignums()))")
    with shared_kernel("xpool", str(tmp_path)) as shared:
        assert run_notebook(first, str(tmp_path / "a.out.ipynb"), {}, "xpool", str(tmp_path),
                            shared)[1] is None
        assert shared.cpu_seconds() > 0
        assert run_notebook(second, str(tmp_path / "b.out.ipynb"), {}, "xpool", str(tmp_path),
                            shared)[1] is None
        # A kernel that died (say, out of memory) fails the next notebook with a message.
        shared.km.provisioner.process.kill()
        shared.km.provisioner.process.wait()
        failure = run_notebook(second, str(tmp_path / "c.out.ipynb"), {}, "xpool",
                               str(tmp_path), shared)[1]
        assert failure and "shared kernel does not answer" in failure
    pid = nbformat.read(tmp_path / "a.out.ipynb", as_version=4).cells[0].outputs[0]["text"]
    out = nbformat.read(tmp_path / "b.out.ipynb", as_version=4).cells[0].outputs[0]["text"]
    # The same process, but none of the first notebook's names or figures.
    assert out.split() == [pid.strip(), "False", "0"]
