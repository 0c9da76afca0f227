"""Jaeger's UI in a real browser, as a person uses it: headless Chromium (Debian's chromium and
chromium-driver) driven by Selenium.

Every step clicks or types what a person would, then waits for what the page shows; reads are of
the page's text (what a person sees), never of Jaeger's API. For tests that look at otelproc's
spans in Jaeger: test_jaeger_ui.py, test_live_tree.py, and any later one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from support import REPO

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
UI_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "otelproc" / "jaeger-ui-v1.76.0"
BUILD_UI = REPO / "deploy" / "jaeger" / "build-ui.sh"
# As root Chromium needs --no-sandbox; without the background-networking flags it keeps trying to
# reach Google's hosts, which a closed network refuses. A scale factor of 1: a screenshot has the
# window's size in pixels.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)
T = TypeVar("T")


def ui_assets() -> Path:
    """The Jaeger UI's static files (deploy/jaeger/build-ui.sh makes and caches them)."""
    if BUILD_UI.exists():
        result = subprocess.run([str(BUILD_UI), "--print-path"], capture_output=True, text=True, timeout=30)
        if result.returncode == 0:
            return Path(result.stdout.strip())
    if (UI_CACHE / "index.html").exists():
        return UI_CACHE
    pytest.fail(f"no Jaeger UI in {UI_CACHE}: build it (deploy/jaeger/build-ui.sh)", pytrace=False)


def require_browser() -> None:
    """Fails the test, with the line that says how to install what is missing, unless the browser
    is there: a browser test never skips."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver (./install.sh --test does)",
            pytrace=False,
        )


@dataclass(frozen=True)
class SearchResult:
    """One trace in the Search page's list: its title ("demo: GET /") and the trace id its link opens."""

    title: str
    trace_id: str
    text: str


@dataclass(frozen=True)
class SpanRow:
    """One span of the trace page's timeline: its service and its name (Jaeger's "operation")."""

    service: str
    name: str
    depth: int  # how deep in the tree it is drawn: 0 for a root
    span_id: str
    ancestors: tuple[str, ...]  # the ids its indent guides stand for (a root's one guide stands for none)
    matching: bool  # highlighted as what the page's Find (uiFind) looks for


class JaegerUI:
    """One browser on one Jaeger; close() ends it (and its profile directory). The page draws only
    the rows in the window: a tall window, for a trace with every span's detail open."""

    def __init__(self, base_url: str, screenshots: Path, width: int = 1280, height: int = 1000) -> None:
        self.base_url = base_url.rstrip("/")
        self.screenshots = screenshots
        self.width, self.height = width, height
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        try:
            self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        except WebDriverException:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> JaegerUI:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- waiting and reading -------------------------------------------------------------------

    def wait(self, check: Callable[[], T], what: str, timeout: float = 30) -> T:
        """Polls check() until it gives something true (a page that re-renders is read again);
        otherwise fails with what it waited for and the start of what the page shows (the page as
        it is in SCREENSHOTS/unseen.png)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = check()
            except (StaleElementReferenceException, WebDriverException):
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                self.save_as_is("unseen")
                raise AssertionError(
                    f"the browser waited {timeout} s for {what}; the page "
                    f"({self.driver.current_url}, title {self.driver.title!r}) shows:\n"
                    f"{self.text()[:1500]}"
                )
            time.sleep(0.3)

    def save_as_is(self, name: str) -> None:
        """The window as it is, as SCREENSHOTS/NAME.png, if the browser can still give it."""
        self.screenshots.mkdir(parents=True, exist_ok=True)
        try:
            self.driver.save_screenshot(str(self.screenshots / f"{name}.png"))
        except WebDriverException:
            pass

    def text(self) -> str:
        """All the text the page shows."""
        try:
            return self.driver.find_element(By.TAG_NAME, "body").text
        except WebDriverException:
            return ""

    def find(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def click(self, element: WebElement) -> None:
        """Scrolls the element to the middle of the window (not under the trace page's fixed header), clicks it."""
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        element.click()

    def screenshot(self, name: str, whole_trace: bool = False) -> Path:
        """The browser window, scrolled to the top of the page, as SCREENSHOTS/NAME.png; with
        whole_trace, the window first made as tall as the trace page down to its last span."""
        self.screenshots.mkdir(parents=True, exist_ok=True)
        self.driver.execute_script("window.scrollTo(0, 0)")
        path = self.screenshots / f"{name}.png"
        if not whole_trace:
            self.driver.save_screenshot(str(path))
            return path
        bottom = self.driver.execute_script(
            "return Math.max(...[...document.querySelectorAll('.span-row')].map(r => r.getBoundingClientRect().bottom));"
        )
        frame = self.driver.execute_script("return window.outerHeight - window.innerHeight;")
        self.driver.set_window_size(self.width, int(bottom) + frame + 12)
        try:
            time.sleep(0.3)  # the page redrawn to the new size
            self.driver.save_screenshot(str(path))
        finally:
            self.driver.set_window_size(self.width, self.height)
        return path

    # -- Search ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Jaeger's start page, the Search form; fails unless it is the Jaeger UI with its form."""
        self.driver.get(self.base_url + "/search")
        self.wait(
            lambda: self.find("div[name=service] input[role=combobox]"), "the Jaeger UI's Search form (a Service field)"
        )

    def search(self, service: str, tags: str = "") -> list[SearchResult]:
        """Search: picks the service in the Service field, types `tags` (logfmt, as the field's hint says) in
        the Tags field, Find Traces, and the traces listed."""
        field = self.find("div[name=service] input[role=combobox]")[0]
        self.wait(lambda: not self.find("div[name=service].ant-select-disabled"), "the Service field to be enabled")
        field.click()
        field.send_keys(service)
        option = self.wait(
            lambda: [o for o in self.find(".ant-select-item-option") if o.text.strip() == service],
            f"the service {service!r} among the Service field's choices",
        )[0]
        option.click()
        self.wait(
            lambda: self.find("div[name=service] .ant-select-content-value")[0].text == service,
            f"the Service field to show {service!r}",
        )
        if tags:
            self.find("input[name=tags]")[0].send_keys(tags)
        self.button("Find Traces").click()
        return self.wait(self.results, f"traces of {service!r} listed")

    def button(self, label: str) -> WebElement:
        return self.wait(
            lambda: [b for b in self.find("button") if b.text.strip() == label and b.is_enabled()],
            f"an enabled button {label!r}",
        )[0]

    def results(self) -> list[SearchResult]:
        """The traces the Search page lists, as shown."""
        found = []
        for item in self.find(".ResultItem"):
            link = item.find_element(By.CSS_SELECTOR, "a[href*='/trace/']")
            title = item.find_element(By.CSS_SELECTOR, ".ResultItemTitle--title").text
            excerpt = item.find_elements(By.CSS_SELECTOR, ".ResultItemTitle--idExcerpt")  # the short trace id
            title = title.removesuffix(excerpt[0].text).strip() if excerpt else title
            trace_id = link.get_attribute("href").split("/trace/")[1].split("?")[0]
            found.append(SearchResult(title=title, trace_id=trace_id, text=item.text))
        return found

    def open_result(self, trace_id: str) -> None:
        """Clicks the listed trace with that id, and waits for its page."""
        (item,) = [
            r
            for r in self.find(".ResultItem")
            if f"/trace/{trace_id}" in r.find_element(By.CSS_SELECTOR, "a[href*='/trace/']").get_attribute("href")
        ]
        self.click(item.find_element(By.CSS_SELECTOR, ".ResultItemTitle--title"))
        self.wait_trace(trace_id)

    # -- a trace --------------------------------------------------------------------------------

    def open_trace(self, trace_id: str, find: str | None = None) -> None:
        """A trace's page by its address, as a link or the Lookup by Trace ID field gives it; with
        `find` (a span id) in its Find field, as a link to one of its spans gives it."""
        self.driver.get(f"{self.base_url}/trace/{trace_id}" + (f"?uiFind={find}" if find else ""))
        self.wait_trace(trace_id)

    def wait_trace(self, trace_id: str) -> None:
        self.wait(
            lambda: f"/trace/{trace_id}" in self.driver.current_url and self.spans(),
            f"the page of trace {trace_id} with its spans",
        )
        time.sleep(0.5)  # the timeline draws its rows over a few frames

    def spans(self) -> list[SpanRow]:
        """The spans of the trace page's timeline, top to bottom, as shown."""
        rows = []
        for row in self.find(".span-row"):
            service = row.find_element(By.CSS_SELECTOR, ".span-svc-name").text
            name = row.find_element(By.CSS_SELECTOR, ".endpoint-name").text
            guides = row.find_elements(By.CSS_SELECTOR, ".SpanTreeOffset--indentGuide")
            # The timeline's rows are keyed by span id: "<id>--bar" for the span, "<id>--detail" for its detail.
            key = row.find_element(By.XPATH, "ancestor::div[@data-item-key][1]").get_attribute("data-item-key")
            rows.append(
                SpanRow(
                    service=service.split("\n")[0].strip(),
                    name=name.strip(),
                    depth=len(guides) - 1,
                    span_id=key.removesuffix("--bar"),
                    ancestors=tuple(g.get_attribute("data-ancestor-id") for g in guides),
                    matching="is-matching-filter" in (row.get_attribute("class") or ""),
                )
            )
        return rows

    def span(self, name: str, index: int = 0) -> SpanRow:
        """The index-th span called `name` on the page."""
        rows = [s for s in self.spans() if s.name == name]
        assert len(rows) > index, f"no span {name!r} (#{index}) on the page: {[s.name for s in self.spans()]}"
        return rows[index]

    def unfold_found(self) -> str:
        """The span a followed link points at (the page marks it found and folds its children, as it
        folds every span's that is not on the way to it): its children shown, as a click on its arrow
        shows them. The found span's name."""
        (row,) = self.wait(lambda: self.find(".span-row.is-matching-filter"), "the span the link points at")
        name = row.find_element(By.CSS_SELECTOR, ".endpoint-name").text.strip()
        toggle = row.find_elements(By.CSS_SELECTOR, ".SpanTreeOffset.is-parent")
        if toggle and toggle[0].get_attribute("aria-checked") != "true":
            before = len(self.spans())
            self.click(toggle[0])
            self.wait(lambda: len(self.spans()) > before, f"the children of span {name!r}")
        return name

    def span_details(self, name: str, index: int = 0, sections: tuple[str, ...] = ("Tags", "Process")) -> str:
        """Opens the detail of the index-th span called `name` (a click on its row; any other detail
        closed first), with `sections` unfolded; the detail's text."""
        return self.open_detail(self.span(name, index), sections).text

    def open_detail(self, span: SpanRow, sections: tuple[str, ...]) -> WebElement:
        """span_details' work: the opened detail itself, for reading more than its text."""
        for opened in self.find(".span-row a.span-name[aria-checked=true]"):
            self.click(opened)
        self.click(self.find(f"div[data-item-key='{span.span_id}--bar'] .span-row a.span-name")[0])
        detail = self.wait(
            lambda: self.find(f"div[data-item-key='{span.span_id}--detail'] .detail-info-wrapper"),
            f"the detail of span {span.name!r}",
        )[0]
        for section in sections:
            self.unfold(detail, section)
        return detail

    def unfold(self, detail: WebElement, section: str) -> None:
        """Unfolds a section of a span's detail (Tags, Process, Logs, References) unless it is open."""
        header = [
            h
            for h in detail.find_elements(
                By.CSS_SELECTOR, ".AccordianKeyValues--header, .AccordianReferences--header, .AccordianLogs--header"
            )
            if h.text.strip().startswith(section)
        ]
        assert header, f"the span's detail has no {section!r} section: {detail.text[:500]}"
        if header[0].get_attribute("aria-checked") != "true":
            self.click(header[0])

    def references(self, span: SpanRow) -> list[WebElement]:
        """The References of a span: its detail opened, only References unfolded; each reference as
        the link the page shows (its text: the reference type and the span id)."""
        detail = self.open_detail(span, ("References",))
        return self.wait(
            lambda: detail.find_elements(By.CSS_SELECTOR, ".ReferencesList--Item a"),
            f"the references of span {span.name!r}",
        )

    # -- Monitor ---------------------------------------------------------------------------------

    def open_monitor(self, service: str, span_kind: str) -> None:
        """The Monitor tab (from the top bar), with `service` and `span_kind` picked in its fields."""
        self.driver.get(self.base_url + "/search")
        tab = self.wait(lambda: [a for a in self.find("a") if a.text.strip() == "Monitor"], "the Monitor tab")[0]
        self.click(tab)
        self.pick(".select-a-service-input", service)
        self.pick(".span-kind-selector", span_kind)

    def pick(self, select_css: str, choice: str) -> None:
        """Picks `choice` in the drop-down field `select_css`, unless it shows it already."""
        field = self.wait(lambda: self.find(select_css), f"the field {select_css}")[0]
        if field.text.strip() == choice:
            return
        self.click(field)
        option = self.wait(
            lambda: [o for o in self.find(".ant-select-item-option") if o.text.strip() == choice],
            f"{choice!r} among the choices of {select_css}",
        )[0]
        option.click()
        self.wait(lambda: self.find(select_css)[0].text.strip() == choice, f"{select_css} to show {choice!r}")

    def operations(self) -> dict[str, list[str]]:
        """The Monitor tab's table of operations: name -> the cells after it as the page shows them
        (P95 latency, request rate, error rate, impact)."""
        table: dict[str, list[str]] = {}
        for row in self.find(".ant-table-row"):
            cells = [c.text.strip() for c in row.find_elements(By.CSS_SELECTOR, "td")]
            if cells:
                table[cells[0]] = cells[1:]
        return table

    def warnings(self) -> list[str]:
        """Every span's detail opened: the warnings the page shows there (an invalid parent span ID...)."""
        count = len(self.spans())
        self.driver.execute_script(
            "document.querySelectorAll('.span-row a.span-name[aria-checked=\"false\"]').forEach(a => a.click());"
        )
        self.wait(lambda: len(self.find(".detail-row")) == count, f"{count} span details open")
        for header in self.find(".AccordianWarnings--header"):
            self.driver.execute_script("arguments[0].click();", header)
        return [w.text for w in self.find(".AccordianWarnings")]

    def follow(self, link: WebElement) -> str:
        """Clicks a link to another trace (Jaeger opens it in a new tab, which becomes the one
        looked at); the trace id of the page it opened."""
        before = set(self.driver.window_handles)
        self.click(link)
        new = self.wait(lambda: set(self.driver.window_handles) - before, "a new tab for the link")
        self.driver.switch_to.window(new.pop())
        trace_id = self.wait(
            lambda: "/trace/" in self.driver.current_url and trace_id_in(self.driver.current_url),
            "the linked trace's page",
        )
        self.wait_trace(trace_id)
        return trace_id


def trace_id_in(url: str) -> str:
    """The trace id of a trace page's address."""
    match = re.search(r"/trace/([0-9a-f]+)", url)
    assert match, f"not a trace page: {url}"
    return match.group(1)
