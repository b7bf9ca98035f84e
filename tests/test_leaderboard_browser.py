"""The built site in a real headless browser (Debian's chromium), opened from disk (file://).

The browser is driven through the DevTools protocol over ``--remote-debugging-pipe`` (file
descriptors 3 and 4, NUL-separated JSON): standard library only, no websocket client. That gives
console messages with their level, uncaught exceptions and failed resource loads (a missing SVG or
script), and lets the test click column headers and read the table back. A separate one-shot
``--screenshot`` run renders the page as a user would first see it.

Skips only when no chromium is installed and ``CI`` is unset; in CI a missing browser fails.
Set ``LEADERBOARD_SCREENSHOT_DIR`` to keep a copy of the screenshot.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from leaderboard.build import build_leaderboard
from leaderboard.synthetic import write_synthetic_repo

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--disable-extensions", "--mute-audio"]
TIMEOUT = 60.0


def find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = find_chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI is set: install it (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return exe


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser") / "repo"
    lines = (REPO / "leaderboard" / "reported.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    csv_path = root.parent / "reported.csv"
    csv_path.write_text("".join(lines[:9]), encoding="utf-8")
    write_synthetic_repo(root, 16, gallery=1, reported_csv=csv_path)
    return build_leaderboard(root, root.parent / "site")


class Browser:
    """A headless chromium driven over the DevTools pipe."""

    def __init__(self, exe: str, profile: Path, width: int = 1400, height: int = 1000):
        to_r, self._to_w = os.pipe()
        self._from_r, from_w = os.pipe()

        def child_fds():  # chromium reads commands from fd 3 and writes replies to fd 4
            a, b = os.dup(to_r), os.dup(from_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "--remote-debugging-pipe", "about:blank"],
            preexec_fn=child_fds, pass_fds=(3, 4), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        try:
            pages = [t["targetId"] for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"]
            target = pages[0] if pages else self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
                self.send(domain, session=self.session)
        except BaseException:
            self.close()
            raise

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_r], [], [], left)
            if ready:
                chunk = os.read(self._from_r, 1 << 20)
                if not chunk:
                    raise EOFError("chromium closed the DevTools pipe")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, *, session: str | None = None) -> dict:
        self._id += 1
        msg: dict = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        deadline = time.monotonic() + TIMEOUT
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read(deadline))

    def open(self, url: str) -> None:
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        self.send("Page.navigate", {"url": url}, session=self.session)
        self.wait_for("Page.loadEventFired")

    def js(self, expression: str):
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True}, session=self.session)
        if "exceptionDetails" in res:
            raise AssertionError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def problems(self) -> list[str]:
        """Uncaught exceptions, console errors and failed loads seen so far."""
        out = []
        for ev in self.events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        return out

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_w, self._from_r):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def browser(chromium, tmp_path):
    b = Browser(chromium, tmp_path / "profile")
    try:
        yield b
    finally:
        b.close()


def board_data(site: Path, board_id: str) -> dict:
    data = json.loads((site / "leaderboard.json").read_text(encoding="utf-8"))
    return next(b for b in data["boards"] if b["id"] == board_id)


COLUMN = """(function (tableId, key) {
  var t = document.getElementById(tableId);
  var cells = t.tHead.rows[0].cells, col = -1;
  for (var i = 0; i < cells.length; i++) if (cells[i].getAttribute('data-key') === key) col = i;
  return Array.prototype.map.call(t.tBodies[0].rows, function (r) { return r.cells[col].getAttribute('data-sort'); });
})"""


def column(b: Browser, table: str, key: str) -> list[float | None]:
    raw = b.js(f"{COLUMN}({json.dumps(table)}, {json.dumps(key)})")
    return [None if v == "" else float(v) for v in raw]


def click(b: Browser, table: str, key: str) -> str:
    return b.js(f"(function () {{ var th = document.querySelector('#{table} th[data-key=\"{key}\"]'); th.click();"
                " return th.getAttribute('aria-sort'); })()")


def test_index_loads_without_errors_and_sorts(browser, site):
    browser.open((site / "index.html").as_uri())
    assert browser.js("document.body.getAttribute('data-ready')") == "1"
    assert browser.problems() == []
    broken = browser.js("Array.prototype.filter.call(document.images, function (i) {"
                        " return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.src; })")
    assert broken == []
    assert browser.js("document.images.length") >= 7

    table = "table-cifar10-Linf-8_255"
    data = board_data(site, "cifar10-Linf-8_255")
    n = len(data["entries"])
    # the default order is the ranking
    ids = browser.js(f"Array.prototype.map.call(document.querySelectorAll('#{table} tbody tr'),"
                     " function (r) { return r.getAttribute('data-id'); })")
    assert ids == [e["id"] for e in data["entries"]]

    assert click(browser, table, "inference_flops") == "ascending"
    vals = column(browser, table, "inference_flops")
    present = [v for v in vals if v is not None]
    assert len(vals) == n and present == sorted(present) and present != sorted(present, reverse=True)
    assert all(v is None for v in vals[len(present):])  # missing values last
    assert click(browser, table, "inference_flops") == "descending"
    present = [v for v in column(browser, table, "inference_flops") if v is not None]
    assert present == sorted(present, reverse=True)

    assert click(browser, table, "robust") == "descending"  # accuracy columns start high
    robust = column(browser, table, "robust")
    assert robust == sorted(robust, reverse=True)
    expected = sorted((e["robust_accuracy"] for e in data["entries"]), reverse=True)
    assert robust == pytest.approx(expected)

    assert click(browser, table, "model") == "ascending"
    names = browser.js(f"Array.prototype.map.call(document.querySelectorAll('#{table} tbody td.model a:first-child'),"
                       " function (a) { return a.textContent.toLowerCase(); })")
    assert names == sorted(names)
    assert browser.problems() == []


def test_filters(browser, site):
    browser.open((site / "index.html").as_uri())
    table = "table-cifar10-Linf-8_255"
    data = board_data(site, "cifar10-Linf-8_255")
    visible = f"document.querySelectorAll('#{table} tbody tr:not([hidden])').length"
    controls = f"document.querySelector('.controls[data-table=\"{table}\"]')"
    assert browser.js(visible) == len(data["entries"])
    browser.js(f"(function () {{ var s = {controls}.querySelector('.filter-source'); s.value = 'reported';"
               " s.dispatchEvent(new Event('change')); })()")
    n_rep = sum(e["source"] == "reported" for e in data["entries"])
    assert 0 < n_rep < len(data["entries"])
    assert browser.js(visible) == n_rep
    assert browser.js(f"{controls}.querySelector('.count').textContent") == f"{n_rep} of {len(data['entries'])} shown"
    browser.js(f"(function () {{ var s = {controls}.querySelector('.filter-source'); s.value = '';"
               " s.dispatchEvent(new Event('change'));"
               f" var c = {controls}.querySelector('.filter-frontier'); c.checked = true;"
               " c.dispatchEvent(new Event('change')); })()")
    assert browser.js(visible) == sum(e["frontier_layer"] == 1 for e in data["entries"])
    name = data["entries"][-1]["name"]
    browser.js(f"(function () {{ var c = {controls}.querySelector('.filter-frontier'); c.checked = false;"
               " c.dispatchEvent(new Event('change'));"
               f" var t = {controls}.querySelector('.filter-text'); t.value = {json.dumps(name.upper())};"
               " t.dispatchEvent(new Event('input')); })()")
    assert browser.js(visible) == sum(e["name"] == name for e in data["entries"])
    assert browser.problems() == []


def test_sort_from_the_url_hash(browser, site):
    browser.open((site / "index.html").as_uri() + "#sort=table-cifar10-Linf-8_255:params:asc")
    assert browser.js("document.getElementById('table-cifar10-Linf-8_255').getAttribute('data-sorted')") == "params:asc"
    present = [v for v in column(browser, "table-cifar10-Linf-8_255", "params") if v is not None]
    assert present == sorted(present)


def test_entry_page_and_gallery(browser, site):
    browser.open((site / "entries" / "syn-0000.html").as_uri())
    assert browser.problems() == []
    loaded = browser.js("Array.prototype.filter.call(document.querySelectorAll('.gallery img'),"
                        " function (i) { return i.complete && i.naturalWidth > 0; }).length")
    assert loaded == 8
    assert "harness eval submissions/syn-0000/submission.yaml" in browser.js("document.querySelector('pre.cmd').textContent")


def test_the_error_check_catches_errors(browser, site, tmp_path):
    """Negative control: a page with a script error and a missing image must be reported."""
    broken = tmp_path / "broken"
    shutil.copytree(site, broken)
    index = broken / "index.html"
    index.write_text(index.read_text(encoding="utf-8").replace(
        "</main>", '<img src="plots/missing.svg"><script>notDefinedAnywhere();</script></main>'), encoding="utf-8")
    (broken / "static" / "leaderboard.css").unlink()
    browser.open(index.as_uri())
    problems = "\n".join(browser.problems())
    assert "notDefinedAnywhere" in problems
    assert "missing.svg" in problems
    assert "leaderboard.css" in problems


def test_screenshot(chromium, site, tmp_path):
    shot = tmp_path / "index.png"
    proc = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1800",
         f"--screenshot={shot}", (site / "index.html").as_uri()],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(shot)
    assert img.shape[:2] == (1800, 1400)
    assert shot.stat().st_size > 50_000
    gray = img[..., :3].mean(axis=2)
    assert gray.std() > 0.1  # not a blank page
    assert (gray < 0.3).mean() > 0.01  # dark header and text are there
    keep = os.environ.get("LEADERBOARD_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(keep) / "index.png")
    assert np.isfinite(gray).all()
