"""The explorer page in a real headless Chromium, against the real page server and TorchServe.

The page (explorer/) is served by nginx as scripts/explore.sh starts it, in front of a
TorchServe with the production config (token authorization on) on free ports. Selenium drives
Chromium as a person would: pick a photo, choose options, press the buttons, read the page.

Chromium, chromedriver and nginx come from the system ($CHROMIUM_BIN, $CHROMEDRIVER_BIN,
$NGINX_BIN, else PATH; Debian: apt-get install chromium chromium-driver nginx). Without them the
tests are skipped, except where SALIENCY_REQUIRE_BROWSER=1 (.ci/run sets it): there they fail,
so that CI cannot pass without having run them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from photos import CAT_CLASSES, packaged_photos
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait
from serving import wait_for

from saliency_tools import MODEL_NAME, ROOT
from saliency_tools.server import Server, free_port

pytestmark = [pytest.mark.browser, pytest.mark.server]

EXPLORE = ROOT / "scripts" / "explore.sh"
PREDICTIONS = f"predictions/{MODEL_NAME}"  # the path the page posts to, and nginx proxies
# This machine's network is closed, and a test browser should not phone home anyway.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)


def binary(variable: str, *names: str) -> str | None:
    return os.environ.get(variable) or next(filter(None, map(shutil.which, names)), None)


def require(found: str | None, what: str) -> str:
    """The binary, or the test's end: a failure in CI, a skip elsewhere."""
    if found:
        return found
    message = f"no {what}"
    if os.environ.get("SALIENCY_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{message}, and SALIENCY_REQUIRE_BROWSER=1: CI must run the browser tests")
    pytest.skip(message)


@pytest.fixture(scope="module")
def nginx_bin() -> str:
    return require(binary("NGINX_BIN", "nginx"), "nginx binary (set NGINX_BIN)")


@pytest.fixture(scope="module")
def chromium_bins() -> tuple[str, str]:
    chromium = require(
        binary("CHROMIUM_BIN", "chromium", "chromium-browser", "google-chrome"),
        "Chromium (apt-get install chromium, or set CHROMIUM_BIN)",
    )
    driver = require(
        binary("CHROMEDRIVER_BIN", "chromedriver"),
        "chromedriver (apt-get install chromium-driver, or set CHROMEDRIVER_BIN)",
    )
    return chromium, driver


@pytest.fixture(scope="module")
def torchserve(nginx_bin: str, server: Server) -> Server:
    """The session's TorchServe (tests/conftest.py), once nginx is known to be there."""
    return server


@dataclass
class PageServer:
    url: str
    run_dir: Path
    key: str
    process: subprocess.Popen


def start_page_server(
    server: Server, run_dir: Path, nginx_bin: str
) -> tuple[subprocess.Popen, str]:
    """scripts/explore.sh in the foreground, in front of ``server``; (process, page URL)."""
    keys = server.workdir / "key_file.json"
    return start_page_server_at(server.url("inference"), keys, run_dir, nginx_bin)


def start_page_server_at(
    upstream: str, key_file: Path, run_dir: Path, nginx_bin: str
) -> tuple[subprocess.Popen, str]:
    """scripts/explore.sh in the foreground, in front of ``upstream``; (process, page URL)."""
    port = free_port()
    log = run_dir.parent / f"{run_dir.name}.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [
                str(EXPLORE),
                "--foreground",
                "--port",
                str(port),
                "--upstream",
                upstream,
                "--key-file",
                str(key_file),
                "--run-dir",
                str(run_dir),
            ],
            env={**os.environ, "NGINX_BIN": nginx_bin},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"

    def serving() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the page server exited: {log.read_text()}")
        return requests.get(url, timeout=2).status_code == 200

    try:
        wait_for(serving, timeout=30, interval=0.1)
    except TimeoutError:
        process.kill()
        pytest.fail(f"the page server did not start: {log.read_text()}")
    return process, url


def stop_page_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def page_server(
    torchserve: Server, tmp_path_factory: pytest.TempPathFactory, nginx_bin: str
) -> Iterator[PageServer]:
    run_dir = tmp_path_factory.mktemp("explorer") / "run"
    process, url = start_page_server(torchserve, run_dir, nginx_bin)
    try:
        yield PageServer(url, run_dir, torchserve.keys["inference"], process)
    finally:
        stop_page_server(process)


@pytest.fixture(scope="module")
def browser(
    chromium_bins: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = chromium_bins
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # The DevTools network events, to read back everything the browser received.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    service = Service(executable_path=driver_path, log_output=str(log))
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except Exception as exc:  # a browser that cannot start is a failure, never a skip
        pytest.fail(f"Chromium did not start: {exc}\n{log.read_text() if log.exists() else ''}")
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


METHODS = ("vanilla", "gradcam", "smoothgrad", "smoothgrad_sq", "vargrad", "integrated_gradients")
PNG_DATA_URL = "data:image/png;base64,"


@pytest.fixture(scope="module")
def chelsea(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "chelsea.png"
    path.write_bytes(packaged_photos()["chelsea"])
    return path


@pytest.fixture(scope="module")
def not_an_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("files") / "notes.txt"
    path.write_text("a text file, not a picture\n" * 20)
    return path


def state(driver: WebDriver) -> str:
    return driver.execute_script("return document.body.dataset.state")


def outcome(driver: WebDriver, timeout: float = 120) -> str:
    """The page's state once its request has ended: "done" or "error"."""
    WebDriverWait(driver, timeout).until(lambda d: state(d) in ("done", "error"))
    return state(driver)


def open_page(driver: WebDriver, url: str) -> None:
    """Load the page and wait until it has the class list and has heard from TorchServe."""
    driver.get(url)
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script(
            "return document.querySelectorAll('#classes option').length === 1000"
            " && document.getElementById('server-status').classList.contains('ok')"
        )
    )


def pick(driver: WebDriver, path: Path) -> None:
    driver.find_element(By.ID, "file-input").send_keys(str(path))
    WebDriverWait(driver, 10).until(
        lambda d: path.name in d.find_element(By.ID, "drop-text").text and state(d) == "idle"
    )


def set_field(driver: WebDriver, element_id: str, value: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def picture(driver: WebDriver, element: object) -> dict:
    """An <img>'s source kind and decoded size, once the browser has decoded it."""
    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script("return arguments[0].complete", element)
    )
    return driver.execute_script(
        "const img = arguments[0];"
        "return {src: img.src.slice(0, 30), width: img.naturalWidth, height: img.naturalHeight};",
        element,
    )


def assert_png_picture(driver: WebDriver, element: object) -> None:
    shown = picture(driver, element)
    assert shown["src"].startswith(PNG_DATA_URL), shown
    assert shown["width"] == 224 and shown["height"] == 224, shown


def error_shown(driver: WebDriver) -> tuple[str, str]:
    assert driver.find_element(By.ID, "error").is_displayed()
    return (
        driver.find_element(By.ID, "error-code").text,
        driver.find_element(By.ID, "error-message").text,
    )


def test_a_photo_is_classified_and_explained(
    browser: WebDriver, page_server: PageServer, chelsea: Path
) -> None:
    open_page(browser, page_server.url)
    pick(browser, chelsea)
    browser.find_element(By.ID, "explain").click()
    assert outcome(browser) == "done", browser.find_element(By.ID, "error").text

    heading = browser.find_element(By.ID, "prediction").text
    index = int(re.search(r"\((\d+)\)", heading).group(1))
    assert index in CAT_CLASSES, heading
    assert "Egyptian cat" in heading or "tabby" in heading or "tiger cat" in heading
    assert_png_picture(browser, browser.find_element(By.ID, "map-image"))
    assert_png_picture(browser, browser.find_element(By.ID, "overlay-image"))
    assert browser.find_element(By.ID, "overlay-figure").is_displayed()
    rows = browser.find_elements(By.CSS_SELECTOR, "#topk-table tbody tr")
    assert len(rows) == 5
    assert "hot" in browser.find_element(By.ID, "map-caption").text
    # The crop the model saw, drawn from the picked file at the answer's crop_box: not blank.
    painted = browser.execute_script(
        "const c = document.getElementById('crop');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n;"
    )
    assert painted == 224 * 224


def test_a_class_searched_by_name_is_explained(
    browser: WebDriver, page_server: PageServer, chelsea: Path
) -> None:
    open_page(browser, page_server.url)
    pick(browser, chelsea)
    # The datalist's entries read "index name"; a bare name goes to the service as typed.
    assert browser.execute_script(
        "return [...document.querySelectorAll('#classes option')].some("
        "o => o.value === '281 tabby')"
    )
    set_field(browser, "target", "281 tabby")
    Select(browser.find_element(By.ID, "colormap")).select_by_value("gray")
    Select(browser.find_element(By.ID, "objective")).select_by_value("loss")
    browser.find_element(By.ID, "overlay").click()  # off
    browser.find_element(By.ID, "explain").click()
    assert outcome(browser) == "done", browser.find_element(By.ID, "error").text
    details = browser.find_element(By.ID, "details").text
    assert "tabby (281)" in details and "loss" in details
    assert "gray" in browser.find_element(By.ID, "map-caption").text
    assert not browser.find_element(By.ID, "overlay-figure").is_displayed()
    assert_png_picture(browser, browser.find_element(By.ID, "map-image"))

    set_field(browser, "target", "tiger cat")
    browser.find_element(By.ID, "explain").click()
    assert outcome(browser) == "done"
    assert "tiger cat (282)" in browser.find_element(By.ID, "details").text


def test_errors_are_shown_as_the_service_words_them(
    browser: WebDriver, page_server: PageServer, chelsea: Path, not_an_image: Path
) -> None:
    open_page(browser, page_server.url)
    pick(browser, not_an_image)
    browser.find_element(By.ID, "explain").click()
    assert outcome(browser) == "error"
    code, message = error_shown(browser)
    assert code == "invalid_image" and "not an image" in message
    assert not browser.find_element(By.ID, "result").is_displayed()

    pick(browser, chelsea)
    set_field(browser, "topk", "99")
    browser.find_element(By.ID, "explain").click()
    assert outcome(browser) == "error"
    code, message = error_shown(browser)
    assert code == "invalid_option" and "topk" in message

    set_field(browser, "topk", "3")
    set_field(browser, "target", "no such class")
    browser.find_element(By.ID, "explain").click()
    assert outcome(browser) == "error"
    assert error_shown(browser)[0] == "unknown_label"

    set_field(browser, "target", "")
    browser.find_element(By.ID, "explain").click()
    assert outcome(browser) == "done"
    assert not browser.find_element(By.ID, "error").is_displayed()


def test_compare_shows_one_map_per_method(
    browser: WebDriver, page_server: PageServer, chelsea: Path
) -> None:
    open_page(browser, page_server.url)
    pick(browser, chelsea)
    # Fewer noisy copies and path points than the defaults: the same code path, sooner.
    method = Select(browser.find_element(By.ID, "method"))
    method.select_by_value("smoothgrad")
    set_field(browser, "samples", "4")
    set_field(browser, "seed", "7")
    method.select_by_value("integrated_gradients")
    set_field(browser, "steps", "8")
    browser.find_element(By.ID, "compare").click()
    assert outcome(browser, timeout=300) == "done"

    cells = browser.find_elements(By.CSS_SELECTOR, "#compare-grid .compare-cell")
    assert [cell.get_attribute("data-method") for cell in cells] == list(METHODS)
    errors = [cell.text for cell in cells if cell.find_elements(By.CLASS_NAME, "compare-error")]
    assert not errors
    for cell in cells:
        maps = cell.find_elements(By.CLASS_NAME, "compare-map")
        assert len(maps) == 1, cell.get_attribute("data-method")
        assert_png_picture(browser, maps[0])
    sources = {
        cell.find_element(By.CLASS_NAME, "compare-map").get_attribute("src") for cell in cells
    }
    assert len(sources) == len(METHODS)  # six different maps, not one map six times
    title = browser.find_element(By.ID, "comparison-title").text
    assert int(re.search(r"\((\d+)\)", title).group(1)) in CAT_CLASSES, title


def network_events(driver: WebDriver) -> list[dict]:
    return [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]


def test_the_key_never_reaches_the_browser(
    browser: WebDriver, page_server: PageServer, chelsea: Path, not_an_image: Path
) -> None:
    key = page_server.key
    assert len(key) >= 8
    # The key the page server holds is TorchServe's: the answers below prove nginx sends it.
    assert key in (page_server.run_dir / "auth.conf").read_text()
    network_events(browser)  # drop earlier tests' events
    open_page(browser, page_server.url)
    pick(browser, chelsea)
    browser.find_element(By.ID, "explain").click()
    assert outcome(browser) == "done"
    pick(browser, not_an_image)
    browser.find_element(By.ID, "explain").click()
    assert outcome(browser) == "error"
    assert key not in browser.page_source

    events = network_events(browser)
    sent = [e["params"]["request"] for e in events if e["method"] == "Network.requestWillBeSent"]
    for request in sent:
        assert "authorization" not in {name.lower() for name in request["headers"]}, request
        assert key not in json.dumps(request)
    received = [e["params"] for e in events if e["method"] == "Network.responseReceived"]
    fetched = {re.sub(r"^https?://[^/]+", "", r["response"]["url"]) for r in received}
    expected = {"/", "/app.js", "/style.css", "/labels.json", "/ping"}
    assert expected <= fetched, fetched
    assert f"/{PREDICTIONS}" in fetched
    checked = 0
    for response in received:
        assert key not in json.dumps(response["response"]), response["response"]["url"]
        try:
            body = browser.execute_cdp_cmd(
                "Network.getResponseBody", {"requestId": response["requestId"]}
            )
        except Exception:  # a body the browser did not keep (a redirect's)
            continue
        text = body["body"]
        if body.get("base64Encoded"):
            text = base64.b64decode(text).decode("latin-1")
        assert key not in text, response["response"]["url"]
        checked += 1
    assert checked >= len(expected) + 2

    # And every file the page server publishes, fetched directly.
    for path in ("", "index.html", "app.js", "style.css", "labels.json"):
        answer = requests.get(page_server.url + path, timeout=10)
        assert answer.status_code == 200 and key not in answer.text, path
        assert key not in json.dumps(dict(answer.headers))


def test_the_page_server_refuses_what_the_page_does_not_need(page_server: PageServer) -> None:
    url = page_server.url
    assert requests.get(url, headers={"Host": "attacker.example"}, timeout=10).status_code == 421
    for path in ("nginx.conf.template", "auth.conf", "nginx.conf", "models", "metrics"):
        answer = requests.get(url + path, timeout=10)
        assert answer.status_code == 404 and page_server.key not in answer.text, path
    files = {"image": ("chelsea.png", packaged_photos()["chelsea"], "image/png")}
    # A form posted by another web site cannot set X-Explorer.
    answer = requests.post(url + PREDICTIONS, files=files, timeout=60)
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "forbidden"
    answer = requests.post(
        url + PREDICTIONS,
        files=files,
        headers={"X-Explorer": "1", "Authorization": "Bearer not-the-key"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text  # the client's Authorization is replaced
    too_big = {"image": ("big.png", b"x" * (12 * 1024 * 1024 + 1), "image/png")}
    answer = requests.post(
        url + PREDICTIONS,
        files=too_big,
        headers={"X-Explorer": "1"},
        timeout=60,
    )
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"
    assert (page_server.run_dir / "nginx.conf").stat().st_mode & 0o077 == 0
    assert (page_server.run_dir / "auth.conf").stat().st_mode & 0o077 == 0
    assert page_server.key not in (page_server.run_dir / "nginx.conf").read_text()


def run_explore(*args: str, nginx_bin: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EXPLORE), *args],
        env={**os.environ, "NGINX_BIN": nginx_bin},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_background_start_restart_and_stop(
    torchserve: Server, nginx_bin: str, tmp_path: Path
) -> None:
    port, run_dir = free_port(), tmp_path / "run"
    options = (
        f"--port={port}",
        f"--run-dir={run_dir}",
        f"--upstream={torchserve.url('inference')}",
        f"--key-file={torchserve.workdir / 'key_file.json'}",
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        started = run_explore(*options, nginx_bin=nginx_bin)
        assert started.returncode == 0, started.stderr
        assert f"explorer page at {url}" in started.stdout and "Healthy" in started.stdout
        assert "scripts/explore.sh --stop" in started.stdout
        assert requests.get(url, timeout=10).status_code == 200
        names = requests.get(f"{url}labels.json", timeout=10).json()
        assert len(names) == 1000 and names["285"] == "Egyptian cat"

        again = run_explore(*options, nginx_bin=nginx_bin)  # a rerun restarts it
        assert again.returncode == 0 and "starting it again" in again.stdout, again.stderr
        assert requests.get(url, timeout=10).status_code == 200
    finally:
        stopped = run_explore("--stop", f"--run-dir={run_dir}", nginx_bin=nginx_bin)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=5)
    assert not (run_dir / "auth.conf").exists()  # no copy of the key is left behind
    assert (
        "not running" in run_explore("--stop", f"--run-dir={run_dir}", nginx_bin=nginx_bin).stdout
    )


def test_an_unreachable_torchserve_is_reported_in_the_services_format(
    nginx_bin: str, tmp_path: Path
) -> None:
    keys = tmp_path / "key_file.json"
    keys.write_text(json.dumps({"inference": {"key": "Ab-_9xYz"}}))
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    process, url = start_page_server_at(down, keys, tmp_path / "run", nginx_bin)
    try:
        answer = requests.get(f"{url}ping", timeout=10)
        assert answer.status_code == 502
        assert answer.json()["error"]["code"] == "torchserve_unreachable"
        assert down in answer.json()["error"]["message"]
    finally:
        stop_page_server(process)
    assert not (tmp_path / "run" / "auth.conf").exists()


def test_start_fails_clearly_without_torchserve_keys(nginx_bin: str, tmp_path: Path) -> None:
    result = run_explore(
        f"--port={free_port()}",
        f"--run-dir={tmp_path / 'run'}",
        f"--key-file={tmp_path / 'key_file.json'}",
        nginx_bin=nginx_bin,
    )
    assert result.returncode == 1
    assert "key_file.json does not exist" in result.stderr and "scripts/serve.sh" in result.stderr
