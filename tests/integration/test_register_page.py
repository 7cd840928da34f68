"""The exported transparency page, rendered by a real browser (headless Chromium) with no network: the
content is there, user input stays text, nothing runs, nothing is fetched, and the page is not blank.

Needs the Debian package ``chromium`` (``apt-get install -y chromium``, binary ``/usr/bin/chromium``).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from fedlink.governance import export_register

from ..unit.test_register import PURPOSE, SCRIPT_QUERY, build_federation_registers

WIDTH, HEIGHT = 1280, 2000


def chromium() -> str:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium not found: install the Debian package `chromium` (apt-get install -y chromium)")


def render(page: Path, profile: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on the page; the flags keep it off the network and away from the user's profile."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *mode,
        page.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


class Elements(HTMLParser):
    """Every element of a document with its attributes, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("register-page")
    page, _ = export_register(build_federation_registers(root / "fed"), root / "public")
    return page


def test_rendered_dom_shows_the_register_and_runs_nothing(exported: Path, tmp_path: Path) -> None:
    dom = render(exported, tmp_path / "profile", "--dump-dom").stdout
    parsed = Elements()
    parsed.feed(dom)
    text = "".join(parsed.text)

    assert parsed.named("h1") and len(parsed.named("h2")) == 8  # the sections, published outcomes included
    assert PURPOSE in text
    assert SCRIPT_QUERY in text  # shown as the text the analyst typed...
    assert "&lt;/code&gt;&lt;script&gt;" in dom  # ...because the browser parsed it as text, not markup
    assert parsed.named("script") == [] and parsed.named("iframe") == [] and parsed.named("object") == []
    assert "<b>South" not in dom and "<b>South</b>" in text

    charts = [a for a in parsed.named("svg") if a.get("class") == "chart"]
    assert len(charts) == 1 and parsed.named("title")
    assert len(parsed.named("polyline")) == 3  # one cumulative-epsilon line per node that spent budget

    # Self-contained: links only within the page, nothing loaded from anywhere.
    assert all((a.get("href") or "").startswith("#") for a in parsed.named("a"))
    assert not [a for _, a in parsed.tags if "src" in a or "srcset" in a]
    assert parsed.named("link") == []


def test_screenshot_is_a_readable_page(exported: Path, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    render(exported, tmp_path / "profile", f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}")
    image = png_rgb(shot)
    assert image.shape == (HEIGHT, WIDTH, 3)
    pixels = image.reshape(-1, 3).astype(np.int32)
    dark = int((pixels.sum(axis=1) < 200).sum())
    assert dark > 0.01 * len(pixels), "almost no text drawn: the page rendered blank"
    colours = np.unique((pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2])
    assert len(colours) > 50, "too few colours for a page with text, tables and a chart"
    # The first node's line in the chart (#0072B2) was drawn.
    assert int((np.abs(pixels - (0x00, 0x72, 0xB2)) <= 24).all(axis=1).sum()) > 200


def png_rgb(path: Path) -> np.ndarray:
    """Decode an 8-bit RGB or RGBA PNG (what Chromium writes) into a height x width x 3 array, without an
    imaging library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, chunks, header = 8, [], b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, "unexpected PNG format"
    channels = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), dtype=np.uint8).reshape(height, width * channels + 1)
    image = np.zeros((height, width * channels), dtype=np.uint8)
    previous = np.zeros(width * channels, dtype=np.uint8)
    for row in range(height):
        kind, line = raw[row, 0], raw[row, 1:]
        if kind == 0:
            out = line.copy()
        elif kind == 1:  # sub: a running sum along each channel, mod 256
            out = np.cumsum(line.reshape(width, channels), axis=0, dtype=np.uint64).astype(np.uint8).reshape(-1)
        elif kind == 2:  # up
            out = line + previous
        else:  # average and Paeth depend on the byte just decoded, so go byte by byte
            out = _unfilter_row(kind, line.tolist(), previous.tolist(), channels)
        image[row] = out
        previous = image[row]
    return image.reshape(height, width, channels)[:, :, :3]


def _unfilter_row(kind: int, line: list[int], previous: list[int], channels: int) -> np.ndarray:
    for i in range(len(line)):
        left = line[i - channels] if i >= channels else 0
        up = previous[i]
        if kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        else:
            corner = previous[i - channels] if i >= channels else 0
            estimate = left + up - corner
            pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
            line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
    return np.array(line, dtype=np.uint8)
