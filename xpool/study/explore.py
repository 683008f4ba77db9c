"""Interactive retrieval over a run's test set (notebook 08): the `Explorer` and its ipywidgets
UI."""

from __future__ import annotations

import dataclasses
import html
import re
from pathlib import Path
from typing import Any

import torch

from xpool import reporting
from xpool.engine.evaluate import pretrained_model
from xpool.engine.pretrain import CHECKPOINT, cache_path
from xpool.errors import XPoolError
from xpool.model.build import load_model_state
from xpool.study.collect import RunResult, load_outputs, results_from_table
from xpool.study.figures import attention_figure, top5_figure
from xpool.study.qualitative import CAPTION_GLUE, synthetic_vocabulary, video_frames


class Explorer:
    """Interactive retrieval over a run's test set (notebook 08).

    Test captions are scored from the saved embeddings; free text needs the run's text encoder:
    the fine-tuned checkpoint (`checkpoints/best.pt`, kept locally, not committed) or, in
    frozen-feature mode, the frozen backbone.
    """

    def __init__(self, result: RunResult):
        self.out = load_outputs(result)
        self._model = None

    @property
    def captions(self) -> list[str]:
        return list(self.out.emb.texts)

    def text_encoder_status(self) -> str | None:
        """None when free text can be encoded, else why not."""
        cfg = self.out.config
        if cfg.model.frozen:
            ckpt = cache_path(cfg) / CHECKPOINT
            if cfg.model.pretrained == "synthetic" and not ckpt.is_file():
                return f"the pretrained tiny CLIP is not at {ckpt} (run make reproduce)"
            return None
        if not self.out.result.record.best_checkpoint.is_file():
            return (f"the run's checkpoint {self.out.result.record.best_checkpoint} is not here "
                    f"(checkpoints are not committed; make reproduce recreates it)")
        return None

    def encode(self, text: str) -> Any:
        """A text embedding [D]: the saved one for a test caption, else the run's encoder."""
        if text in self.out.emb.texts:
            return self.out.emb.text_embeds[self.out.emb.texts.index(text)]
        why = self.text_encoder_status()
        if why is not None:
            raise XPoolError(f"cannot encode free text: {why}; pick a test caption instead")
        if self._model is None:
            cfg = self.out.config
            if cfg.model.frozen:
                cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, frozen=False))
                self._model = pretrained_model(cfg)
            else:
                self._model = pretrained_model(cfg)
                load_model_state(self._model, self.out.result.record.best_checkpoint)
            self._model.eval()
        with torch.no_grad():
            tokens = self._model.backbone.tokenize([text])
            return self._model.encode_text(tokens)[0].float()

    def vocabulary(self) -> dict[str, tuple[str, ...]] | None:
        """The words the tiny CLIP learned, by kind (synthetic corpus only; else None)."""
        if self.out.config.data.corpus != "synthetic":
            return None
        return synthetic_vocabulary()

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` outside the synthetic vocabulary (empty for real corpora)."""
        if self.vocabulary() is None:
            return []
        known = {w for words in synthetic_vocabulary().values() for p in words
                 for w in p.split()} | CAPTION_GLUE
        return [w for w in _words(text) if w not in known]

    def vocabulary_note(self, text: str) -> str | None:
        """Why a free-text query may not mean what it says to this model, or None."""
        unknown = self.unknown_words(text)
        if not unknown:
            return None
        kinds = "; ".join(f"{kind}: {', '.join(words)}"
                          for kind, words in synthetic_vocabulary().items())
        return (f"the tiny CLIP of this study only learned captions of synthetic scenes "
                f"(\"a large aqua triangle moving down on stripes\"); it has never seen "
                f"{', '.join(repr(w) for w in unknown)}. Its vocabulary: {kinds}.")

    def show(self, text: str, k: int = 5) -> list[Any]:
        """The figures of `labelled_figures`, without their labels."""
        return [fig for _, fig in self.labelled_figures(text, k)]

    def labelled_figures(self, text: str, k: int = 5) -> list[tuple[str, Any]]:
        """(label, figure) for a query: the top-k frame strips and, for X-Pool, the attention
        over the best video's frames (the ground truth's, for a test caption). A free-text query
        with no word of the synthetic vocabulary raises XPoolError naming the vocabulary,
        instead of a top-k that would look confident and mean nothing."""
        figs: list[tuple[str, Any]] = []
        text = text.strip()
        if not text:
            raise XPoolError("empty query: type a caption or pick a test caption")
        content = [w for w in _words(text) if w not in CAPTION_GLUE]
        if text not in self.out.emb.texts and self.vocabulary() is not None \
                and len(self.unknown_words(text)) >= len(content):
            raise XPoolError(f"no word of this query is known: {self.vocabulary_note(text)}")
        if text in self.out.emb.texts:
            q = self.out.emb.texts.index(text)
            figs.append((f"top-{k} videos", top5_figure(self.out, query=q, k=k)))
            if self.out.config.model.pooling == "xpool":
                vid = self.out.emb.video_ids[int(self.out.emb.video_of_text[q])]
                figs.append((f"attention over the frames of {vid} (ground truth)",
                             attention_figure(self.out, q)))
            return figs
        t = self.encode(text)
        figs.append((f"top-{k} videos", top5_figure(self.out, text_embed=t, text=text, k=k)))
        best = self.out.top_k(t, 1)[0]
        a = self.out.attention(t, best["index"])
        if a is not None:
            frames = video_frames(self.out.config, best["video_id"])
            figs.append((f"attention over the frames of the best match {best['video_id']}",
                         reporting.plot_attention(
                             text, frames, a,
                             title=f"attention over the best match {best['video_id']}")))
        return figs


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def explorer_widget(explorer: Explorer, k: int = 5, query: str | None = None) -> Any:
    """An ipywidgets UI: pick a test caption or type any text and press Enter (or "search"),
    see the top-k videos as frame strips and X-Pool's attention over the frames.

    It opens showing `query` (default: the first caption). The dropdown shows the test caption
    being displayed, or is blank while the output is a typed query; the line above the output
    always names the query that produced it.
    """
    # The notebook-only dependencies, imported where the widget is built.
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import HTML

    captions = explorer.captions[:500]
    query = query or (captions[0] if captions else "")
    # continuous_update=False: the value (and so a search) changes on Enter, not per keystroke.
    box = w.Combobox(options=captions, placeholder="type a query and press Enter, or pick one",
                     ensure_option=False, continuous_update=False,
                     layout=w.Layout(width="80%"), description="query")
    pick = w.Dropdown(options=captions, value=None, description="test caption",
                      layout=w.Layout(width="80%"))
    button = w.Button(description="search", button_style="primary")
    out = w.Output()
    why = explorer.text_encoder_status()
    status = w.HTML("free text: available" if why is None else
                    f"free text: unavailable ({html.escape(why)}); test captions work")
    showing = w.HTML()
    syncing = [False]  # set while one control mirrors the other, so a query runs once

    def run(text: str) -> None:
        text = (text or "").strip()
        syncing[0] = True
        try:
            box.value = text
            pick.value = text if text in captions else None
        finally:
            syncing[0] = False
        showing.value = f"showing: <b>{html.escape(text)}</b>"
        # Outputs are set on the widget's state, not captured with `with out:`: capturing while
        # the cell that builds the widget runs made headless (papermill) runs hang now and then.
        out.outputs = ()
        try:
            note = None if text in captions else explorer.vocabulary_note(text)
            if note:
                out.append_stdout(f"note: {note}\n")
            for label, fig in explorer.labelled_figures(text, k=k):
                out.append_display_data(
                    HTML(f'<div class="xpool-figure-label">{html.escape(label)}</div>'))
                out.append_display_data(fig)
                plt.close(fig)
        except XPoolError as e:
            out.append_stdout(f"error: {e}\n")

    def on_pick(change: dict[str, Any]) -> None:
        if not syncing[0] and change["new"] is not None:
            run(change["new"])

    def on_box(change: dict[str, Any]) -> None:
        if not syncing[0] and change["new"].strip():
            run(change["new"])

    button.on_click(lambda _: run(box.value or pick.value or ""))
    pick.observe(on_pick, names="value")
    box.observe(on_box, names="value")
    if query:
        run(query)
    return w.VBox([pick, w.HBox([box, button]), status, showing, out])


def explorer_for(output_dir: str | Path, pooling: str = "xpool", seed: int | None = None,
                 data_root: str | None = None) -> Explorer:
    """An Explorer over the pooling ablation's run of `pooling` (first seed by default)."""
    abl = [r for r in results_from_table(output_dir, "pooling_ablation")
           if r.config.model.pooling == pooling]
    if not abl:
        raise XPoolError(f"no {pooling} run in the pooling ablation of {output_dir}")
    if seed is not None:
        abl = [r for r in abl if r.config.train.seed == int(seed)]
        if not abl:
            raise XPoolError(f"no {pooling} run with seed {seed} in {output_dir}")
    r = abl[0]
    if data_root is not None:
        r.config = dataclasses.replace(r.config, data=dataclasses.replace(r.config.data,
                                                                          root=data_root))
    return Explorer(r)
