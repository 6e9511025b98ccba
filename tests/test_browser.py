"""The book builds with warnings as errors, and every page of it works in a real browser.

One session-scoped build (``jupyter-book build . -W -n --keep-going --all``) feeds every test here.
The built HTML is served on 127.0.0.1 and opened in Debian's headless Chromium through selenium.
For every page of the table of contents: no broken image, no internal link to a missing page or
anchor, mathematics rendered by the vendored MathJax, no SEVERE browser console entry. Chapter
pages must offer the Colab launch button. A full-page screenshot of each page is saved under
``artifacts/screenshots/`` for a human to look at.
"""

from __future__ import annotations

import base64
import functools
import html.parser
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest
import yaml

pytestmark = pytest.mark.book

REPO = Path(__file__).resolve().parents[1]
HTML = REPO / "_build" / "html"
SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
BUILD_COMMAND = ["build", ".", "-W", "-n", "--keep-going", "--all"]
HIDE_SOLUTIONS_VAR = "ADCOURSE_HIDE_SOLUTIONS"
MAX_SCREENSHOT_HEIGHT = 16000


# --- what the book should contain -----------------------------------------------------------


def _toc_files(entries) -> list[str]:
    files = []
    for entry in entries or []:
        if "file" in entry:
            files.append(str(entry["file"]))
        for key in ("chapters", "sections", "parts"):
            files.extend(_toc_files(entry.get(key)))
    return files


def toc_pages() -> list[str]:
    """Every page of ``_toc.yml``, as a path without suffix (``book/intro``, ``notebooks/01_x``)."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    pages = [str(toc["root"])] + _toc_files(toc.get("parts")) + _toc_files(toc.get("chapters"))
    return [re.sub(r"\.(md|ipynb)$", "", page) for page in pages]


def is_chapter(page: str) -> bool:
    return page.startswith("notebooks/")


def repository_url() -> tuple[str, str]:
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    return config["repository"]["url"].rstrip("/"), config["repository"].get("branch", "main")


PAGES = toc_pages()


# --- the build ------------------------------------------------------------------------------


def _jupyter_book() -> str:
    local = Path(sys.executable).parent / "jupyter-book"
    found = str(local) if local.exists() else shutil.which("jupyter-book")
    if not found:
        pytest.fail("jupyter-book is not installed: run `make test`, which bootstraps .venv")
    return found


def _build(path_output: Path | None = None, hide_solutions: bool = False) -> Path:
    env = {k: v for k, v in os.environ.items() if k != HIDE_SOLUTIONS_VAR}
    if hide_solutions:
        env[HIDE_SOLUTIONS_VAR] = "1"
    command = [_jupyter_book(), *BUILD_COMMAND]
    if path_output is not None:
        command += ["--path-output", str(path_output)]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800
    )
    log = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)  # no colour codes
    if done.returncode != 0:
        problems = [line for line in log.splitlines() if re.search(r"WARNING|ERROR|SEVERE", line)]
        tail = "\n".join(log.splitlines()[-40:])
        pytest.fail(
            f"`jupyter-book {' '.join(BUILD_COMMAND)}` failed (exit {done.returncode})"
            + (" with ADCOURSE_HIDE_SOLUTIONS=1" if hide_solutions else "")
            + ".\nWarnings and errors:\n"
            + "\n".join(problems[:60])
            + f"\n--- last lines of the log ---\n{tail}",
            pytrace=False,
        )
    return (path_output or REPO) / "_build" / "html"


@pytest.fixture(scope="session")
def built_book() -> Path:
    """Build the book once per session, warnings as errors; fail with the log on any warning."""
    html_dir = _build()
    assert (html_dir / "index.html").is_file()
    return html_dir


# --- serving and browsing -------------------------------------------------------------------


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


@pytest.fixture(scope="session")
def server(built_book):
    handler = functools.partial(_QuietHandler, directory=str(built_book))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"headless Chromium is needed for the browser test, missing: {', '.join(missing)}. "
            "Run `make test`: its bootstrap installs them "
            "(apt-get install -y chromium chromium-driver).",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager reach the network
    profile = tempfile.mkdtemp(prefix="adcourse-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


class _Anchors(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key == "id" or (tag == "a" and key == "name"):
                self.ids.add(value or "")


@functools.lru_cache(maxsize=None)
def _anchors(path: Path) -> frozenset[str]:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def _broken_internal_links(page_file: Path, hrefs: list[str], root: Path) -> list[str]:
    broken = []
    base = "/" + page_file.relative_to(root).as_posix()
    for href in sorted(set(hrefs)):
        if not href or href.startswith("//") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", href):
            continue  # external (http:, mailto:, javascript: ...)
        target = urlsplit(urljoin(base, href))
        path = unquote(target.path)
        file = root / path.lstrip("/")
        if path.endswith("/"):
            file = file / "index.html"
        if not file.is_file():
            broken.append(f"{href} -> {path} does not exist in the build")
            continue
        fragment = unquote(target.fragment)
        if fragment and file.suffix == ".html" and fragment not in _anchors(file):
            broken.append(f"{href} -> no element with id '{fragment}' in {path}")
    return broken


WAIT_FOR_MATHJAX = """
const done = arguments[arguments.length - 1];
if (!document.querySelector('.math')) { done('no math'); return; }
const start = Date.now();
(function poll() {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(() => done('typeset'), (e) => done('error: ' + e));
  } else if (Date.now() - start > 20000) {
    done('MathJax never loaded');
  } else {
    setTimeout(poll, 100);
  }
})();
"""

PAGE_FACTS = r"""
const skip = new Set(['PRE', 'CODE', 'SCRIPT', 'STYLE', 'TEXTAREA', 'MJX-CONTAINER']);
const texts = [];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
  acceptNode(node) {
    for (let el = node.parentElement; el; el = el.parentElement) {
      if (skip.has(el.tagName)) return NodeFilter.FILTER_REJECT;
    }
    return NodeFilter.FILTER_ACCEPT;
  }
});
while (walker.nextNode()) texts.push(walker.currentNode.nodeValue);
const launch = document.querySelector('.dropdown-launch-buttons button, .dropdown-launch-buttons');
return {
  hrefs: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
  brokenImages: Array.from(document.images)
      .filter(img => !(img.complete && img.naturalWidth > 0))
      .map(img => img.getAttribute('src')),
  images: document.images.length,
  mathNodes: document.querySelectorAll('.math').length,
  mathjaxOutput: document.querySelectorAll('mjx-container').length,
  mathjaxErrors: Array.from(document.querySelectorAll('mjx-merror'))
      .map(e => e.getAttribute('data-mjx-error') || e.textContent),
  text: texts.join(' '),
  colab: Array.from(document.querySelectorAll('a[href*="colab.research.google.com"]'))
      .map(a => a.getAttribute('href')),
  launchVisible: !!(launch && launch.offsetParent !== null),
};
"""

RAW_TEX = [
    (re.compile(r"\$\$"), "$$"),
    (re.compile(r"\\\(|\\\)"), r"\( or \)"),
    (re.compile(r"\\\[|\\\]"), r"\[ or \]"),
    (re.compile(r"\\begin\{"), r"\begin{"),
    (re.compile(r"\$[^$\n]*[\\^_][^$\n]*\$"), "$...$ with TeX inside"),
]


def _wait_for_images(driver, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && "
            "Array.from(document.images).every(img => img.complete)"
        )
    )


def _full_page_screenshot(driver, path: Path) -> None:
    """Grow the viewport to the page's height (sticky sidebars included), then capture it."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    width = driver.execute_script("return window.innerWidth")
    height = max(1, min(int(size["height"]), MAX_SCREENSHOT_HEIGHT))
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


# --- the tests ------------------------------------------------------------------------------


def test_book_builds_with_warnings_as_errors(built_book):
    missing = [page for page in PAGES if not (built_book / f"{page}.html").is_file()]
    assert not missing, f"pages of _toc.yml missing from the build: {missing}"


def test_toc_has_the_chapters():
    assert PAGES[0] == "book/intro"
    assert "book/references" in PAGES and "book/instructors" in PAGES
    assert any(is_chapter(page) for page in PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_page_in_browser(page, browser, server, built_book):
    driver = browser
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(f"{server}/{page}.html")
    _wait_for_images(driver)
    mathjax_state = driver.execute_async_script(WAIT_FOR_MATHJAX)
    facts = driver.execute_script(PAGE_FACTS)
    _full_page_screenshot(driver, SCREENSHOTS / f"{Path(page).name}.png")
    console = [
        entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"
    ]

    problems = []
    for src in facts["brokenImages"]:
        problems.append(f"image did not load: {src}")
    for link in _broken_internal_links(built_book / f"{page}.html", facts["hrefs"], built_book):
        problems.append(f"broken internal link: {link}")
    if facts["mathNodes"]:
        if mathjax_state != "typeset":
            problems.append(f"MathJax did not typeset the page: {mathjax_state}")
        if facts["mathjaxOutput"] < facts["mathNodes"]:
            problems.append(
                f"{facts['mathNodes']} math elements but only {facts['mathjaxOutput']} rendered"
            )
    for error in facts["mathjaxErrors"]:
        problems.append(f"MathJax error: {error}")
    for pattern, label in RAW_TEX:
        match = pattern.search(facts["text"])
        if match:
            around = " ".join(facts["text"][max(0, match.start() - 40) : match.end() + 40].split())
            problems.append(f"raw TeX delimiter {label} visible: ...{around}...")
    for message in console:
        problems.append(f"browser console SEVERE: {message}")
    if is_chapter(page):
        url, branch = repository_url()
        owner_repo = urlsplit(url).path.strip("/")
        expected = (
            f"https://colab.research.google.com/github/{owner_repo}/blob/{branch}/{page}.ipynb"
        )
        if expected not in facts["colab"]:
            problems.append(f"no Colab launch link to {expected} (found {facts['colab']})")
        if not facts["launchVisible"]:
            problems.append("the launch-buttons menu (rocket) is not visible")

    assert not problems, f"{page}.html:\n  " + "\n  ".join(problems)


def test_solutions_shown_in_the_book_and_hidden_on_request(built_book, tmp_path_factory):
    """The default build shows solutions; ADCOURSE_HIDE_SOLUTIONS=1 builds a book without them."""
    chapters = [page for page in PAGES if is_chapter(page)]
    full = {page: (built_book / f"{page}.html").read_text() for page in chapters}
    with_solutions = [p for p, text in full.items() if 'class="solution' in text or "tag_solution" in text]
    if not with_solutions:
        pytest.skip("no chapter has a solution yet")
    hidden_html = _build(tmp_path_factory.mktemp("nosolutions"), hide_solutions=True)
    for page in with_solutions:
        text = (hidden_html / f"{page}.html").read_text()
        assert 'class="solution' not in text, f"{page}: a {{solution}} is still shown"
        assert "tag_solution" not in text, f"{page}: a code cell tagged 'solution' is still shown"
        assert "BEGIN SOLUTION" not in text, f"{page}: solution code is still shown"
        assert 'class="exercise' in text, f"{page}: the exercises went too"
    # in the full book, solution code cells are folded behind a toggle
    for page in with_solutions:
        if "tag_solution" in full[page]:
            assert "Show solution" in full[page], f"{page}: solution code cell is not folded"
