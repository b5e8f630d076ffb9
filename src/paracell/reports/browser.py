"""A small headless-Chromium driver over the DevTools protocol, for checking reports.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol
commands from file descriptor 3 and writes replies and events to file
descriptor 4, each message a JSON object ended by a NUL byte. No port is
opened, so nothing but this process can talk to the browser.

The flags keep Chromium off the network (no background requests, component
updates or sync) and use a fresh profile directory that the caller owns.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paracell.errors import ParacellError

log = logging.getLogger("paracell.reports")

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)


class BrowserError(ParacellError):
    """Chromium is missing, did not start, or a protocol command failed."""


def find_chromium() -> str | None:
    """Return the path of a Chromium executable on PATH, or None."""
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageLoad:
    """Messages of one page load: console calls, uncaught exceptions and log entries."""

    console: list[dict[str, Any]] = field(default_factory=list)
    exceptions: list[dict[str, Any]] = field(default_factory=list)
    log_entries: list[dict[str, Any]] = field(default_factory=list)

    def errors(self) -> list[str]:
        """Return one line per console error, uncaught exception or error log entry."""
        lines = []
        for message in self.console:
            if message.get("type") in ("error", "assert"):
                texts = [
                    str(a.get("value", a.get("description", "")))
                    for a in message["args"]
                ]
                lines.append("console: " + " ".join(texts))
        for exception in self.exceptions:
            details = exception.get("exceptionDetails", {})
            # "text" is only "Uncaught"; the error itself is in "exception".
            description = details.get("exception", {}).get("description", "")
            lines.append(f"exception: {details.get('text', '')} {description}".strip())
        for entry in self.log_entries:
            item = entry.get("entry", {})
            if item.get("level") == "error":
                source, text = item.get("source"), item.get("text")
                lines.append(f"log ({source}): {text} {item.get('url', '')}")
        return lines


class Chromium:
    """One headless Chromium process with one page, driven over the DevTools pipe.

    Use as a context manager; leaving it closes the browser and kills it if
    it does not exit within a few seconds.
    """

    def __init__(
        self,
        user_data_dir: Path,
        executable: str | None = None,
        width: int = 1280,
        height: int = 900,
        timeout_s: float = 60.0,
    ) -> None:
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise BrowserError(
                "chromium not found on PATH",
                hint="install it, e.g. apt-get install chromium",
            )
        self.user_data_dir = user_data_dir
        self.width = width
        self.height = height
        self.timeout_s = timeout_s
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        self._session: str | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start Chromium and open one page target."""
        self.user_data_dir.mkdir(parents=True, exist_ok=True)
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # Copies above 10 cannot be overwritten by the dup2 calls below,
        # whichever low numbers the originals got.
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def place_pipes() -> None:
            # Runs in the child between fork and exec: the protocol pipes
            # must be descriptors 3 (commands in) and 4 (replies out).
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        assert self.executable is not None
        command = [
            self.executable,
            *FLAGS,
            f"--user-data-dir={self.user_data_dir}",
            f"--window-size={self.width},{self.height}",
            "about:blank",
        ]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=place_pipes,
            pass_fds=(3, 4),
        )
        os.close(child_in)
        os.close(child_out)
        self._write_fd = to_browser_w
        self._read_fd = from_browser_r
        version = self.command("Browser.getVersion")
        self.version = str(version.get("product", "unknown"))
        target = self.command("Target.createTarget", {"url": "about:blank"})
        attached = self.command(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.command(f"{domain}.enable", session=True)
        self.command(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": self.width,
                "height": self.height,
                "deviceScaleFactor": 1,
                "mobile": False,
            },
            session=True,
        )

    def close(self) -> None:
        """Close the browser; kill it if it has not exited after 5 s."""
        if self._process is None:
            return
        try:
            if self._process.poll() is None:
                self._send({"id": self._new_id(), "method": "Browser.close"})
                self._process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait()
        finally:
            for fd in (self._write_fd, self._read_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._process = None

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\0"
        while data:
            written = os.write(self._write_fd, data)
            data = data[written:]

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError(
                    f"chromium sent no reply within {self.timeout_s:g} s"
                )
            ready, _, _ = select.select([self._read_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._read_fd, 1 << 20)
            if not chunk:
                raise BrowserError("chromium closed the DevTools pipe (it exited)")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def command(
        self, method: str, params: dict[str, Any] | None = None, session: bool = False
    ) -> dict[str, Any]:
        """Send one protocol command and return its result; keep events that arrive."""
        message: dict[str, Any] = {
            "id": self._new_id(),
            "method": method,
            "params": params or {},
        }
        if session:
            message["sessionId"] = self._session
        self._send(message)
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise BrowserError(
                        f"{method} failed: {reply['error'].get('message')}"
                    )
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self._events.append(reply)

    def _wait_event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            for i, event in enumerate(self._events):
                if event["method"] == method:
                    return self._events.pop(i)
            event = self._receive(deadline)
            if "method" in event:
                self._events.append(event)

    def load(self, url: str) -> PageLoad:
        """Navigate to ``url``, wait for its load event, and return what it logged."""
        self._events.clear()
        result = self.command("Page.navigate", {"url": url}, session=True)
        if result.get("errorText"):
            raise BrowserError(f"{url}: navigation failed ({result['errorText']})")
        self._wait_event("Page.loadEventFired")
        # One round trip more lets messages sent during load arrive.
        self.command("Runtime.evaluate", {"expression": "1"}, session=True)
        page = PageLoad()
        for event in self._events:
            params = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled":
                page.console.append(params)
            elif event["method"] == "Runtime.exceptionThrown":
                page.exceptions.append(params)
            elif event["method"] == "Log.entryAdded":
                page.log_entries.append(params)
        return page

    def evaluate(self, expression: str) -> Any:
        """Evaluate a JavaScript expression in the page and return its value."""
        result = self.command(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=True,
        )
        if "exceptionDetails" in result:
            raise BrowserError(
                f"evaluation failed: {result['exceptionDetails'].get('text')}"
            )
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path, full_page: bool = True) -> tuple[int, int]:
        """Save a PNG of the page (the whole page by default); return its CSS size."""
        metrics = self.command("Page.getLayoutMetrics", session=True)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        width = int(size["width"]) if full_page else self.width
        height = int(size["height"]) if full_page else self.height
        shot = self.command(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": full_page,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            },
            session=True,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return width, height
