"""Headless-browser helpers shared by the tests of the HTML explorer (report.html): start Debian's Chromium under
chromedriver through selenium (or skip with the reason printed), wait for the page, read its tables, and check
the network log and a screenshot."""

from __future__ import annotations

import io
import json
import re
import shutil

import pytest


def browser_or_skip():
    """A headless Chromium driven by selenium, logging network and console; skips, naming what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]'); the browser tests need it")
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                  None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip(f"no headless browser: chromium {'found' if binary else 'missing'}, chromedriver "
                    f"{'found' if driver else 'missing'} (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    try:
        return webdriver.Chrome(service=Service(driver), options=options)
    except Exception as exc:  # a browser that does not start is a missing browser, said so
        pytest.skip(f"chromium did not start under chromedriver: {str(exc).splitlines()[0]}")


def wait_ready(driver, timeout: float = 20) -> None:
    """Wait until the explorer's script has drawn the page (``body[data-ready=1]``)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")


def open_page(driver, url: str) -> dict:
    """Load ``url``, wait for the page, and return its first load's network log and console (read once)."""
    driver.get(url)
    wait_ready(driver)
    return dict(url=url, performance=driver.get_log("performance"), console=driver.get_log("browser"))


def requested_urls(first_load: dict) -> list[str]:
    """Every URL the page asked for during its first load (requests and web sockets, from the network log)."""
    urls = []
    for entry in first_load["performance"]:
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            urls.append(message["params"].get("request", message["params"]).get("url"))
    return urls


def assert_offline(first_load: dict) -> None:
    """The page loaded nothing but itself (and data: URLs), and logged no console error."""
    urls = requested_urls(first_load)
    assert urls, "the performance log recorded no request at all: the check would prove nothing"
    assert all(u == first_load["url"] or u.startswith("data:") for u in urls), urls
    assert [e for e in first_load["console"] if e["level"] == "SEVERE"] == []


def table(driver, suffix: str):
    """The data table whose id ends with ``suffix``."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f"table.data[data-table-id$='{suffix}']")


def column(tbl, key: str) -> list[str]:
    """The visible texts of column ``key`` of a table, top to bottom."""
    from selenium.webdriver.common.by import By

    return [td.text for td in tbl.find_elements(By.CSS_SELECTOR, f"tbody td[data-col='{key}']")]


def rows(tbl) -> list[dict]:
    """The visible rows of a table, each ``{column key: text}``."""
    from selenium.webdriver.common.by import By

    return [{td.get_attribute("data-col"): td.text for td in tr.find_elements(By.TAG_NAME, "td")}
            for tr in tbl.find_elements(By.CSS_SELECTOR, "tbody tr")]


def number(text: str) -> float:
    """The leading number of a cell (``'70.0 [61.2, 78.8]'`` -> 70.0)."""
    return float(re.match(r"[+-]?\d+(\.\d+)?", text.strip()).group(0))


def assert_screenshot_not_blank(driver, path=None) -> None:
    """A screenshot of the window has the window's size, many colours and is not almost all white."""
    from PIL import Image

    png = driver.get_screenshot_as_png()
    if path is not None:
        path.write_bytes(png)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size[0] >= 1000 and image.size[1] >= 600
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50
    white = sum(count for count, rgb in colours if rgb == (255, 255, 255))
    assert white < 0.97 * image.size[0] * image.size[1]
