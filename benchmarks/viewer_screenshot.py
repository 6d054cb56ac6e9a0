"""A screenshot of ``nfldm view`` in headless Chromium (the picture in README and docs/viewer.md).

Starts the viewer of SRC on a free local port, opens the page in headless Chromium (Debian's
``chromium``: ``apt-get install chromium``) driven by Playwright (``pip install playwright``; its
own browser download is not needed: the system Chromium is used), waits for the live render,
walks forward with the W key and writes the screenshot; with --overview, also the mesh and the
camera path seen from above. Without
Playwright it falls back to ``chromium --headless --screenshot`` (no key presses).

    python benchmarks/viewer_screenshot.py --src out/s_ft --out docs/images/viewer.png \
        --overview docs/images/viewer_overview.png
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
                  "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    sys.exit("error: no Chromium found (Debian: apt-get install chromium)")


def _close_notifications(page) -> None:
    """Hide the page's notice that WebGL runs in software (true here, beside the point of the picture)."""
    page.add_style_tag(content="#webgl-software-rendering { display: none !important; }")


def shoot_playwright(url: str, out: Path, size: tuple[int, int], walk: float, overview: Path | None, frames) -> dict:
    """The page after walking forward (W) for ``walk`` seconds -> ``out``; with ``overview``, the mesh
    and camera path seen from above (the panel's mesh box and "Overview from above") -> ``overview``.
    ``frames()``: frames the server rendered so far. Returns {"walk_fps": frames rendered per second
    while W was held}."""
    rate = {}
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS[1:])
        page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        page.goto(url)
        page.wait_for_selector("text=Live view", timeout=60_000)
        time.sleep(3.0)
        page.mouse.click(size[0] * 0.3, size[1] * 0.6)   # focus the 3D view for the keys
        if walk > 0:
            f0, t0 = frames(), time.perf_counter()
            page.keyboard.down("KeyW")
            time.sleep(walk)
            page.keyboard.up("KeyW")
            rate["walk_fps"] = (frames() - f0) / (time.perf_counter() - t0)
        time.sleep(2.0)                                   # the last frame and the panel's 4 Hz pictures
        _close_notifications(page)
        page.screenshot(path=str(out))
        if overview is not None:
            page.get_by_text("Overview from above", exact=True).first.click()
            time.sleep(4.0)
            _close_notifications(page)
            page.screenshot(path=str(overview))
        browser.close()
    return rate


def shoot_cli(url: str, out: Path, size: tuple[int, int]) -> None:
    with tempfile.TemporaryDirectory() as prof:
        subprocess.run([chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={prof}", f"--window-size={size[0]},{size[1]}",
                        "--virtual-time-budget=15000", f"--screenshot={out}", url], check=True, timeout=120,
                       capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, help="what nfldm view shows (a sample folder, samples, a run, ...)")
    ap.add_argument("--out", default="docs/images/viewer.png")
    ap.add_argument("--size", default="1400x860", help="window WxH")
    ap.add_argument("--walk", type=float, default=0.6, help="seconds of holding W before the shot (frames/s measured)")
    ap.add_argument("--resolution", type=int, default=64, help="view height in rendered pixels")
    ap.add_argument("--start-frame", type=int, default=0, help="start at this frame of the scene's camera path")
    ap.add_argument("--overview", default=None, help="also write the mesh and path seen from above to this PNG")
    args = ap.parse_args()
    from nfldm.viewer.server import Viewer, ViewerConfig

    w, h = (int(v) for v in args.size.split("x"))
    port = free_port()
    viewer = Viewer(args.src, ViewerConfig(port=port, device="cpu", resolution=args.resolution,
                                                   start_frame=args.start_frame)).start()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            import playwright  # noqa: F401
            rate = shoot_playwright(viewer.url(), out, (w, h), args.walk, None if args.overview is None else
                                    Path(args.overview), lambda: viewer.frames)
            how = "playwright + chromium"
        except ImportError:
            shoot_cli(viewer.url(), out, (w, h))
            rate = {}
            how = "chromium --screenshot"
        frames = viewer.frames
    finally:
        viewer.stop()
    print(f"{out}: {w}x{h} screenshot of {viewer.url()} ({how}); frames rendered for the page: {frames}"
          + (f"; while W was held: {rate['walk_fps']:.1f} frames/s (view {args.resolution} px high, the window's "
             f"aspect; the browser's software WebGL on the same CPU)" if "walk_fps" in rate else ""))


if __name__ == "__main__":
    main()
