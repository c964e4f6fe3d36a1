"""A bounded load generator for ``dctnet-lite serve`` on 127.0.0.1 (docs/serving.md, "Measured").

For each concurrency level, that many client threads (each with its own keep-alive connection)
POST the same photo to ``/v1/cartoonize`` until the level's request budget is spent or its time
cap passes, whichever comes first; then the next level. Nothing runs unbounded: every level
stops by itself and every request has a timeout. Reported per level: throughput (answered
requests / wall seconds), latency p50 / p99 (nearest rank), the mean images per forward (the
``X-Dctnet-Batch-Size`` header) and the errors.

With ``--start``, the script starts one service per ``--modes`` entry (``batching``:
``--max-batch 8 --max-wait-ms 5``; ``no-batching``: ``--max-batch 1``), each on a free port of
127.0.0.1 without a cache (every request runs the model), waits for their ``/healthz``, and
stops them with SIGTERM at the end. The modes take turns level by level, ``--rounds`` times
(the order swapped each round), and each row pools its rounds: on a machine whose load
changes, the drift falls on every mode alike::

    python3 eval/serve_load.py --start --modes batching no-batching --concurrency 1 4 16 \\
        --size 256 --out eval/reports/serve_load/cpu.json

Without ``--start`` it measures a service already running at ``--url`` (one mode, as it is).
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Dict, List, Optional

MODES = {"batching": ["--max-batch", "8", "--max-wait-ms", "5"], "no-batching": ["--max-batch", "1"]}


def percentile(values: List[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))]


def multipart(image: bytes, name: str, fields: Dict[str, str]):
    boundary = "dctnetload" + os.urandom(8).hex()
    parts = []
    for k, v in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                 f'Content-Type: application/octet-stream\r\n\r\n'.encode() + image + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def run_level(url: str, body: bytes, ctype: str, concurrency: int, requests: int, cap_s: float,
              timeout_s: float) -> dict:
    u = urllib.parse.urlsplit(url)
    lock = threading.Lock()
    budget = {"left": requests}
    lat: List[float] = []
    batch: List[int] = []
    errors: Dict[str, int] = {}
    deadline = time.monotonic() + cap_s

    def take() -> bool:
        with lock:
            if budget["left"] <= 0 or time.monotonic() > deadline:
                return False
            budget["left"] -= 1
            return True

    def client():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout_s)
        while take():
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/cartoonize", body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                r.read()
                dt = time.perf_counter() - t0
                with lock:
                    if r.status == 200:
                        lat.append(dt)
                        batch.append(int(r.getheader("X-Dctnet-Batch-Size") or 0))
                    else:
                        errors[str(r.status)] = errors.get(str(r.status), 0) + 1
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout_s)
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(cap_s + timeout_s + 5)
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "latencies": lat, "batches": batch, "errors": errors, "wall_s": wall,
            "stopped_by": "budget" if budget["left"] <= 0 else "time cap"}


def summarize(concurrency: int, runs: List[dict]) -> dict:
    """One row from the rounds of a (mode, concurrency): latencies pooled, throughput = all
    answered requests / all wall seconds."""
    lat = [x for r in runs for x in r["latencies"]]
    batch = [x for r in runs for x in r["batches"]]
    wall = sum(r["wall_s"] for r in runs)
    errors: Dict[str, int] = {}
    for r in runs:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    out = {"concurrency": concurrency, "answered": len(lat), "errors": errors, "wall_s": round(wall, 2),
           "rounds": len(runs), "stopped_by": sorted({r["stopped_by"] for r in runs}),
           "round_throughput_rps": [round(len(r["latencies"]) / r["wall_s"], 3) for r in runs if r["wall_s"] > 0]}
    if lat:
        out.update(throughput_rps=round(len(lat) / wall, 3), p50_ms=round(percentile(lat, 50) * 1e3, 1),
                   p99_ms=round(percentile(lat, 99) * 1e3, 1), mean_ms=round(statistics.fmean(lat) * 1e3, 1),
                   mean_batch=round(statistics.fmean(batch), 2), max_batch_seen=max(batch))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(args, mode: str):
    port = free_port()
    cmd = [sys.executable, "-m", "dctnet_lite", "serve", "--port", str(port), "--precision", args.precision,
           "--log-level", "warning", *MODES[mode], *args.serve_args]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 180:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited: {proc.stderr.read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc, url, cmd
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the service did not start within 180 s")


def stop_service(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    except ImportError:
        pass
    return info


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="a running service (without --start)")
    ap.add_argument("--start", action="store_true", help="start the service for each --mode (and stop it)")
    ap.add_argument("--modes", nargs="+", default=["batching", "no-batching"], choices=list(MODES))
    ap.add_argument("--checkpoint", default=None, help="checkpoint to serve with --start (default: the shipped one)")
    ap.add_argument("--precision", default="fp32", help="precision to serve with --start (default fp32)")
    ap.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[],
                    help="more flags for dctnet-lite serve (last on the line)")
    ap.add_argument("--image", default=None, help="the photo to send (default: the shipped sample, 512x512)")
    ap.add_argument("--size", default=None, help="the size option of each request (default: the photo's)")
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=None,
                    help="answered-request budget per level (default max(16, 4 x concurrency))")
    ap.add_argument("--warmup", type=int, default=2, help="requests before each mode, not counted")
    ap.add_argument("--cap-s", type=float, default=120.0, help="time cap per level (seconds)")
    ap.add_argument("--timeout-s", type=float, default=120.0, help="per-request client timeout")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over all levels and modes (pooled)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    if args.image is None:
        from dctnet_lite.sample import sample_portrait

        args.image = str(sample_portrait())
    image = Path(args.image).read_bytes()
    fields = {"size": str(args.size)} if args.size else {}
    body, ctype = multipart(image, Path(args.image).name, fields)
    report = {"machine": machine(), "image": Path(args.image).name, "size": args.size,
              "rounds": args.rounds, "modes": {}}
    modes = args.modes if args.start else ["as-running"]
    services = {}
    try:
        for mode in modes:  # every mode's service up front: an idle one costs memory, not CPU
            if args.start:
                proc, url, cmd = start_service(args, mode)
                services[mode] = (proc, url)
                report["modes"][mode] = {"command": " ".join(["dctnet-lite"] + cmd[3:])}
            else:
                services[mode] = (None, args.url)
                report["modes"][mode] = {}
            run_level(services[mode][1], body, ctype, 1, args.warmup, args.cap_s, args.timeout_s)
        raw: Dict[tuple, List[dict]] = {}
        for rnd in range(args.rounds):
            for c in args.concurrency:
                # the modes take turns level by level (and swap the order each round), so a
                # change in the machine's load falls on all of them alike
                for mode in (modes if rnd % 2 == 0 else modes[::-1]):
                    n = args.requests or max(16, 4 * c)
                    r = run_level(services[mode][1], body, ctype, c, n, args.cap_s, args.timeout_s)
                    raw.setdefault((mode, c), []).append(r)
                    lat = r["latencies"]
                    print(f"round {rnd + 1} {mode:12s} c={c:<3d} {len(lat) / r['wall_s']:7.2f} req/s  p50 "
                          f"{(percentile(lat, 50) * 1e3) if lat else 0:8.1f} ms  ({len(lat)} answered, "
                          f"errors {r['errors']})", flush=True)
        for mode in modes:
            report["modes"][mode]["levels"] = [summarize(c, raw[(mode, c)]) for c in args.concurrency]
    finally:
        for proc, _ in services.values():
            if proc is not None:
                stop_service(proc)
    report["machine"]["loadavg_end"] = os.getloadavg()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("\n| mode | clients | throughput (req/s) | p50 (ms) | p99 (ms) | mean batch | answered |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, m in report["modes"].items():
        for r in m.get("levels", []):
            print(f"| {mode} | {r['concurrency']} | {r.get('throughput_rps', 0):.2f} | {r.get('p50_ms', 0):.0f} | "
                  f"{r.get('p99_ms', 0):.0f} | {r.get('mean_batch', 0):.2f} | {r['answered']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
