"""The report as a person sees it: rendered by a real headless Chromium (issue 18).

Skipped where no Chromium is installed (``apt-get install chromium`` brings one). The page
gets a script that, once everything has loaded, writes each image's decoded size and the
page's width into the DOM, which Chromium then prints (``--dump-dom``); a screenshot shows
that the page is drawn at all.
"""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from analysis.figures import FIGURES
from analysis.load import load_frames, load_runs
from analysis.report import write_report
from imp.base.results import run_info

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(name)), None)
WIDTH = 1280  # the window: the report must fit it without scrolling sideways
PROBE = """<script>window.addEventListener('load', () => {
  const images = Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);
  document.body.dataset.probe = JSON.stringify({images: images, width: document.documentElement.scrollWidth});
});</script>"""

pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install chromium)")


def chromium(*args: str) -> str:
    result = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={WIDTH},2000",
                             "--virtual-time-budget=10000", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_report_renders_with_every_image_in_chromium(results, subset_runs, tmp_path):
    out, ids = results
    measured = ids[:2] + subset_runs
    page = write_report(load_frames(measured, out), [run_info(run) for run in load_runs(measured, out)],
                        tmp_path / "report.html")
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))

    dom = chromium("--dump-dom", probed.as_uri())
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, "the page never finished loading"
    probe = json.loads(found.group(1).replace("&quot;", '"'))
    images = {alt: (complete, width, height) for alt, complete, width, height in probe["images"]}
    assert sorted(images) == sorted(FIGURES)  # every figure is on the page ...
    for name, (complete, width, height) in images.items():  # ... and decodes to a real picture
        assert complete and width >= 200 and height >= 150, (name, width, height)
    assert probe["width"] <= WIDTH  # tables scroll inside the page; the page does not

    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2000, WIDTH)
    assert pixels.std() > 10  # text, tables and figures, not a blank page
