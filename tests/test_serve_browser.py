"""The service's page in a real browser: Debian's headless Chromium and chromedriver through
Selenium. Skips when Chromium, its driver or Selenium is absent (``.ci/run`` installs them)."""
import io
import os
import shutil
import time

import numpy as np
import pytest
import torch
from conftest import portrait_like
from PIL import Image

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")

from test_serve import LiveServer  # noqa: E402  (the app under uvicorn in a thread)

from dctnet_lite import Cartoonizer, DCTNet, save_checkpoint  # noqa: E402
from dctnet_lite.serve import ServeConfig, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _find(*names):
    for n in names:
        path = shutil.which(n)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver = _find("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("headless Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")  # Selenium Manager is not needed: both paths are given
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    try:
        drv = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    except Exception as e:  # a broken install is a skip, not a failure of the service
        pytest.skip(f"Chromium does not start here: {type(e).__name__}: {str(e).splitlines()[0]}")
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def wait_for(drv, script, timeout=60.0):
    t0 = time.monotonic()
    while True:
        value = drv.execute_script(script)
        if value:
            return value
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for: {script}\nstatus: "
                                 + str(drv.execute_script("return document.body.innerText")))
        time.sleep(0.1)


def test_page_upload_slider_size_before_after_download_and_batch_progress(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    torch.manual_seed(0)
    ckpt = tmp_path / "page-w8.safetensors"
    save_checkpoint(ckpt, DCTNet(8).eval())
    photos = []
    for i, (h, w) in enumerate(((48, 64), (64, 40), (48, 64))):
        path = tmp_path / f"photo{i}.png"
        Image.fromarray(portrait_like(h, w, 40 + i)).save(path)
        photos.append(path)
    app = create_app(ServeConfig(checkpoints=[ckpt], device="cpu", precision="fp32", warmup_size=32,
                                 max_wait_ms=20.0, cache="memory"))
    with LiveServer(app) as srv:
        browser.get(srv.url + "/")
        wait_for(browser, "return document.getElementById('run').disabled === false")
        assert "page-w8" in Select(browser.find_element(By.ID, "checkpoint")).first_selected_option.text

        Select(browser.find_element(By.ID, "size")).select_by_value("custom")
        custom = browser.find_element(By.ID, "size-custom")
        assert custom.is_displayed()
        custom.send_keys("32", Keys.TAB)
        slider = browser.find_element(By.ID, "strength")
        slider.click()
        for _ in range(30):  # the arrows move the slider as a user's keyboard does
            slider.send_keys(Keys.ARROW_LEFT)
        wait_for(browser, "return document.getElementById('strength-value').textContent === '0.00'")
        for _ in range(8):
            slider.send_keys(Keys.ARROW_RIGHT)
        assert browser.find_element(By.ID, "strength-value").text == "0.40"

        # one photo: the result at the chosen size and strength, before/after shown, a download link
        browser.find_element(By.ID, "files").send_keys(str(photos[0]))
        wait_for(browser, "return document.querySelectorAll('.card.done').length === 1")
        card = browser.find_element(By.CSS_SELECTOR, ".card.done")
        assert card.get_attribute("data-strength") == "0.40" and card.get_attribute("data-size") == "32"
        after = card.find_element(By.CSS_SELECTOR, "img.after")
        assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]",
                                      after) == [32, 24]
        before = card.find_element(By.CSS_SELECTOR, "img.before")
        assert browser.execute_script("return arguments[0].naturalWidth", before) == 64
        link = card.find_element(By.CSS_SELECTOR, "a.download")
        assert link.get_attribute("download") == "photo0_cartoon.png"
        assert link.get_attribute("href").startswith("blob:")
        # the pixels the page shows are the library's (read back through the blob URL)
        data = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => done(Array.from(new Uint8Array(b))));
        """, link.get_attribute("href"))
        got = np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB"))
        ref = Cartoonizer(ckpt, device="cpu", precision="fp32")(np.asarray(Image.open(photos[0])),
                                                                strength=0.4, size=32)
        assert np.array_equal(got, ref)
        # the compare handle moves the split between before and after
        split = card.find_element(By.CSS_SELECTOR, "input.split")
        split.click()
        split.send_keys(Keys.HOME)
        assert split.get_attribute("value") == "0"
        assert browser.execute_script("return arguments[0].style.clipPath", after).replace(" ", "") \
            in ("inset(0px0px0px0%)", "inset(0000%)")

        # several photos: progress to 3 / 3, each result at its own size
        browser.find_element(By.ID, "clear").click()
        assert browser.find_elements(By.CSS_SELECTOR, ".card") == []
        browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in photos))
        wait_for(browser, "return document.getElementById('progress-text').textContent === '3 / 3 done'")
        sizes = browser.execute_script(
            "return Array.from(document.querySelectorAll('.card.done img.after')).map(i => [i.naturalWidth, i.naturalHeight])")
        assert sizes == [[32, 24], [20, 32], [32, 24]]
        assert browser.execute_script("return document.getElementById('download-all').disabled") is False

        # moving the slider again re-runs them at the new strength
        slider.send_keys(Keys.ARROW_RIGHT)
        wait_for(browser, "return Array.from(document.querySelectorAll('.card.done'))"
                          ".filter(c => c.dataset.strength === '0.45').length === 3")
        assert "3 / 3 done" in browser.find_element(By.ID, "progress-text").text
    assert app.state.service.batcher.batches >= 3
