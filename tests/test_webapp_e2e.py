"""The label page end to end: a real ``ghostmap label`` server, driven in headless Chromium.

Labels several patterns with the keyboard, undoes and skips, kills the server (SIGKILL, no
chance to tidy up), starts it again on the same port, reloads the page and checks that
the page and the label file agree and that the session resumed where it was. A
screenshot is saved to ``test-artifacts/label_app.png``.

Skipped only where Chromium cannot be had: ``/usr/bin/chromium`` missing (``make test``
installs Debian's package) or the ``playwright`` Python package not importable.

Run as a script (``python tests/test_webapp_e2e.py``) it makes the README's screenshot,
``docs/label_app.png``, from the demo scan.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

needs_browser = pytest.mark.skipif(
    sync_playwright is None or not CHROMIUM.exists(),
    reason="headless Chromium not available: " + ("the playwright package is not installed"
                                                  if sync_playwright is None else f"{CHROMIUM} is missing "
                                                  "(apt-get install chromium; 'make test' tries)"),
)


class Server:
    """``ghostmap label`` in a subprocess; the URL is read from its first line of output."""

    def __init__(self, args: list[str], cwd: Path):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "GHOSTMAP_DEBUG": "0"}
        self.proc = subprocess.Popen([sys.executable, "-m", "ghostmap.cli", "label", *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # blocks until the server is about to serve (or has died)
        match = re.search(r"(http://[0-9.]+:([0-9]+)/)", line)
        if not match:
            self.proc.kill()
            raise AssertionError(f"no URL from ghostmap label: {line!r} {self.proc.stderr.read()}")
        self.url, self.port = match.group(1), int(match.group(2))
        self.wait_until_up()

    def wait_until_up(self, timeout: float = 30) -> None:
        import urllib.request

        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "api/state", timeout=2):
                    return
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to save anything."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()

    def stop(self) -> str:
        """Ctrl+C, as a person would; returns what it printed."""
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=15)
        return out


def launch(p):
    return p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


def open_page(p, url: str):
    """A headless browser on the label page at ``url``, once it says it is ready; page errors are
    collected in the list returned with it."""
    browser = launch(p)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=15_000)
    return browser, page, errors


def read_csv(path: Path) -> dict:
    from ghostmap.labels import read_labels

    return read_labels(path, missing_ok=True).to_dict()


def page_labels(page) -> dict:
    state = page.evaluate("() => fetch('/api/state').then(r => r.json())")
    return {(lab["x"], lab["y"]): lab["label"] for lab in state["labels"]}, state


def current(page) -> tuple[int, int]:
    pos = page.locator("#position")
    return int(pos.get_attribute("data-x")), int(pos.get_attribute("data-y"))


def press_and_wait(page, key: str, n_labels: int) -> None:
    page.keyboard.press(key)
    page.wait_for_selector(f"body[data-labels='{n_labels}']", timeout=10_000)
    page.wait_for_function("() => !document.body.classList.contains('busy')", timeout=10_000)


@needs_browser
def test_label_with_the_keyboard_kill_restart_reload(tmp_path):
    from ghostmap.simulate import simulate_scan

    data, truth = simulate_scan((12, 30), detector=64, seed=0)
    np.save(tmp_path / "scan.npy", data)
    labels = tmp_path / "labels.csv"
    args = ["scan.npy", "--labels", "labels.csv", "--budget", "20", "--port", "0"]
    server = Server(args, tmp_path)
    try:
        with sync_playwright() as p:
            browser, page, errors = open_page(p, server.url)
            assert page.inner_text("#progress-text") == "0 of 20 labelled"
            page.wait_for_function("() => document.getElementById('pattern').complete "
                                   "&& document.getElementById('pattern').naturalWidth === 64")

            expected = {}
            keys = {"h": "horizontal", "v": "vertical", "n": "none", "1": "horizontal", "2": "vertical",
                    "3": "none"}
            for i, key in enumerate(["n", "v", "h", "3", "2"]):
                expected[current(page)] = keys[key]
                press_and_wait(page, key, i + 1)
            assert read_csv(labels) == expected
            assert page.inner_text("#progress-text") == "5 of 20 labelled"

            # U takes back the last label and opens that position again
            last = list(expected)[-1]
            press_and_wait(page, "u", 4)
            del expected[last]
            assert current(page) == last and read_csv(labels) == expected
            # S skips it (to the back of the queue), 1 labels the next
            page.keyboard.press("s")
            page.wait_for_function(f"() => document.getElementById('position').dataset.x !== '{last[0]}' "
                                   f"|| document.getElementById('position').dataset.y !== '{last[1]}'")
            page.wait_for_function("() => !document.body.classList.contains('busy')")
            expected[current(page)] = "horizontal"
            press_and_wait(page, "1", 5)
            assert read_csv(labels) == expected
            # open a position outside the queue by clicking the overview (x=29, y=11: bottom right corner)
            canvas = page.locator("#overview")
            box = canvas.bounding_box()
            page.mouse.click(box["x"] + box["width"] * (29.5 / 30), box["y"] + box["height"] * (11.5 / 12))
            page.wait_for_function("() => document.getElementById('position').dataset.x === '29'")
            assert page.inner_text("#position-status") == "outside the queue"
            before_kill, state_before = page_labels(page)
            assert before_kill == expected

            # kill the server mid-session and start it again on the same port; reload the page
            server.kill()
            server = Server(args[:-1] + [str(server.port)], tmp_path)
            page.reload()
            page.wait_for_selector("body[data-ready='1']", timeout=15_000)
            after, state_after = page_labels(page)
            assert after == expected == read_csv(labels)
            for key in ("queue", "skipped", "current", "counts"):
                assert state_after[key] == state_before[key], key
            assert current(page) == (29, 11)  # resumed where it was, outside the queue
            assert page.inner_text("#progress-text") == "5 of 20 labelled"
            for name in ("horizontal", "vertical", "none"):
                n = sum(1 for v in expected.values() if v == name)
                assert page.inner_text(f"#counts [data-class='{name}']") == f"{name}: {n}"
            assert [last[0], last[1]] in state_after["skipped"]
            # label the opened position with the button; the queue takes over again
            page.click("button.class-button[data-class='vertical']")
            page.wait_for_selector("body[data-labels='6']")
            expected[(29, 11)] = "vertical"
            assert read_csv(labels) == expected
            page.wait_for_function("() => document.getElementById('pattern').complete")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "label_app.png"), full_page=True)
            assert errors == []
            browser.close()
        out = server.stop()
        assert "stopped; 6 labels" in out
    finally:
        if server.proc.poll() is None:
            server.kill()
    assert (ARTIFACTS / "label_app.png").stat().st_size > 10_000


@needs_browser
def test_quick_keys_are_queued_the_overview_fills_its_panel_and_an_empty_queue_says_so(tmp_path):
    from ghostmap.simulate import simulate_scan

    data, _ = simulate_scan((12, 30), detector=32, seed=0)
    np.save(tmp_path / "scan.npy", data)
    labels = tmp_path / "labels.csv"
    server = Server(["scan.npy", "--labels", "labels.csv", "--budget", "6", "--port", "0"], tmp_path)
    try:
        with sync_playwright() as p:
            browser, page, errors = open_page(p, server.url)

            # the overview is as wide as its panel: no black band beside it
            wrap_width = page.evaluate("() => document.getElementById('overview-wrap').clientWidth")
            canvas = page.locator("#overview").bounding_box()
            assert abs(canvas["width"] - wrap_width) <= 1.5, (canvas, wrap_width)
            assert abs(canvas["height"] / canvas["width"] - 12 / 30) < 0.02

            # six keys pressed without waiting for the server: six labels, in the order pressed
            state = page.evaluate("() => fetch('/api/state').then(r => r.json())")
            assert len(state["queue"]) >= 1
            pressed = ["n", "v", "h", "3", "2", "1"]
            for key in pressed:
                page.keyboard.press(key)
            page.wait_for_selector("body[data-labels='6']", timeout=20_000)
            page.wait_for_function("() => !document.body.classList.contains('busy')", timeout=10_000)
            saved = read_csv(labels)
            assert len(saved) == 6
            names = {"n": "none", "v": "vertical", "h": "horizontal", "1": "horizontal", "2": "vertical", "3": "none"}
            assert sorted(saved.values()) == sorted(names[k] for k in pressed)
            history = page_labels(page)[1]
            assert len(history["labels"]) == 6

            # budget spent, queue empty: a message, no broken image
            assert page.locator("#empty-queue").is_visible()
            assert "Budget of 6 labels reached" in page.inner_text("#empty-queue")
            assert not page.locator("#pattern").is_visible()
            assert not page.locator("#pattern-wrap").is_visible()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "label_app_empty_queue.png"), full_page=True)
            assert errors == []
            browser.close()
    finally:
        if server.proc.poll() is None:
            server.kill()


def readme_screenshot(out: Path = ROOT / "docs" / "label_app.png", epochs: int = 60) -> Path:
    """docs/label_app.png: the demo scan, labelled from its truth partway, with a preview overlay.

    The server runs in this process (uvicorn in a thread) so that the preview can train for
    fewer epochs than ``ghostmap train`` would: a screenshot need not wait minutes.
    """
    import tempfile
    import threading

    import uvicorn

    from ghostmap.demo import label_loop
    from ghostmap.labels import labels_from_truth, write_labels
    from ghostmap.sampling import propose
    from ghostmap.simulate import write_simulated_scan
    from ghostmap.training import TrainingOptions
    from ghostmap.webapp import create_app
    from ghostmap.webapp.server import bind, url_of

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        truth = write_simulated_scan(tmp / "scan.npy", (34, 206), 128, seed=0)
        given, _ = label_loop(truth, 30)  # the sampler's first 30 positions, labelled from the truth
        x, y = propose(truth.shape, given, 50)
        given = given.merged(labels_from_truth(truth, x[:4], y[:4]))
        write_labels(tmp / "labels.csv", given)
        app = create_app(tmp / "scan.npy", tmp / "labels.csv", budget=50,
                         training=TrainingOptions(epochs=epochs, seed=0))
        sock = bind("127.0.0.1", 0)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            with sync_playwright() as p:
                browser = launch(p)
                page = browser.new_page(viewport={"width": 1500, "height": 960})
                page.goto(url_of(sock, "127.0.0.1"))
                page.wait_for_selector("body[data-ready='1']")
                page.click("#train")
                page.wait_for_function("() => document.getElementById('training').textContent.startsWith('trained')",
                                       timeout=900_000)
                page.wait_for_timeout(1000)
                page.fill("#opacity", "0.45")
                page.dispatch_event("#opacity", "input")
                page.wait_for_timeout(500)
                page.screenshot(path=str(out), full_page=True)
                browser.close()
        finally:
            server.should_exit = True
            thread.join(10)
            sock.close()
    return out


if __name__ == "__main__":
    print(readme_screenshot())
