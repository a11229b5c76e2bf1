"""The server's web page in a real headless browser: Debian's chromium and chromium-driver packages, driven by
selenium. Nothing is downloaded: the browser and its driver are the system's (z_task_shell/test.sh installs them
where it can), Selenium Manager is kept offline, and the test skips with the reason where they are missing."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from serving.runtime import load_exported, load_image_tensor
from test_serve import MODEL_NAME, Server
from test_serve import exports, images  # noqa: F401,F811  (module fixtures, shared with tests/test_serve.py)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                                else None)
PAGE_TIMEOUT = 60

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no system chromium + chromedriver (Debian: apt-get install chromium chromium-driver; "
           "z_task_shell/test.sh does it when run as root)")


@pytest.fixture
def browser(tmp_path, monkeypatch):
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -r requirements.txt (selenium)")
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never fetch a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--no-default-browser-check", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "driver.log")),
                              options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    yield driver
    driver.quit()


def test_choosing_an_image_shows_top_classes_as_bars_with_latency(exports, images, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    model = load_exported(exports["torchscript"])
    image = images[len(images) // 2]
    with torch.inference_mode():
        probs = model(load_image_tensor(image, model.preprocessing).unsqueeze(0))[0]
    ranked = sorted(range(len(probs)), key=lambda i: (-float(probs[i]), i))[:5]

    with Server(exports["torchscript"], log_path=tmp_path / "server.log") as server:
        browser.get(server.url + "/")
        assert browser.title == "Image classifier"
        WebDriverWait(browser, PAGE_TIMEOUT).until(ec.text_to_be_present_in_element((By.ID, "model"), "Ready"))
        browser.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(browser, PAGE_TIMEOUT).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".prediction")) == 5)
        rows = browser.find_elements(By.CSS_SELECTOR, ".prediction")
        names = [row.find_element(By.CSS_SELECTOR, ".name").text for row in rows]
        shown = [float(row.find_element(By.CSS_SELECTOR, ".prob").text.rstrip("%")) for row in rows]
        widths = [row.find_element(By.CSS_SELECTOR, ".bar").value_of_css_property("width") for row in rows]
        tracks = [row.find_element(By.CSS_SELECTOR, ".track").value_of_css_property("width") for row in rows]
        latency = browser.find_element(By.ID, "latency").text
        model_line = browser.find_element(By.ID, "model").text
        preview = browser.find_element(By.ID, "preview")
        assert preview.is_displayed() and browser.execute_script("return arguments[0].naturalWidth", preview) > 0
        assert browser.find_element(By.ID, "error").text == ""
    assert names == [model.class_names[i] for i in ranked]  # the top 5 classes, best first, as the model says
    assert shown == pytest.approx([100 * float(probs[i]) for i in ranked], abs=0.051)
    for width, track, percent in zip(widths, tracks, shown):  # each bar is as long as its probability
        assert float(width.removesuffix("px")) == pytest.approx(float(track.removesuffix("px")) * percent / 100,
                                                                abs=1.5)
    assert re.fullmatch(r"Latency: \d+\.\d ms round trip \(server \d+\.\d ms\)", latency), latency
    assert model_line == f"Model: {MODEL_NAME}"


def test_an_undecodable_file_shows_the_servers_error(exports, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with Server(exports["onnx"], log_path=tmp_path / "server.log") as server:
        browser.get(server.url + "/")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        WebDriverWait(browser, PAGE_TIMEOUT).until(lambda d: d.find_element(By.ID, "error").text)
        error = browser.find_element(By.ID, "error").text
        assert not browser.find_elements(By.CSS_SELECTOR, ".prediction")
    assert error.startswith("Error 400: cannot decode image 'broken.png'"), error


def test_a_calibrated_model_answers_unknown_or_a_set_on_the_page(exports, images, browser, tmp_path):
    """The page offers the answer modes only for a calibrated export (main.py --calibrate) and shows the answer."""
    import main as entry
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from utils.calibration import Calibration
    from utils.checkpoint import load_checkpoint, save_checkpoint

    image = images[len(images) // 2]
    plain = load_exported(exports["torchscript"])
    with torch.inference_mode():
        probs = plain(load_image_tensor(image, plain.preprocessing).unsqueeze(0))[0].double()
    ranked = sorted(range(len(probs)), key=lambda i: (-float(probs[i]), i))
    p1, p2, p3 = (float(probs[i]) for i in ranked[:3])
    assert p2 > p3
    # temperature 1 keeps the probabilities; the threshold turns this image away; the set holds the top two classes
    calibration = Calibration(temperature=1.0, threshold=p1 + (1 - p1) / 2, coverage=0.9,
                              qhat=1 - (p2 + p3) / 2, alpha=0.1, images=100)
    ckpt = tmp_path / "calibrated.pth"
    save_checkpoint(load_checkpoint(exports["checkpoint"]).replace(calibration=calibration.to_dict()), ckpt)
    entry.run_command(["--jit", "--resume", str(ckpt), "--output", str(tmp_path / "calibrated.pt")])
    pair = " or ".join(plain.class_names[i] for i in sorted(ranked[:2]))

    def answer_for(mode: str) -> str:
        Select(browser.find_element(By.ID, "answer-mode")).select_by_value(mode)
        browser.execute_script("document.getElementById('answer').textContent = ''")
        browser.find_element(By.ID, "file").clear()
        browser.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(browser, PAGE_TIMEOUT).until(lambda d: d.find_element(By.ID, "answer").text)
        return browser.find_element(By.ID, "answer").text

    with Server(tmp_path / "calibrated.pt", log_path=tmp_path / "server.log") as server:
        browser.get(server.url + "/")
        assert browser.find_element(By.ID, "answer-choice").is_displayed()
        unknown, answer_set = answer_for("unknown"), answer_for("set")
    assert unknown == "Answer: unknown"
    assert answer_set == f"Answer: {pair}"
    with Server(exports["torchscript"], log_path=tmp_path / "plain.log") as server:  # not calibrated: no choice
        browser.get(server.url + "/")
        assert not browser.find_element(By.ID, "answer-choice").is_displayed()
