"""The web view in a real browser: a minimal lab, `python -m lab web`, headless Chromium (Debian's) via selenium.

Run it holding the lab lock:  flock /tmp/pdmv2-netns.lock .venv/bin/python -m pytest tests/e2e/test_web.py
The screenshot is saved under pytest's tmp dir and copied to $PDMV2_ARTIFACTS (default /tmp)/pdmv2-web-view.png.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import control
from tests.e2e.labtest import PY, REPO, lab, lab_up, skip_unless_a_lab_can_start

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def minimal_lab() -> Iterator[dict[str, Any]]:
    skip_unless_a_lab_can_start()
    for path in (CHROMIUM, CHROMEDRIVER):
        assert os.access(path, os.X_OK), f"{path} missing: `make deps` installs chromium and chromium-driver"
    no_lab = lab("web", "--port", "0", timeout=60)
    assert no_lab.returncode == 2 and "no lab is up" in no_lab.stderr, no_lab.stderr
    with lab_up("--topo", "minimal") as state:
        yield state


@pytest.fixture
def web_url(minimal_lab: dict[str, Any]) -> Iterator[str]:
    proc = subprocess.Popen(
        [PY, "-m", "lab", "web", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True).start()
    try:
        try:
            first = lines.get(timeout=60)
        except queue.Empty:
            pytest.fail("lab web printed no URL within 60 s")
        m = re.search(r"(http://\[::1\]:\d+/)", first)
        assert m, f"no loopback URL in {first!r} (stderr: {proc.stderr.read() if proc.poll() is not None else ''})"
        yield m.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        # the view's capture (tcpdump in the router) and agent watchers end with it
        left = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=False).stdout
        assert "tcpdump -i eth1 -U -n --immediate-mode -s 512 -w -" not in left
        assert "lab.web.agentwatch" not in left


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")  # nothing leaves the machine, even if Selenium Manager ran
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",  # a small /dev/shm in a container must not crash the renderer
        "--window-size=1400,1700",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def test_web_view_live_in_a_browser(minimal_lab: dict[str, Any], web_url: str, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    hosts = minimal_lab["hosts"]
    browser.get(web_url)
    wait = WebDriverWait(browser, 40, poll_frequency=0.2)

    def texts(css: str) -> list[str]:
        """The text of every element matching css, read in one go (the page redraws its tables each second)."""
        found: list[str] = browser.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]), (e) => e.textContent.trim())", css
        )
        return found

    # every host of the lab is drawn, with its address
    wait.until(lambda _: len(texts("#topology g.host")) == len(hosts))
    drawn = dict(
        browser.execute_script(
            "return Array.from(document.querySelectorAll('#topology g.host'), (g) => [g.dataset.host, g.textContent])"
        )
    )
    assert set(drawn) == set(hosts)
    for name, h in hosts.items():
        assert name in drawn[name] and h["addresses"][0] in drawn[name], (name, drawn[name])
    assert texts("#live") == ["live"]
    # the agents answer: both secondaries up with their keys
    wait.until(lambda _: texts("#agent-sc1 .pill") == ["up"] and texts("#agent-ss1 .pill") == ["up"])
    sc1, ss1 = hosts["sc1"]["addresses"][0], hosts["ss1"]["addresses"][0]
    server = control.host("ss1").popen(
        PY, "-m", "lab.servers", "udp-echo", "5353", "5", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO
    )
    client = None
    try:
        time.sleep(0.5)
        client = control.host("sc1").popen(
            PY, "-m", "lab.servers", "udp-client", ss1, "5353", "600", "50",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
        )  # fmt: skip
        cell = f'#flows tr.flow[data-flow*="{ss1}]:5353"] [data-metric="server_delay-last"]'

        def value(_: Any) -> str | None:
            found = texts(cell)
            return found[0] if found and found[0].endswith(" ms") else None

        first = wait.until(value)
        assert 0 < float(first.split()[0]) < 1000
        changed = wait.until(lambda d: (v := value(d)) != first and v)
        assert changed != first
        # the same packets twice: ciphertext on the wire, opened with the keys
        wait.until(lambda _: texts("#wire tbody tr td.hex span.ct"))
        wait.until(lambda _: "opened" in texts("#opened tbody .pill"))
        wire_text = " ".join(texts("#wire tbody tr"))
        assert sc1 in wire_text and ss1 in wire_text
        assert int(texts("#agent-sc1 td.c-inserted")[0]) > 0
        shot = tmp_path / "web-view.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        dest = Path(os.environ.get("PDMV2_ARTIFACTS", tempfile.gettempdir())) / "pdmv2-web-view.png"
        shutil.copyfile(shot, dest)
        print(f"\nweb view screenshot: {shot} (copied to {dest})")
    finally:
        for p in (client, server):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(10)
