"""Serve the label app with uvicorn: what ``ghostmap label`` runs."""

from __future__ import annotations

import ipaddress
import socket
import threading
import webbrowser
from pathlib import Path
from typing import Callable, Iterable

from ghostmap.errors import GhostmapError

__all__ = ["DEMO_DIR", "prepare_demo", "is_loopback", "bind", "serve"]

#: Where ``ghostmap label --demo`` writes its simulated scan and labels.
DEMO_DIR = Path("ghostmap-label-demo")


def prepare_demo(folder: str | Path = DEMO_DIR, scan_shape: tuple[int, int] = (34, 206), detector: int = 128,
                 seed: int = 0, say: Callable[[str], None] = print) -> tuple[Path, Path]:
    """The demo's scan (simulated once, kept for later sessions) and its label file path."""
    from ghostmap.simulate import write_simulated_scan, write_truth_csv

    folder = Path(folder)
    scan_path, truth_path, labels_path = folder / "scan.npy", folder / "truth.csv", folder / "labels.csv"
    if not scan_path.exists():
        say(f"simulating a {scan_shape[0]} x {scan_shape[1]} scan (detector {detector}) into {folder}/ ...")
        truth = write_simulated_scan(scan_path, scan_shape, detector, seed=seed)
        write_truth_csv(truth_path, truth)
    return scan_path, labels_path


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: any free port), or a one-line error."""
    if not 0 <= port <= 65535:
        raise GhostmapError(f"--port must be 0-65535, got {port}")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise GhostmapError(f"cannot serve on host '{host}': {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = "; pass another --port" if exc.errno in (98, 48, 10048) else ""
        raise GhostmapError(f"cannot serve on {host}:{port} ({exc.strerror or exc}){hint}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = host if ":" not in host or host.startswith("[") else f"[{host}]"
    if host in ("0.0.0.0", "::", "[::]"):
        shown = "127.0.0.1"
    return f"http://{shown}:{port}/"


def serve(app, sock: socket.socket, url: str, open_browser: bool = False) -> None:
    """Run ``app`` on the bound socket until Ctrl+C (or SIGTERM)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3,
                            limit_concurrency=64, h11_max_incomplete_event_size=16 * 1024)
    server = uvicorn.Server(config)
    if open_browser:
        threading.Timer(0.8, webbrowser.open, args=(url,)).start()
    server.run(sockets=[sock])


def parse_classes(text: str | None) -> Iterable[str] | None:
    if text is None:
        return None
    return [c.strip() for c in text.split(",") if c.strip()]
