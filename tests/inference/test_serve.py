"""``mvmlm serve``: the viewer's content (four views as hung, bad files with their reasons) and the page itself in a
real browser: Debian's headless Chromium driven by selenium uploads a synthetic exam and sees the four views, the
probabilities and a heatmap that the checkbox hides.

The browser test saves its screenshot under its tmp dir; with ``MVMLM_WRITE_DOCS=1`` it also writes the README's
docs/viewer.png, of the bundle in ``MVMLM_VIEWER_BUNDLE`` when set (the README's: ``python benchmarks/explain.py
--keep DIR``, a tiny trained mass classifier), else of a random-init one. It is skipped, with the reason, where
chromium, chromedriver, selenium or gradio is missing."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ..conftest import REPO, free_port

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SIZE = {"height": 256, "width": 160}  # the bundle's preprocessing; the synthetic exams are written at this size


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    """A random-init fine-tuned breast classifier (timm test_resnet, head ``mass``) saved as a bundle."""
    import torch

    from downstream.common.config import EncoderConfig
    from downstream.common.embed import build_backbone
    from downstream.common.tasks import get_tasks
    from downstream.finetune.model import BreastClassifier, save_finetuned
    from mvmlm.config import config_to_dict
    from mvmlm.data.preprocess import PreprocessParams

    torch.manual_seed(0)
    encoder = EncoderConfig(source="timm", name="timm:test_resnet", init="random")
    (task,) = get_tasks(["mass"])
    model = BreastClassifier(build_backbone(encoder), task.num_classes).eval()
    directory = tmp_path_factory.mktemp("serve") / "bundle"
    return save_finetuned(directory, model, encoder, task, "mean", config_to_dict(PreprocessParams(**SIZE)))


@pytest.fixture(scope="module")
def exam(tmp_path_factory) -> list[str]:
    """The four DICOM files of one synthetic exam and a file that is not DICOM."""
    from mvmlm.inference.viewer import example_exams

    folder = tmp_path_factory.mktemp("exam")
    (files,) = example_exams(folder, count=1, seed=1, size=(SIZE["height"], SIZE["width"])).values()
    (folder / "notes.dcm").write_text("not an image")
    return [*files, str(folder / "notes.dcm")]


def test_the_four_views_are_hung_as_a_radiologist_reads_them(tiny_bundle, exam):
    import mvmlm
    from mvmlm.inference.viewer import analyse_exam

    result = analyse_exam(mvmlm.load_model(tiny_bundle), exam, device="cpu")
    assert [p.name for p in result.panels] == ["R-CC", "L-CC", "R-MLO", "L-MLO"]
    right = result.panels[0]
    assert right.image is not None and right.heatmap is not None and "mass" in right.caption
    np.testing.assert_array_equal(right.picture(heatmap=False)[:, ::-1, 0], np.round(right.image * 255))  # mirrored
    left = result.panels[1].picture(heatmap=False)[..., 0]
    assert left[:, : left.shape[1] // 4].mean() > left[:, -left.shape[1] // 4 :].mean()  # chest wall (breast) left
    assert list(result.probabilities.columns) == ["head", "class", "R", "L"]
    assert result.probabilities["R"].sum() == pytest.approx(1.0, abs=2e-3)
    assert result.skipped.to_dict("records") == [{"file": "notes.dcm", "reason": result.skipped["reason"].iloc[0]}]
    assert "DICOM" in result.skipped["reason"].iloc[0]


def test_a_four_view_bundle_shows_each_views_attention_and_both_sides(exam):
    import torch

    from downstream.multiview.model import ModelConfig, MultiViewClassifier
    from downstream.multiview.train import MultiviewBundle
    from mvmlm.config import config_to_dict
    from mvmlm.data.preprocess import PreprocessParams
    from mvmlm.inference.viewer import analyse_exam

    torch.manual_seed(0)
    module = MultiViewClassifier(ModelConfig(backbone="timm:test_resnet", backbone_kwargs={"in_chans": 1}), {"l": 2})
    config = {
        "heads": {"l": ["benign", "malignant"]},
        "preprocessing": config_to_dict(PreprocessParams(**SIZE)),
        "model": {"data": {"image_size": [128, 80]}},
    }
    result = analyse_exam(MultiviewBundle(module.eval(), config), exam, device="cpu")
    weights = [float(p.caption.rsplit("attention ", 1)[1]) for p in result.panels]
    assert sum(weights) == pytest.approx(1.0, abs=0.02) and all(p.image.shape == (128, 80) for p in result.panels)
    assert result.probabilities[["R", "L"]].notna().all().all()
    assert result.probabilities["class"].tolist() == ["benign", "malignant"]


def test_a_second_exam_in_the_upload_is_listed_not_mixed_in(tiny_bundle, exam, tmp_path):
    import mvmlm
    from mvmlm.inference.viewer import analyse_exam, example_exams

    (other,) = example_exams(tmp_path, count=1, seed=2, size=(SIZE["height"], SIZE["width"])).values()
    result = analyse_exam(mvmlm.load_model(tiny_bundle), exam[:4] + other[:1], device="cpu")
    assert all(p.image is not None for p in result.panels)
    assert "the viewer shows one exam at a time" in " ".join(result.skipped["reason"])


def test_an_mvclip_bundle_shows_zero_shot_scores_class_maps_and_the_nearest_reports(text_image_set, exam):
    import torch

    from mvmlm.config import config_to_dict
    from mvmlm.data.preprocess import PreprocessParams
    from mvmlm.inference.viewer import ReportIndex, analyse_exam
    from mvmlm.models.mvclip import MVCLIP, ImageTowerConfig, MVCLIPBundle, MVCLIPConfig, TextTowerConfig, TokenConfig
    from pretrain.data import read_reports

    data = text_image_set(16)
    config = MVCLIPConfig(
        image=ImageTowerConfig(encoder="timm:test_resnet", encoder_kwargs={"in_chans": 1}, image_size=[64, 48]),
        text=TextTowerConfig(model=str(data.text_model), revision=None, max_length=24),
        tokens=TokenConfig(num_tokens=8, width=32, depth=1, heads=4),
        embed_dim=16,
    )
    torch.manual_seed(0)
    module = MVCLIP(config, load_pretrained=False).eval()
    preprocessing = config_to_dict(PreprocessParams(height=64, width=48))
    bundle = MVCLIPBundle(module, {"heads": {}, "preprocessing": preprocessing})
    result = analyse_exam(bundle, exam, reports=ReportIndex(bundle, data.corpus), device="cpu")
    scores = result.probabilities.set_index(["head", "class"])
    assert ("mass", "mass") in scores.index and ("density", "D") in scores.index
    np.testing.assert_allclose(scores.groupby("head")[["R", "L"]].sum(), 1.0, atol=3e-3)
    assert all(p.heatmap is not None and "prompt similarity" in p.caption for p in result.panels)
    corpus = {text for variants in read_reports(data.corpus).values() for text in variants}
    assert set(result.reports) == {"L", "R"} and all(len(found) == 3 for found in result.reports.values())
    assert all(text in corpus for found in result.reports.values() for _, text in found)
    similarities = [score for score, _ in result.reports["R"]]
    assert similarities == sorted(similarities, reverse=True)


def test_serve_without_gradio_names_the_extra(monkeypatch):
    from mvmlm.inference.serve import ServeError, require_gradio

    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(ServeError, match=r"pip install 'mvmlm\[serve\]'"):
        require_gradio()


# ---------------------------------------------------------------------------------------------- the real browser

_MISSING = [
    name
    for name, found in {
        "chromium (apt install chromium)": CHROMIUM,
        "chromedriver (apt install chromium-driver)": CHROMEDRIVER,
        "selenium (pip install 'mvmlm[dev]')": importlib.util.find_spec("selenium"),
        "gradio (pip install 'mvmlm[serve]')": importlib.util.find_spec("gradio"),
    }.items()
    if not found
]


@pytest.fixture
def server(tiny_bundle, tmp_path):
    """``mvmlm serve`` on a free loopback port; its URL once the page answers."""
    port = free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    bundle = os.environ.get("MVMLM_VIEWER_BUNDLE") or str(tiny_bundle)  # e.g. benchmarks/explain.py --keep DIR
    argv = [sys.executable, "-m", "mvmlm", "serve", "--model", bundle, "--port", str(port), "examples=1"]
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 45
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mvmlm serve did not answer on {url}:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _shown(driver, slot: str) -> np.ndarray:
    """The RGB pixels the page shows for a view (its image fetched from the server)."""
    from PIL import Image

    source = driver.find_element("css selector", f"#view-{slot} img").get_attribute("src")
    with urllib.request.urlopen(source, timeout=10) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB")).astype(int)


def _colour(pixels: np.ndarray) -> float:
    """The fraction of pixels that are not gray."""
    return float((np.ptp(pixels, axis=-1) > 8).mean())


@pytest.mark.skipif(bool(_MISSING), reason=f"the browser test needs {', '.join(_MISSING)}")
def test_the_viewer_page_shows_an_uploaded_exam_with_heatmaps_in_chromium(server, browser, exam, tmp_path):
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    wait = WebDriverWait(browser, 40)
    upload = wait.until(ec.presence_of_element_located(("css selector", "#upload input[type=file]")))
    upload.send_keys("\n".join(exam))
    for slot in ("R-CC", "L-CC", "R-MLO", "L-MLO"):
        wait.until(ec.visibility_of_element_located(("css selector", f"#view-{slot} img")))
    wait.until(ec.text_to_be_present_in_element(("css selector", "#probabilities"), "no mass"))
    wait.until(ec.text_to_be_present_in_element(("css selector", "#skipped"), "notes.dcm"))
    time.sleep(0.5)  # let the images paint for the screenshot
    browser.save_screenshot(str(tmp_path / "viewer.png"))
    if os.environ.get("MVMLM_WRITE_DOCS") == "1":
        shutil.copyfile(tmp_path / "viewer.png", REPO / "docs" / "viewer.png")

    table = browser.find_element("css selector", "#probabilities table").text
    assert table.splitlines()[0].split() == ["head", "class", "R", "L"] and "mass" in table
    assert "not a DICOM file" in browser.find_element("css selector", "#skipped").text
    labels = browser.find_element("css selector", "#views").text
    assert labels.index("R-CC") < labels.index("L-CC") < labels.index("R-MLO") < labels.index("L-MLO")
    assert _colour(_shown(browser, "L-MLO")) > 0.5  # the heatmap is drawn over the view

    before = browser.find_element("css selector", "#view-L-MLO img").get_attribute("src")
    browser.find_element("css selector", "#show-heatmaps input").click()
    wait.until(lambda d: d.find_element("css selector", "#view-L-MLO img").get_attribute("src") != before)
    assert _colour(_shown(browser, "L-MLO")) == 0.0  # the plain gray view
