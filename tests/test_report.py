"""The report answers the question (issue 14): `snakemake --report report.html` of a small demo run,
opened in a real browser (headless Chromium, driven over the DevTools protocol), shows the results
table with the run's numbers on its first page, its figures load, and the interactive brain viewer
draws the r map; the evaluation folder is a BIDS derivatives dataset.

Chromium is Debian's ``chromium`` package (``apt-get install -y chromium``). Without it the browser
tests skip and say so; CI sets ``GIBLET_REQUIRE_BROWSER=1``, which turns that skip into a failure.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from giblet import rules
from giblet.config import load_config

from tests.conftest import DEMO_RUN

BIDS_MAP = "space-MNI152NLin2009aAsym_desc-modelr_stat.nii.gz"


def chromium() -> str:
    """The browser, or a skip (a failure when GIBLET_REQUIRE_BROWSER=1, as in CI)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "no chromium on PATH: apt-get install -y chromium (Debian's package) to run the browser tests"
    if os.environ.get("GIBLET_REQUIRE_BROWSER") == "1":
        pytest.fail(f"GIBLET_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
    JSON messages separated by NUL bytes, commands on the child's fd 3, replies on its fd 4)."""

    def __init__(self, executable: str, profile: Path, width: int = 1400, height: int = 1100):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds():  # the child's fds 3 and 4, whatever numbers the pipes got here (dup2 makes them inheritable)
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "--no-first-run", "about:blank"],
            close_fds=False, preexec_fn=fds, stdout=subprocess.DEVNULL,  # close_fds would close 3 and 4
            stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer, self._id, self.events = b"", 0, []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=True)

    def _read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TimeoutError("no answer from chromium")
            import select

            ready, _, _ = select.select([self._from_child], [], [], 0.5)
            if ready:
                self._buffer += os.read(self._from_child, 1 << 20)
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def open(self, url: str, timeout: float = 60) -> None:
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=True)
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not load")
            self.events.append(self._read(timeout))

    def js(self, expression: str, context: int | None = None):
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        if context is not None:
            params["contextId"] = context
        result = self.call("Runtime.evaluate", params, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30, context: int | None = None):
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression, context)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.25)

    def frame_context(self, url_prefix: str) -> int:
        """An execution context inside the child frame whose URL starts with ``url_prefix``."""
        def frames(tree):
            yield tree["frame"]
            for child in tree.get("childFrames", []):
                yield from frames(child)

        tree = self.call("Page.getFrameTree", session=True)["frameTree"]
        frame = next(f for f in frames(tree) if f.get("url", "").startswith(url_prefix))
        return self.call("Page.createIsolatedWorld", {"frameId": frame["id"]}, session=True)["executionContextId"]

    def screenshot(self) -> np.ndarray:
        from PIL import Image

        data = self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)


@pytest.fixture(scope="module")
def reported(finished_demo) -> dict:
    """The small demo run through Snakemake (tests/conftest.py, shared with test_workflow) and its report."""
    workdir = finished_demo["dir"]
    config = load_config(workdir / "config" / "config.yaml", DEMO_RUN)
    evaluation = workdir / "results" / "evaluate"
    return {"dir": workdir, "report": workdir / "report.html", "evaluate": evaluation,
            "metrics": json.loads((evaluation / "metrics" / "metrics.json").read_text()),
            "ridge": json.loads((evaluation / "ridge.json").read_text()),
            "outputs": {k: workdir / v for k, v in rules.outputs("report_results", config).items()}}


def f3(value: float) -> str:
    return f"{value:.3f}"


def expected_numbers(metrics: dict, ridge: dict) -> dict[str, str]:
    """The numbers the results table must show, straight from metrics.json and ridge.json."""
    fmri, base, oracle = metrics["fmri"], ridge["fmri"], metrics["oracle"]["fmri"]
    numbers = {
        "model r (reliable voxels)": f3(fmri["r_mean_reliable"]),
        "ridge r (reliable voxels)": f3(base["r_mean_reliable"]),
        "oracle r (reliable voxels)": f3(oracle["r_mean_reliable"]),
        "noise ceiling (reliable voxels)": f3(fmri["fraction_of_ceiling"]["mean_ceiling_reliable"]),
        "model fraction of ceiling": f3(fmri["fraction_of_ceiling"]["ratio_of_means"]),
        "ridge fraction of ceiling": f3(base["fraction_of_ceiling"]["ratio_of_means"]),
        "oracle fraction of ceiling": f3(oracle["fraction_of_ceiling"]["ratio_of_means"]),
        "model identification top-1": f3(fmri["identification"]["top1"]),
        "identification chance": f3(fmri["identification"]["chance_top1"]),
    }
    for modality, scores in metrics["decoding_identification"].items():
        numbers[f"model decoding {modality}"] = f3(scores["top1"])
        numbers[f"ridge decoding {modality}"] = f3(ridge["decoding_identification"][modality]["top1"])
    return numbers


def test_the_evaluation_folder_is_a_bids_derivatives_dataset_with_tables(reported):
    evaluation, out = reported["evaluate"], reported["outputs"]
    description = json.loads((evaluation / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    assert description["GeneratedBy"][0]["Name"] == "giblet" and description["GeneratedBy"][0]["Version"]
    r_map = evaluation / "metrics" / BIDS_MAP
    assert reported["metrics"]["r_map"]["nifti"] == BIDS_MAP and not (evaluation / "metrics" / "r_map.nii.gz").exists()
    image = nib.load(r_map)
    r = np.asarray(image.dataobj)
    assert image.ndim == 3 and np.isfinite(r).all() and np.abs(r).max() <= 1 and np.count_nonzero(r) > 1000
    # The results table as CSV: every number of the headline, and one decoding row per modality.
    summary = list(csv.reader(io.StringIO(out["summary"].read_text())))
    assert summary[0] == ["measure", "model", "ridge baseline", "oracle", "noise ceiling", "chance"]
    cells = {cell for row in summary for cell in row}
    numbers = expected_numbers(reported["metrics"], reported["ridge"])
    assert set(numbers.values()) <= cells, {k: v for k, v in numbers.items() if v not in cells}
    assert {row[0].split(":")[0] for row in summary if row[0].startswith("decoding")} == {
        f"decoding {modality} from the brain" for modality in ("frames", "audio", "text")}
    # Every number of metrics.json and ridge.json as a table, also in the HTML page.
    flat = dict(csv.reader(io.StringIO(out["metrics_csv"].read_text())))
    assert flat["fmri.r_mean_reliable"] == f"{reported['metrics']['fmri']['r_mean_reliable']:.4f}"
    assert dict(csv.reader(io.StringIO(out["ridge_csv"].read_text())))["fmri.r_mean"] == \
        f"{reported['ridge']['fmri']['r_mean']:.4f}"
    page = out["html"].read_text()
    assert all(v in page for v in numbers.values()) and "<table" in page
    assert out["slices"].read_bytes()[:4] == b"\x89PNG"


def not_blank(pixels: np.ndarray) -> dict:
    """How much of a screenshot is more than a plain page: distinct colours and strongly coloured pixels."""
    flat = pixels.reshape(-1, 3).astype(int)
    colours = len(np.unique(flat[:: max(1, len(flat) // 200_000)], axis=0))
    saturated = ((flat.max(axis=1) - flat.min(axis=1)) > 80).mean()
    dark = (flat.max(axis=1) < 40).mean()
    return {"colours": colours, "saturated": float(saturated), "dark": float(dark)}


def test_the_report_opens_on_the_results_table_and_its_figures_load(reported, tmp_path):
    browser = Browser(chromium(), tmp_path / "profile")
    try:
        browser.open(reported["report"].as_uri())
        text = browser.wait_for("document.body.innerText.includes('What was run') && document.body.innerText")
        assert text, "the report's first page never showed the results table"
        assert "how well does the model predict the brain?" in text.lower()
        numbers = expected_numbers(reported["metrics"], reported["ridge"])
        missing = {k: v for k, v in numbers.items() if v not in text}
        assert not missing, f"the first page lacks {missing}"
        # The table is a table, with the columns the question asks for.
        headers = browser.js("[...document.querySelectorAll('table th')].map(h => h.innerText.trim())")
        assert {"model", "ridge baseline", "oracle", "noise ceiling", "chance"} <= set(headers), headers
        # Its figures (the glass brain, embedded in the first page) load: decoded, not broken.
        images = browser.wait_for("""(() => { const im = [...document.querySelectorAll('img')]
            .filter(i => i.src.startsWith('data:image/png'));
            return im.length && im.every(i => i.complete) &&
                   im.map(i => [i.naturalWidth, i.naturalHeight]); })()""")
        assert images and all(w > 200 and h > 100 for w, h in images), images
        # And they are drawn: scrolled into view, the page shows the map's reds and blues.
        browser.js("document.querySelector('.giblet-figures img').scrollIntoView(); true")
        time.sleep(0.5)
        page = not_blank(browser.screenshot())
        assert page["colours"] > 500 and page["saturated"] > 0.01, page
    finally:
        browser.close()


# The fraction of the viewer's canvas (brainsprite draws the slices on it) that is not black; falsy
# until there is a drawn canvas.
CANVAS_LIT = """(() => { const c = document.querySelector('canvas');
    if (!c || !c.width) return 0;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let lit = 0; for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 60) lit++;
    return lit / (d.length / 4); })()"""


def test_the_brain_viewer_draws_the_r_map_standalone_and_inside_the_report(reported, tmp_path):
    browser = Browser(chromium(), tmp_path / "profile")
    try:
        # Standalone (offline: its JavaScript is inline): brainsprite draws the map on a canvas.
        browser.open(reported["outputs"]["viewer"].as_uri())
        drawn = browser.wait_for(CANVAS_LIT)
        assert drawn and drawn > 0.05, f"the viewer's canvas is blank ({drawn})"
        shot = not_blank(browser.screenshot())
        assert shot["colours"] > 200 and shot["saturated"] > 0.001, shot
        # Inside the report: the result item opens in the report's frame, as its View button does.
        browser.open(reported["report"].as_uri())
        key = browser.wait_for("Object.keys(results).find(k => k.endsWith('r_map_viewer.html'))")
        assert key, "the viewer is not a report item"
        browser.js(f"app.setView({{content: 'html', contentPath: results[{json.dumps(key)}].data_uri, "
                   f"resultPath: {json.dumps(key)}}}); true")
        assert browser.wait_for("!!document.querySelector('iframe[src^=\"data:text/html\"]')")
        time.sleep(1)
        context = browser.frame_context("data:text/html")
        inner = browser.wait_for(CANVAS_LIT, context=context)
        assert inner and inner > 0.05, f"the viewer did not draw inside the report ({inner})"
        framed = not_blank(browser.screenshot())
        assert framed["dark"] > 0.05 and framed["saturated"] > 0.001, framed
    finally:
        browser.close()
