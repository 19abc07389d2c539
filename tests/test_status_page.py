"""The status page of a running worker, rendered by headless Chromium.

Chromium is a test requirement, not an optional extra: ``make test`` installs the Debian
``chromium`` package where it is missing, and this test fails (it is never skipped) when
no browser can be found. ``CHROMIUM=/path/to/chrome`` picks another one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

from spendwatch.ops import demo
from spendwatch.service.statuspage import PAGE
from tests.conftest import DETECTION_CONFIG, write_config
from tests.workers import CLI, free_port, http_get, wait_for

SILENCE = """
silences:
  - match: {rule: [tenant-daily]}
    start: 2026-11-16T00:00:00Z
    end: 2026-12-31T00:00:00Z
    reason: planned load test
    created_by: finops@example.com
owners:
  - {scope: {tenant: 'glob*'}, owner: team-globex@example.com}
"""


def chromium() -> str:
    found = os.environ.get("CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )
    assert found, "the status page test needs Chromium: `make test` installs it (apt chromium)"
    return found


def _browser(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    command = [
        chromium(),
        "--headless=new",
        "--no-sandbox",  # tests may run as root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


class _Rows(HTMLParser):
    """Rows of the rendered tables: (section id, row attributes, cell texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, dict[str, str | None], list[str]]] = []
        self.body: dict[str, str | None] = {}
        self._section = ""
        self._cells: list[str] | None = None
        self._attrs: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self.body = dict(attrs)
        elif tag == "section":
            self._section = dict(attrs).get("id") or ""
        elif tag == "tr":
            self._cells, self._attrs = [], dict(attrs)
        elif tag == "td" and self._cells is not None:
            self._cells.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._cells is not None:
            if self._cells:
                self.rows.append((self._section, self._attrs, self._cells))
            self._cells = None

    def handle_data(self, data: str) -> None:
        if self._cells:
            self._cells[-1] += data

    def section(self, name: str) -> list[tuple[dict[str, str | None], list[str]]]:
        return [(attrs, cells) for section, attrs, cells in self.rows if section == name]


def test_the_page_is_self_contained():
    text = PAGE.decode()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "no CDN: works offline"
    assert "innerHTML" not in text  # values go in as text, never as markup


def test_status_page_renders_budgets_anomalies_silences_and_deliveries(tmp_path: Path):
    # a spend spike in the last hours: still firing when the stream has been read
    stream = demo.generate(days=3, scale=0.2, seed=4, spike_at_hours=3 * 24 - 3)
    events = tmp_path / "events.jsonl"
    stream.write(str(events))
    alerts = tmp_path / "alerts.jsonl"
    port = free_port()
    text = (
        f"source:\n  type: jsonl\n  path: {events}\n  follow: true\n  poll_interval: 0.1\n"
        + DETECTION_CONFIG.format(
            dead_letter=tmp_path / "dead.jsonl", alerts=alerts, pricing=demo.pricing_yaml()
        ).replace("    min_value: 0.5\n", "    min_value: 0.5\n    drivers: [feature, model]\n")
        + SILENCE
        + f"server:\n  port: {port}\n"
    )
    config = write_config(tmp_path, text)
    worker = subprocess.Popen(
        [*CLI, "run", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: http_get(port, "/readyz")[0] == 200)
        wait_for(lambda: b'"tenant-spend"' in http_get(port, "/anomalies?status=firing")[1])
        wait_for(lambda: b'"sent":' in http_get(port, "/status.json")[1])
        # the page shows what the shards have published: wait for both tenants' budgets
        wait_for(
            lambda: all(
                name in http_get(port, "/budgets")[1] for name in (b'"acme"', b'"globex"')
            )
        )
        url = f"http://127.0.0.1:{port}/"
        status, body = http_get(port, "/")
        assert status == 200 and body == PAGE

        dumped = _browser("--dump-dom", url)
        assert dumped.returncode == 0, dumped.stderr[-2000:]
        page = _Rows()
        page.feed(dumped.stdout)
        assert page.body.get("data-loaded") == "1", dumped.stdout[-3000:]

        budgets = page.section("budgets")
        daily = [cells for attrs, cells in budgets if attrs.get("data-budget") == "tenant-daily"]
        assert {cells[1] for cells in daily} >= {"tenant=acme", "tenant=globex"}
        assert all(cells[4].startswith("$") and cells[5].startswith("$") for cells in daily)
        assert 'class="tick"' in dumped.stdout and 'class="forecast"' in dumped.stdout

        firing = [cells for attrs, cells in page.section("anomalies") if attrs.get("data-rule")]
        globex = [cells for cells in firing if cells[1] == "tenant=globex"]
        assert globex, firing
        assert "feature=" in globex[0][5] or "model=" in globex[0][5]  # drivers
        assert globex[0][6] == "team-globex@example.com"

        (silence,) = page.section("silences")
        assert "planned load test (finops@example.com)" in silence[1]
        assert silence[1][-1] == "active"

        receivers = {
            attrs.get("data-receiver"): cells for attrs, cells in page.section("deliveries")
        }
        assert int(receivers["file"][1]) > 0 and receivers["file"][-1] == "ok"

        shot = tmp_path / "status.png"
        taken = _browser(f"--screenshot={shot}", "--window-size=1280,900", url)
        assert taken.returncode == 0, taken.stderr[-2000:]
        png = shot.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", png[16:24]) == (1280, 900)
        assert len(png) > 30_000, "a rendered page, not a blank one"
        if os.environ.get("SPENDWATCH_SCREENSHOT"):
            shutil.copy(shot, os.environ["SPENDWATCH_SCREENSHOT"])
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr.decode()[-3000:]
