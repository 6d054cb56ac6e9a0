"""Frames per second of ``nfldm view``: the renderer alone, and end to end through the server.

1. render only: :class:`nfldm.viewer.live.LiveRenderer` drawing the scene from poses along its
   camera path, square views of each height (median of ``--frames`` frames after a warm-up);
2. end to end: the viewer served on a free local port, a headless client
   (:class:`nfldm.viewer.client.ViewerClient`, what the browser sends) flying the camera along the
   path, sending the next pose as soon as the last frame arrived: frames received per second
   (render + JPEG + websocket), for each height.

    python benchmarks/viewer_fps.py --src out/s_ft --threads 2
"""

from __future__ import annotations

import argparse
import math
import socket
import statistics
import time

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, help="what nfldm view shows (a sample folder, samples, ...)")
    ap.add_argument("--heights", default="32,64,96,128", help="view heights (square views)")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--seconds", type=float, default=6.0, help="end-to-end seconds per height")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from nfldm.viewer.client import ViewerClient
    from nfldm.viewer.live import viser_from_c2w
    from nfldm.viewer.server import Viewer, ViewerConfig

    heights = [int(h) for h in args.heights.split(",")]
    port = free_port()
    viewer = Viewer(args.src, ViewerConfig(port=port, device=args.device)).start()
    path = viewer.scene.path
    fov = viewer.fov_y()
    rows = []
    try:
        for h in heights:                                  # 1. the renderer alone
            times = []
            for k in range(args.frames + 5):
                _, _, dt = viewer.renderer.render(path[k % len(path)], fov, h, 1.0)
                if k >= 5:
                    times.append(dt)
            rows.append({"height": h, "render_ms": 1000 * statistics.median(times)})
        with ViewerClient(f"ws://127.0.0.1:{port}") as c:  # 2. end to end
            c.wait_for("ReplayDoneMessage")
            c.send_camera((0.0, 0.0, 1.6), (1.0, 0.0, 0.0, 0.0), fov, (480, 480))
            while not viewer.clients:
                time.sleep(0.05)
            cv = next(iter(viewer.clients.values()))
            for row in rows:
                cv.resolution.value = row["height"]
                time.sleep(0.5)
                n0, t0, k = c.count("BackgroundImageMessage"), time.perf_counter(), 0
                while time.perf_counter() - t0 < args.seconds:
                    n = c.count("BackgroundImageMessage")
                    wxyz, pos = viser_from_c2w(path[k % len(path)])
                    c.send_camera(pos, wxyz, fov, (480, 480))
                    k += 1
                    c.wait_for("BackgroundImageMessage", after=n, timeout=30)
                got = c.count("BackgroundImageMessage") - n0
                row["e2e_fps"] = got / (time.perf_counter() - t0)
    finally:
        viewer.stop()
    print(f"scene {viewer.scene.name} ({viewer.scene.folder}), device {args.device}, torch threads "
          f"{torch.get_num_threads()}, vertical fov {math.degrees(fov):.0f} deg")
    print("| view (px) | render only: ms / frames per s | end to end (server + websocket): frames per s |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['height']} x {r['height']} | {r['render_ms']:.1f} ms / {1000 / r['render_ms']:.0f} | "
              f"{r['e2e_fps']:.1f} |")


if __name__ == "__main__":
    main()
