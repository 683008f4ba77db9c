"""Write the study's notebooks (`python notebooks/generate_notebooks.py`).

The committed `.ipynb` files are what users open and what `make reproduce` executes; this script
is how they are kept consistent (same parameters cell, same thin structure). Editing a notebook by
hand is fine; rerunning this script overwrites such edits. Notebooks are stored without outputs:
executed copies go to `results/<profile>/notebooks/`.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# Relative paths (output_dir, data_root) are taken against the project root, wherever the kernel
# starts (see xpool/paths.py). $XPOOL_PROFILE sets the default profile without editing a notebook.
BASE_PARAMS = '''\
import os

profile = os.environ.get("XPOOL_PROFILE", "embedded")  # embedded, smoke, paper-*, frozen-*, a YAML
output_dir = None      # the profile's results folder; None: results/<profile> in the project
data_root = None       # corpus root; None: the profile's (data/<corpus>, or the synthetic cache)'''
COMMON_PARAMS = BASE_PARAMS + '''
figures_only = False   # True: never train, only read finished runs (what `make figures` does)
fresh = False          # True: retrain runs even if a finished record exists'''

SETUP = '''\
from IPython.display import Image, Markdown, display

from xpool import reporting
from xpool import study as xs
from xpool.paths import shown

st = xs.open_study(profile, output_dir, data_root=data_root, mode=mode,
                   figures_only=figures_only, fresh=fresh)
print(f"profile {st.profile} ({st.effective_mode}), results in {shown(st.output_dir)}")'''

MODE_DOC = ('mode = "frozen"        # "finetune", "frozen" (frozen backbone, cached features, '
            'only the head trains) or None (as the profile says)')

DATASETS = {
    "01_msrvtt_9k": ("msrvtt9k", "MSR-VTT 9k", "paper-msrvtt9k",
                     "9,000 training videos with 20 captions each; the 1k-A test split has one "
                     "caption per video."),
    "02_msrvtt_7k": ("msrvtt7k", "MSR-VTT 7k", "paper-msrvtt7k",
                     "the 7,010-video training list; the same 1k-A test split."),
    "03_msvd": ("msvd", "MSVD", "paper-msvd",
                "1,200 training clips; 670 test clips with 21-81 captions each, every caption a "
                "query (and the best-ranked caption counts for video-to-text)."),
    "04_lsmdc": ("lsmdc", "LSMDC", "paper-lsmdc",
                 "movie clips with one caption each; 1,000 test clips."),
}


def _params(extra: str, common: str = COMMON_PARAMS) -> nbformat.NotebookNode:
    cell = new_code_cell(common + "\n" + extra)
    cell.metadata["tags"] = ["parameters"]
    return cell


def _base_params(extra: str) -> nbformat.NotebookNode:
    """Parameters of the read-only notebooks (07, 08): nothing to train, so no figures_only or
    fresh."""
    return _params(extra, BASE_PARAMS)


def dataset_notebook(key: str, title: str, paper_profile: str, structure: str):
    return new_notebook(cells=[
        new_markdown_cell(
            f"# {title}: X-Pool against mean and self-attention pooling\n\n"
            f"The paper's result table for {title} ({structure}) — X-Pool and the mean and "
            "self-attention baselines, text-to-video and video-to-text, mean and spread over "
            "seeds, dual-softmax (DSL) numbers in separate columns, and the selection protocol.\n\n"
            f"- With `profile=\"{paper_profile}\"` (GPU, fine-tuning CLIP ViT-B/32) or "
            f"`\"frozen-{paper_profile[6:]}\"` (frozen CLIP features, CPU) it runs the real corpus "
            "and shows the paper's number and the difference beside every number.\n"
            "- With the default `embedded` profile it runs the same protocol on a **synthetic "
            f"stand-in** with {title}'s caption structure; those numbers are not comparable to "
            "the paper's and the table says so.\n\n"
            "Runs are cached by their resolved config: rerunning reads finished runs, and "
            "runs shared with other notebooks (the pooling ablation) are trained once."),
        _params(MODE_DOC + "\nseeds = [0, 1, 2]      # training seeds: mean ± std over them"),
        new_code_cell(SETUP),
        new_markdown_cell("## Training (or reading) the runs and the table"),
        new_code_cell(f'res = xs.dataset_study(st, "{key}", seeds)\n'
                      "display(Markdown(res.markdown))"),
        new_markdown_cell("Every run behind the table (one row per run and direction):"),
        new_code_cell('res.runs.round(2)'),
        new_markdown_cell("Where the files are:"),
        new_code_cell(f'print(shown(st.tables_dir / "results_{key}.csv"))\n'
                      f'print(shown(st.tables_dir / "results_{key}.md"))'),
    ])


def ablation_notebook():
    return new_notebook(cells=[
        new_markdown_cell(
            "# Pooling ablation\n\n"
            "Mean, self-attention, top-k, parameter-free attention and X-Pool, trained the same "
            "way over several seeds. Each strategy is compared with X-Pool on the same test "
            "queries by a **paired bootstrap over per-query ranks**: the difference in R@1 with a "
            "95% interval (each query's hit averaged over the shared seeds, queries resampled). "
            "Then the X-Pool ablations: without the residual FC block, 8 heads instead of 1, and "
            "other numbers of frames, each against the default head the same way.\n\n"
            "The X-Pool, mean and self-attention runs are the same runs as in notebook 01 "
            "(identical configs are trained once)."),
        _params(MODE_DOC + "\nseeds = [0, 1, 2]      # training seeds\n"
                "n_boot = 10000         # bootstrap resamples\n"
                "frames = [4, 12]       # X-Pool ablation: other numbers of frames per video\n"
                "heads = [8]            # X-Pool ablation: other numbers of attention heads"),
        new_code_cell(SETUP),
        new_markdown_cell("## Every pooling strategy against X-Pool"),
        new_code_cell("abl = xs.pooling_ablation(st, seeds, n_boot=n_boot)\n"
                      "display(Markdown(abl.markdown))"),
        new_code_cell("t2v = abl.bootstrap[abl.bootstrap['direction'] == 't2v']\n"
                      "fig = reporting.plot_pooling_ablation(abl.runs, t2v, "
                      "'pooling ablation (text-to-video)')"),
        new_markdown_cell("## X-Pool ablations"),
        new_code_cell("xab = xs.xpool_ablations(st, seeds, frames=frames, heads=heads, "
                      "n_boot=n_boot)\ndisplay(Markdown(xab.markdown))"),
        new_markdown_cell("## The paired bootstrap in full"),
        new_code_cell("display(Markdown(reporting.bootstrap_markdown(abl.bootstrap, n_boot)))"),
    ])


def subregion_notebook():
    return new_notebook(cells=[
        new_markdown_cell(
            "# Sub-region study: R@1 against K\n\n"
            "The paper's motivation is that a caption describes only part of its video. The "
            "synthetic benchmark controls that directly: a video is K scenes, and a caption names "
            "an in-order proper subset of them (for K = 1, the whole video). For each K, every "
            "pooling strategy is trained over several seeds; the plot shows text-to-video R@1 "
            "with a 95% bootstrap interval over test queries.\n\n"
            "The expectation from the paper: at K = 1 the strategies are close; as K grows, "
            "text-conditioned pooling holds up and mean pooling falls. The `mode` parameter says "
            "whether each point was fine-tuned or trained on frozen features; the table states "
            "it."),
        _params(MODE_DOC + "\nseeds = [0, 1, 2]      # training seeds\n"
                "ks = [1, 2, 3, 4]      # scenes per video\n"
                "n_boot = 2000          # bootstrap resamples for the intervals"),
        new_code_cell(SETUP),
        new_code_cell("sub = xs.subregion_study(st, ks, seeds, n_boot=n_boot)\n"
                      "display(Markdown(sub.markdown))"),
        new_code_cell("fig = reporting.plot_subregion(sub.summary, sub.runs, "
                      "'text-to-video R@1 against K')"),
        new_code_cell("sub.summary.round(2)"),
    ])


def figures_notebook():
    return new_notebook(cells=[
        new_markdown_cell(
            "# Figures\n\n"
            "Every figure of the study, drawn from saved run records and tables only (nothing is "
            "trained here, so `make figures` reruns this in seconds):\n\n"
            "- `attention_weights.png`: a test query, its video's frames and X-Pool's attention "
            "weight per frame (frames of the scenes the query names are outlined);\n"
            "- `top5_retrieval.png`: the top-5 videos for that query, the ground truth outlined;\n"
            "- `training_curves.png`: loss and evaluation R@1 during training;\n"
            "- `pooling_ablation.png` and `subregion_r1_vs_k.png`: the plots of notebooks 05 "
            "and 06.\n\n"
            "The query is chosen by a fixed rule (`xpool.study.pick_query`): the first test "
            "caption that names only part of its video and whose video X-Pool ranks first."),
        _base_params("seed = None            # seed of the runs drawn (None: the first seed in "
                     "the tables)"),
        new_code_cell("from IPython.display import Image, Markdown, display\n\n"
                      "from xpool import study as xs\n"
                      "from xpool.paths import shown\n\n"
                      "out = xs.results_folder(profile, output_dir)\n"
                      "paths = xs.render_figures(out, data_root=data_root, seed=seed)"),
        new_code_cell("for name, path in paths.items():\n"
                      "    display(Markdown(f'**{name}** (`{shown(path)}`)'))\n"
                      "    display(Image(filename=str(path)))"),
        new_code_cell("mass = out / 'tables' / 'attention_mass.md'\n"
                      "if mass.is_file():\n"
                      "    display(Markdown(mass.read_text()))"),
    ])


def explore_notebook():
    return new_notebook(cells=[
        new_markdown_cell(
            "# Explore\n\n"
            "Pick a test caption (or type any text) and see the top-5 videos as frame strips and "
            "X-Pool's attention over the frames. It uses the X-Pool run of the pooling ablation "
            "(notebook 05) and its saved test embeddings, so it needs no training; typed free "
            "text also needs the run's text encoder (the local checkpoint, or in frozen mode the "
            "cached backbone).\n\n"
            "Run all cells in JupyterLab for the interactive controls (type a query and press "
            "Enter, or pick a test caption); headless runs (papermill) render the default query "
            "as static figures. On the synthetic benchmark the tiny CLIP knows only the words of "
            "its captions (shapes, colours, sizes, motions, backgrounds); a query outside them "
            "says so instead of returning a meaningless top-5.\n\n"
            "With `index` set to a folder made by `xpool index DIR` it searches your own videos "
            "instead: the top-5 frame strips and the best match's frame weights for `query`."),
        _base_params("seed = None            # seed of the run to explore (None: the first)\n"
                     "pooling = \"xpool\"      # which pooling strategy's run\n"
                     "query = None           # default query; None: the figures notebook's choice\n"
                     "index = None           # a folder made by `xpool index DIR`: search your "
                     "own videos"),
        new_code_cell("import matplotlib.pyplot as plt\n"
                      "from IPython.display import display\n\n"
                      "from xpool import search as xsearch\n"
                      "from xpool import study as xs\n\n"
                      "if index:\n"
                      "    ex = xsearch.IndexExplorer(index)\n"
                      "    query = query or ex.default_query\n"
                      "    print(f'{len(ex.index.paths)} indexed videos in {index}; query: {query!r}')\n"
                      "else:\n"
                      "    out = xs.results_folder(profile, output_dir)\n"
                      "    ex = xs.explorer_for(out, pooling, seed=seed, data_root=data_root)\n"
                      "    query = query or ex.captions[xs.pick_query(ex.out)]\n"
                      "    print(f'{len(ex.captions)} test captions; query: {query!r}')"),
        new_code_cell("for fig in ex.show(query):\n"
                      "    display(fig)\n"
                      "    plt.close(fig)"),
        new_markdown_cell("## Interactive"),
        new_code_cell("xsearch.index_widget(ex) if index else xs.explorer_widget(ex, query=query)"),
    ])


def authors_notebook():
    return new_notebook(cells=[
        new_markdown_cell(
            "# The authors' released checkpoints\n\n"
            "The X-Pool authors released one trained model per dataset (`model_best.pth`; their "
            "README's *Evaluation* table links them: MSR-VTT 9k, t2v R@1 46.9; MSR-VTT 7k, 43.9; "
            "MSVD, 47.2; LSMDC, 25.2). This notebook evaluates every checkpoint whose file and "
            "corpus are present with that dataset's `paper-*` profile: text-to-video and "
            "video-to-text, dual-softmax in separate columns, and the paper's numbers and the "
            "differences beside ours. Each evaluation leaves a run record under "
            "`results/<paper profile>/authors/` and a table under `tables/`. The same works on "
            "the command line: `xpool eval paper-msrvtt9k --checkpoint PATH`.\n\n"
            "Without any checkpoint it stops with a message naming the missing files. Under the "
            "`smoke` profile it evaluates a random model converted to the authors' format "
            "instead (the table's title says so; its numbers mean nothing)."),
        _base_params("checkpoints = {        # dataset -> the authors' model_best.pth\n"
                "    \"msrvtt9k\": \"checkpoints/msrvtt9k/model_best.pth\",\n"
                "    \"msrvtt7k\": \"checkpoints/msrvtt7k/model_best.pth\",\n"
                "    \"msvd\": \"checkpoints/msvd/model_best.pth\",\n"
                "    \"lsmdc\": \"checkpoints/lsmdc/model_best.pth\",\n"
                "}\n"
                "roots = {              # dataset -> corpus root (None: the profile's data/<corpus>)\n"
                "    \"msrvtt9k\": data_root, \"msrvtt7k\": data_root, \"msvd\": None, "
                "\"lsmdc\": None,\n"
                "}"),
        new_code_cell("from IPython.display import Markdown, display\n\n"
                      "from xpool.authors import authors_study\n\n"
                      "res = authors_study(profile, checkpoints, roots, output_dir=output_dir)\n"
                      "display(Markdown(res.markdown))"),
        new_markdown_cell("Where the records and tables are:"),
        new_code_cell("for key, ev in res.evaluations.items():\n"
                      "    print(key, ev.record_dir, ev.table_path)"),
    ])


def protocol_notebook():
    return new_notebook(cells=[
        new_markdown_cell(
            "# Which protocol? Checkpoint selection measured side by side\n\n"
            "The authors chose their checkpoint on the test split. This notebook measures how "
            "much that choice adds, for every pooling strategy and several seeds, by reporting "
            "the same runs under four rules:\n\n"
            "- **(a)** test split, best single evaluation;\n"
            "- **(b)** test split, best mean R@1 over the last `window` evaluations (the "
            "authors' rule; the checkpoint at the end of the best window, its own numbers);\n"
            "- **(c)** a validation split held out from the training videos chooses, the test "
            "split is evaluated once (separate runs, on fewer training videos);\n"
            "- **(d)** the last checkpoint, no selection.\n\n"
            "(a), (b) and (d) are three readings of one run's evaluation log, so every run "
            "evaluates `evals_per_epoch` times per epoch. Each rule is compared with (c), and (a) "
            "and (b) with (d), by a paired bootstrap over the same test queries and seeds. In frozen mode the "
            "parameter-free heads are deterministic: the table counts how many seeds gave "
            "distinct outcomes.\n\n"
            "The same notebook runs unchanged under `paper-*` and `frozen-*` profiles (there "
            "the runs with the profile's own evaluation schedule are shared with notebooks 01 "
            "and 05)."),
        _params(MODE_DOC + "\nseeds = [0, 1, 2, 3, 4]   # training seeds (at least 5 in the embedded "
                "study)\n"
                "window = 5             # rule (b): evaluations averaged (the authors' "
                "eval_window_size)\n"
                "evals_per_epoch = 5    # evaluations per epoch of every run; None: the profile's\n"
                "val_videos = 100       # rule (c): training videos held out where the corpus has "
                "no validation split; None: the profile's\n"
                "n_boot = 10000         # bootstrap resamples"),
        new_code_cell(SETUP + "\n\nfrom xpool import protocol as xp"),
        new_markdown_cell("## Every strategy under every rule"),
        new_code_cell("res = xp.protocol_study(st, seeds, window=window, "
                      "evals_per_epoch=evals_per_epoch, val_videos=val_videos, n_boot=n_boot)\n"
                      "display(Markdown(res.markdown))"),
        new_code_cell("display(Image(filename=str(res.figure_path)))"),
        new_markdown_cell("Paired differences (R@1 and R@5, both directions): every rule "
                          "against (c), and (a) and (b) against (d), the last checkpoint of the "
                          "same runs, which is what choosing on the test split adds; then every "
                          "run under every rule:"),
        new_code_cell("display(Markdown(xp.paired_markdown(res.paired)))"),
        new_code_cell("res.runs.round(2)"),
    ])


def main() -> None:
    notebooks = {name: dataset_notebook(*spec) for name, spec in DATASETS.items()}
    notebooks["05_pooling_ablation"] = ablation_notebook()
    notebooks["06_subregion_study"] = subregion_notebook()
    notebooks["07_figures"] = figures_notebook()
    notebooks["08_explore"] = explore_notebook()
    notebooks["09_authors_checkpoints"] = authors_notebook()
    notebooks["10_protocol"] = protocol_notebook()
    for name, nb in notebooks.items():
        nb.metadata["kernelspec"] = {"name": "xpool", "display_name": "Python (xpool)",
                                     "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        # Stable cell ids (nbformat draws random ones), so regenerating changes no byte.
        for i, cell in enumerate(nb.cells):
            cell.id = f"cell-{i}"
        nbformat.validate(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")
        print(f"wrote notebooks/{name}.ipynb")


if __name__ == "__main__":
    main()
