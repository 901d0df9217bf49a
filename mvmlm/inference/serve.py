"""``mvmlm serve --model M [--host 127.0.0.1 --port 7860] [--share] [--corpus DIR]``: a web viewer (Gradio).

A user uploads the DICOM files of one exam (or picks a synthetic example exam, written at start into a temporary
folder) and sees the four views in the radiologist's layout (R-CC, L-CC / R-MLO, L-MLO, chest walls facing each
other), each with a heatmap that one checkbox shows or hides, the probabilities per head and side (zero-shot scores
for MV-CLIP bundles), for MV-CLIP bundles with ``--corpus`` the nearest reports per breast, and every file that
could not be used with its reason. What it shows is :func:`mvmlm.inference.viewer.analyse_exam`; this module is
the page. Binds to 127.0.0.1 and shares nothing unless told. Needs the optional extra ``serve`` (gradio).
"""

from __future__ import annotations

import html
import importlib
import logging
import os
import sys
import tempfile
from typing import Any

import pandas as pd

from mvmlm.bundle import Bundle, load_model
from mvmlm.errors import InputError
from mvmlm.inference.viewer import LAYOUT, ExamResult, ReportIndex, analyse_exam, example_exams
from mvmlm.inference.zeroshot import supports_zero_shot

__all__ = ["ServeError", "require_gradio", "build_app", "main"]

log = logging.getLogger(__name__)

_NOTICE = "Research use only: not a medical device, not for diagnosis or any clinical decision."
_CSS = (  # the chest walls of the two sides meet at the middle of the page
    "#views button:has(.image-frame), #views .image-frame, #views img {width: 100%; height: 100%}"
    " #views img {object-fit: contain}"
    " #view-R-CC img, #view-R-MLO img {object-position: right center}"
    " #view-L-CC img, #view-L-MLO img {object-position: left center}"
)


class ServeError(ValueError, InputError):
    """The viewer cannot start (gradio missing, a bad option)."""


def require_gradio() -> Any:
    """The gradio module, or a one-line error naming the extra."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from a clinical workstation
    try:
        return importlib.import_module("gradio")
    except ImportError:
        raise ServeError("mvmlm serve needs gradio: pip install 'mvmlm[serve]'") from None


def _table(frame: pd.DataFrame, empty: str) -> str:
    if frame.empty:
        return f"<p>{html.escape(empty)}</p>"
    return frame.to_html(index=False, na_rep="", border=0, classes="mvmlm-table")


def _reports(result: ExamResult) -> str:
    parts = []
    for side, found in sorted(result.reports.items(), reverse=True):  # R first, as hung
        items = "".join(f"<li>({score:.2f}) {html.escape(text)}</li>" for score, text in found)
        parts.append(f"<p><b>{side} breast</b></p><ol>{items}</ol>")
    return "".join(parts) or "<p>No report corpus given (--corpus DIR).</p>"


def _status(result: ExamResult) -> str:
    lines = [f"<p>{html.escape(note)}</p>" for note in result.notes]
    lines.append(_table(result.skipped, "Every file was used."))
    return "".join(lines)


def build_app(
    bundle: Bundle,
    examples: dict[str, list[str]],
    *,
    method: str = "gradcam",
    prompt: str = "",
    reports: ReportIndex | None = None,
    device: str = "auto",
) -> Any:
    """The Gradio Blocks of the viewer for ``bundle``; ``examples``: display name -> DICOM paths of an exam."""
    gr = require_gradio()
    zero_shot = supports_zero_shot(bundle)

    def analyse(files: list[str] | None, example: str | None, text: str) -> tuple:
        paths = list(files or []) or examples.get(example or "", [])
        if not paths:
            raise gr.Error("upload the DICOM files of one exam, or pick an example")
        result = analyse_exam(bundle, paths, method=method, prompt=text, reports=reports, device=device)
        return (result, *render(result, True))

    def render(result: ExamResult | None, show: bool) -> tuple:
        if result is None:
            return (gr.skip(),) * (len(LAYOUT) + 3)
        images = [gr.Image(value=p.picture(show), label=p.caption) for p in result.panels]
        probabilities = _table(result.probabilities, "No probabilities.")
        return (*images, probabilities, _reports(result), _status(result))

    with gr.Blocks(title=f"mvmlm viewer: {bundle.card.title}") as app:
        gr.Markdown(f"## {bundle.card.title}\n{bundle.card.predicts}\n\n**{_NOTICE}**")
        with gr.Row():
            upload = gr.File(label="DICOM files of one exam", file_count="multiple", elem_id="upload")
            with gr.Column():
                example = gr.Dropdown(
                    list(examples), value=None, label="or a synthetic example exam", elem_id="example"
                )
                text = gr.Textbox(prompt, label="prompt mapped (MV-CLIP)", visible=zero_shot, elem_id="prompt")
                button = gr.Button("Show", variant="primary", elem_id="analyse")
                show = gr.Checkbox(True, label="heatmaps", elem_id="show-heatmaps")
        panels = []
        with gr.Column(elem_id="views"):
            for row in (LAYOUT[:2], LAYOUT[2:]):
                with gr.Row():
                    for side, view in row:
                        panels.append(
                            gr.Image(
                                label=f"{side}-{view}",
                                type="numpy",
                                format="png",
                                interactive=False,
                                height=360,
                                elem_id=f"view-{side}-{view}",
                            )
                        )
        gr.Markdown("### Zero-shot scores per side" if zero_shot else "### Probabilities per side")
        probabilities = gr.HTML(elem_id="probabilities")
        gr.Markdown("### Nearest reports of the corpus", visible=reports is not None)
        nearest = gr.HTML(elem_id="reports", visible=reports is not None)
        gr.Markdown("### Files not used")
        status = gr.HTML(elem_id="skipped")
        state = gr.State()
        outputs = [*panels, probabilities, nearest, status]
        button.click(analyse, [upload, example, text], [state, *outputs])
        upload.upload(lambda files, words: analyse(files, None, words), [upload, text], [state, *outputs])
        example.input(lambda name, words: analyse(None, name, words), [example, text], [state, *outputs])
        show.change(render, [state, show], outputs)
    return app


def main(argv: list[str] | None = None) -> None:
    """``mvmlm serve``: load the bundle, write the example exams, serve until interrupted."""
    from mvmlm.commands import SERVE

    cfg = SERVE.parse(sys.argv[1:] if argv is None else argv)
    gr = require_gradio()
    bundle = load_model(cfg.model)
    if cfg.corpus and not supports_zero_shot(bundle):
        raise ServeError(
            f"--corpus needs an MV-CLIP bundle (its text tower ranks the reports); {cfg.model} is a {bundle.kind}"
        )
    reports = ReportIndex(bundle, cfg.corpus) if cfg.corpus else None
    with tempfile.TemporaryDirectory(prefix="mvmlm-serve-") as folder:
        examples = example_exams(folder, cfg.examples) if cfg.examples else {}
        app = build_app(bundle, examples, method=cfg.method, prompt=cfg.prompt, reports=reports, device=cfg.device)
        log.info("serve: %s on http://%s:%d (share=%s)", cfg.model, cfg.host, cfg.port, cfg.share)
        app.queue().launch(
            server_name=cfg.host,
            server_port=cfg.port,
            share=cfg.share,
            ssr_mode=False,
            css=_CSS,
            theme=gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"]),  # no web fonts
        )
