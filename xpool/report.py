"""`make report`: the executed notebooks and the result tables of one profile as a static site.

`build_report(profile_dir)` writes `<profile_dir>/report/`:

- `index.html`: the reproduction check (`reproduction_check.md`, or a line saying it has not
  been run), the environment the runs recorded (`runs/*/environment.json`), the main table and
  links to every other page;
- `tables.html`: every `tables/*.md`;
- `summary.html`: the results summary (`results/README.md`) when there is one;
- one page per executed notebook in `notebooks/`, with its figures inline.

It is rendered with nbconvert (already installed with Jupyter, so no new dependency) using its
`basic` template, which emits only the notebook body: nbconvert's full `lab` and `classic`
templates load require.js, MathJax, mermaid and the widget manager from CDNs, and inline about a
megabyte of CSS into every page. The pages here wrap that body in one small stylesheet and a
navigation bar; figures are the PNGs the notebooks already embed (data URIs), so the site opens
offline straight from the file system and can be copied anywhere as one folder. Nothing in it
depends on when it was built, so rebuilding from the same records gives the same bytes.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from xpool.config import DEFAULT_PROFILE, load_config
from xpool.errors import XPoolError
from xpool.paths import resolve, shown

REPORT_DIR = "report"
CHECK_FILE = "reproduction_check.md"
# The table the overview page shows first (the study's headline), then the first dataset table.
MAIN_TABLES = ("pooling_ablation", "results_msrvtt9k", "results_msrvtt7k", "results_msvd",
               "results_lsmdc")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ("(interactive controls: open this notebook in JupyterLab with `make lab` to use "
               "them; the static figures above show the default query)")

CSS = """
body { font-family: system-ui, sans-serif; margin: 0; color: #1f2328; line-height: 1.45; }
nav { background: #24292f; padding: .5em 1em; position: sticky; top: 0; z-index: 1; }
nav a { color: #f0f3f6; margin-right: 1.1em; text-decoration: none; font-size: .95em; }
nav a.current { font-weight: bold; text-decoration: underline; }
main { max-width: 1100px; margin: 0 auto; padding: 1em 1.5em 3em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
img { max-width: 100%; height: auto; }
pre { background: #f6f8fa; padding: .6em; overflow-x: auto; font-size: .85em; }
.jp-InputPrompt, .jp-OutputPrompt { display: none; }
.jp-InputArea-editor { border-left: 3px solid #d0d7de; }
.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"] pre { background: #fff5f5; }
details > summary { cursor: pointer; }
.note { color: #57606a; }
"""


def _markdown(text: str) -> str:
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    return markdown2html_mistune(text)


def _page(title: str, body: str, nav: Sequence[tuple[str, str]], current: str) -> str:
    from pygments.formatters import HtmlFormatter

    mark = ' class="current"'
    links = " ".join(f'<a href="{href}"{mark if href == current else ""}>{html.escape(label)}</a>'
                     for label, href in nav)
    style = CSS + HtmlFormatter().get_style_defs(".highlight")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
            f"<nav>{links}</nav>\n<main>\n{body}\n</main>\n</body>\n</html>\n")


def _clean_notebook(nb: Any) -> Any:
    """Widget views cannot work in a static page (their state needs a live kernel or a CDN
    script): replace each with a note saying where the controls work."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for i, out in enumerate(cell.get("outputs", [])):
            if WIDGET_MIME in out.get("data", {}):
                cell.outputs[i] = {"output_type": "display_data", "metadata": {},
                                   "data": {"text/markdown": WIDGET_NOTE}}
    nb.metadata.pop("widgets", None)
    return nb


def notebook_html(path: Path) -> str:
    """The body of one executed notebook as HTML (nbconvert's basic template)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = _clean_notebook(nbformat.read(path, as_version=4))
    # Its own logger at ERROR: nbconvert warns about figures without alt text, noise in the
    # `make reproduce` log (matplotlib output has no alt text to give).
    quiet = logging.getLogger("xpool.report.nbconvert")
    quiet.setLevel(logging.ERROR)
    exporter = HTMLExporter(template_name="basic", exclude_input_prompt=True,
                            exclude_output_prompt=True, log=quiet)
    body, _ = exporter.from_notebook_node(nb)
    return body


def environment_table(runs_dir: Path) -> str:
    """The environment every run recorded, as an HTML table: each key with its distinct values
    and how many runs recorded each (one value per key is what a consistent study shows)."""
    records = sorted(runs_dir.glob("*/environment.json")) if runs_dir.is_dir() else []
    if not records:
        return f'<p class="note">No run records under {html.escape(shown(runs_dir))}.</p>'
    values: dict[str, dict[str, int]] = {}
    for p in records:
        try:
            env = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise XPoolError(f"run record {p} has an unreadable environment.json ({e}): "
                             f"delete that run and rerun make reproduce") from None
        for key, value in env.items():
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            values.setdefault(key, {}).setdefault(text, 0)
            values[key][text] += 1
    rows = []
    for key in sorted(values):
        cells = []
        for text, n in sorted(values[key].items()):
            shown_value = html.escape(text)
            if len(text) > 100:  # CPU flag lists and the like: folded
                shown_value = (f"<details><summary>{html.escape(text[:80])} …</summary>"
                               f"<code>{shown_value}</code></details>")
            cells.append(shown_value + (f" <span class=note>({n} runs)</span>"
                                        if len(values[key]) > 1 else ""))
        rows.append(f"<tr><th>{html.escape(key)}</th><td>{'<br>'.join(cells)}</td></tr>")
    return (f"<p>Recorded by {len(records)} runs in {html.escape(shown(runs_dir))}.</p>\n"
            f"<table>{''.join(rows)}</table>")


def _fix_relative_links(body: str, prefix: str) -> str:
    """Make relative src/href of a page rendered from another folder point at the same files."""
    def fix(m: re.Match[str]) -> str:
        url = m.group(2)
        if re.match(r"^([a-z]+:|#|/)", url):
            return m.group(0)
        return f'{m.group(1)}="{prefix}{url}"'

    return re.sub(r'(src|href)="([^"]*)"', fix, body)


def build_report(profile_dir: str | Path, log: Callable[[str], None] = print) -> Path:
    """Write the static site of one profile's results; returns `report/index.html`."""
    out = resolve(profile_dir)
    nb_dir, tables_dir = out / "notebooks", out / "tables"
    notebooks = sorted(nb_dir.glob("*.ipynb")) if nb_dir.is_dir() else []
    tables = sorted(tables_dir.glob("*.md")) if tables_dir.is_dir() else []
    if not notebooks and not tables:
        raise XPoolError(f"nothing to report in {out}: no executed notebooks in {nb_dir} and no "
                         f"tables in {tables_dir}; run `make reproduce` (or `make figures`) first")
    site = out / REPORT_DIR
    site.mkdir(parents=True, exist_ok=True)
    summary = out.parent / "README.md"
    nav = [("Overview", "index.html"), ("Tables", "tables.html")]
    if summary.is_file():
        nav.append(("Summary", "summary.html"))
    nav += [(p.stem, f"{p.stem}.html") for p in notebooks]
    name = out.name

    pages: dict[str, tuple[str, str]] = {}
    for p in notebooks:
        pages[f"{p.stem}.html"] = (f"{name}: {p.stem}", notebook_html(p))
    pages["tables.html"] = (f"{name}: tables", "<h1>Tables</h1>\n" + "\n".join(
        f'<section id="{t.stem}">{_markdown(t.read_text())}'
        f'<p class="note">{html.escape(shown(t))} (and .csv)</p></section>' for t in tables))
    if summary.is_file():
        # The summary lives in results/; this page is two folders further down.
        pages["summary.html"] = (f"{name}: summary",
                                 _fix_relative_links(_markdown(summary.read_text()), "../../"))

    check = out / CHECK_FILE
    check_html = (_markdown(check.read_text()) if check.is_file() else
                  f'<p class="note">The reproduction check has not been run for this profile '
                  f'(<code>make reproduce PROFILE={html.escape(name)}</code> writes it to '
                  f'{html.escape(shown(check))}).</p>')
    by_stem = {t.stem: t for t in tables}
    main = next((by_stem[s] for s in MAIN_TABLES if s in by_stem), tables[0] if tables else None)
    links = "".join(f'<li><a href="{href}">{html.escape(label)}</a></li>'
                    for label, href in nav[1:])
    index = (f"<h1>xpool results: profile {html.escape(name)}</h1>\n"
             f"<h2>Reproduction check</h2>\n{check_html}\n"
             f"<h2>Environment</h2>\n{environment_table(out / 'runs')}\n"
             + (f'<h2>Main table</h2>\n<section id="main-table">{_markdown(main.read_text())}'
                f"</section>\n" if main else "")
             + f"<h2>Pages</h2>\n<ul>{links}</ul>\n")
    pages["index.html"] = (f"xpool results: {name}", index)
    for filename, (title, body) in pages.items():
        (site / filename).write_text(_page(title, body, nav, filename), encoding="utf-8")
    index_path = site / "index.html"
    log(f"  report   {shown(index_path)} ({len(notebooks)} notebooks, {len(tables)} tables)")
    return index_path


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m xpool.report [PROFILE]` (what `make report` runs)."""
    ap = argparse.ArgumentParser(prog="python -m xpool.report", description=__doc__.split("\n")[0])
    ap.add_argument("profile", nargs="?", default=DEFAULT_PROFILE)
    ap.add_argument("--results-dir", default=None,
                    help="the folder holding <profile>/ (default: the profile's results/)")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.profile)
        out = (Path(args.results_dir) / Path(cfg.profile).name if args.results_dir
               else cfg.profile_dir)
        build_report(out)
    except XPoolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
