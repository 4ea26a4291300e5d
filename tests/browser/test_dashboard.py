"""The dashboard in a real headless browser: Debian's chromium and chromium-driver, driven by
explicit path (nothing downloads a browser or a driver). Sign in, submit from the page, and
the result pictures appear: loaded (naturalWidth > 0), with bytes whose sha256 is the job's FileRef.

Set DASHBOARD_SCREENSHOT=docs/dashboard.png to keep the screenshot (docs/ shows it)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import redis

from producer.gateway.keys import KeyStore, NewKey
from producer.redis_server import RedisServer
from tests.support.gateway import GatewayProcess, local_storage_env
from tests.support.images import encode, scene
from tests.support.workers import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
JOB_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def deployment(redis_server: RedisServer, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, NewKey]]:
    env = local_storage_env(redis_server.url, tiny_models, tmp_path_factory.mktemp("dashboard-storage"),
                            f"vqdash-{uuid.uuid4().hex[:8]}")
    key = KeyStore(redis.Redis.from_url(redis_server.url), env["VISIONQ_REDIS_PREFIX"]).create("studio")
    worker = WorkerProcess(env, tmp_path_factory.mktemp("dashboard-worker")).start()
    try:
        with GatewayProcess(env, tmp_path_factory.mktemp("dashboard-gateway")) as gateway:
            yield gateway, key
    finally:
        worker.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        "the browser tests need Debian's chromium: apt-get install -y chromium chromium-driver "
        "(or deselect them with -m 'not browser')"
    )
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1100", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# Fetches the picture the page shows and hashes the bytes, in the page itself.
SHA256_OF_IMAGE = """
const [img, done] = arguments;
fetch(img.currentSrc).then(r => r.arrayBuffer()).then(b => crypto.subtle.digest("SHA-256", b))
  .then(d => done(Array.from(new Uint8Array(d)).map(x => x.toString(16).padStart(2, "0")).join("")))
  .catch(e => done("error: " + e));
"""


def loaded_picture(driver: object, selector: str) -> object:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def find(d: object) -> object:
        for img in d.find_elements(By.CSS_SELECTOR, selector):
            if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img):
                return img
        return False

    try:
        return WebDriverWait(driver, JOB_TIMEOUT_S).until(find)
    except TimeoutException:
        raise AssertionError(
            f"no loaded picture {selector} within {JOB_TIMEOUT_S} s; the page says "
            f"{driver.find_element(By.ID, 'submit-error').text!r}; jobs: "
            f"{driver.find_element(By.ID, 'jobs').get_attribute('outerHTML')[:3000]}; console: {driver.get_log('browser')}"
        ) from None


def test_dashboard_submits_and_shows_real_result_pictures(
    deployment: tuple[GatewayProcess, NewKey], browser: object, tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    gateway, key = deployment
    image = tmp_path / "street.png"
    image.write_bytes(encode(scene(160, 120, seed=3)))
    driver = browser
    driver.get(f"{gateway.url}/")
    driver.find_element(By.ID, "api-key").send_keys(key.key)
    driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "app").is_displayed())

    driver.find_element(By.CSS_SELECTOR, '.tabs button[data-kind="segment"]').click()
    segment = driver.find_element(By.ID, "form-segment")
    segment.find_element(By.NAME, "image").send_keys(str(image))
    segment.find_element(By.NAME, "labels").send_keys("sun, roof")
    segment.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    overlay = loaded_picture(driver, 'img.output[data-role="overlay"]')

    job_id = overlay.get_attribute("data-job")
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key.key}"}) as http:
        record = http.get(f"/v1/jobs/{job_id}").json()
    assert record["status"] == "succeeded" and record["tenant"] == "studio"
    assert browser.execute_async_script(SHA256_OF_IMAGE, overlay) == record["output"]["overlay"]["sha256"]
    assert driver.find_element(By.CSS_SELECTOR, f'[data-job="{job_id}"] img.input')  # the uploaded image, shown

    driver.find_element(By.CSS_SELECTOR, '.tabs button[data-kind="generate"]').click()
    generate = driver.find_element(By.ID, "form-generate")
    generate.find_element(By.NAME, "prompt").send_keys("a lighthouse at dawn")
    for name in ("width", "height"):
        generate.find_element(By.NAME, name).clear()
        generate.find_element(By.NAME, name).send_keys("128")
    generate.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    generated = loaded_picture(driver, 'img.output[data-role="image"]')
    generated_sha = browser.execute_async_script(SHA256_OF_IMAGE, generated)
    assert generated_sha == generated.get_attribute("data-sha256")

    driver.find_element(By.CSS_SELECTOR, '.tabs button[data-kind="caption"]').click()
    driver.find_element(By.ID, "form-caption").find_element(By.NAME, "image").send_keys(str(image))
    driver.find_element(By.CSS_SELECTOR, "#form-caption button[type=submit]").click()
    WebDriverWait(driver, JOB_TIMEOUT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, '.job[data-status="succeeded"] .text'))
    assert "ready" in driver.find_element(By.ID, "workers").text or "busy" in driver.find_element(By.ID, "workers").text

    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(os.environ.get("DASHBOARD_SCREENSHOT") or str(tmp_path / "dashboard.png"))
