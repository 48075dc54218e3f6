#!/usr/bin/env python3
"""What one request costs coxp, measured in ways a busy machine does not disturb (issue 16).

Req/s on a machine shared with test suites swings 3-5x between runs; the cost of a request does
not. Two measures, each for one or more coxp source trees (A/B, interleaved):

  instructions  coxp runs under `valgrind --tool=callgrind` with instrumentation off; after a
                warm-up it is switched on (`callgrind_control -i on`), a fixed number of
                requests is sent, and the instructions executed in user space (Python, uvloop,
                httptools, orjson, libc) are divided by that number. Deterministic to ~0.5 %.
  cpu           coxp runs natively on CPU 0; `wrk` loads it for a few seconds from CPU 1; the
                process's utime+stime (/proc/PID/stat) divided by the requests served. Includes
                the kernel's share (syscalls, TCP); noisier (other tenants share caches).

    .venv/bin/python bench/cost.py --src . --src /tmp/base --workload preflight --requests 3000
    .venv/bin/python bench/cost.py --mode cpu --src . --src /tmp/base --workload small --rounds 5

`--src DIR` is a checkout whose `proxy` package is imported (PYTHONPATH); `--rev REV` exports
that git revision to a temporary directory first. The origin is the bench nginx (bench/run.py).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402  (bench/run.py: origin, wrk, process handling)

KiB = 1024
KEEP_DUMPS = os.environ.get("COST_KEEP_DUMPS")  # a directory: keep each callgrind profile there
PATHS = {"small": "/api/small.json", "preflight": "/api/small.json", "100k": "/files/100k.bin",
         "1m": "/files/1m.bin"}


def request_bytes(workload: str, port: int) -> bytes:
    method = "OPTIONS" if workload == "preflight" else "GET"
    lines = [f"{method} {PATHS[workload]} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Origin: {bench.ORIGIN}"]
    if workload == "preflight":
        lines += ["Access-Control-Request-Method: PUT", "Access-Control-Request-Headers: x-custom"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _one_connection(port: int, raw: bytes, count: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while count[0] > 0:
            count[0] -= 1
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if status != 204 and match is None:
                raise SystemExit(f"response without Content-Length: {head[:200]!r}")
            if match:
                await reader.readexactly(int(match.group(1)))
            if status >= 400:
                raise SystemExit(f"status {status}")
    finally:
        writer.close()


def send(port: int, workload: str, requests: int, connections: int) -> None:
    """`requests` requests over `connections` keep-alive connections, each waiting for its answer."""
    raw = request_bytes(workload, port)
    count = [requests]

    async def main() -> None:
        await asyncio.gather(*(_one_connection(port, raw, count) for _ in range(connections)))

    asyncio.run(main())


def coxp_config(work: Path, name: str) -> Path:
    conf = work / f"{name}.toml"
    conf.write_text((HERE / "coxp.toml").read_text())
    return conf


def start_coxp(src: Path, work: Path, name: str, origin_port: int, valgrind: bool) -> tuple:
    port = bench.free_port()
    # -P: the source tree comes from PYTHONPATH, not from the working directory (the repository).
    argv = [sys.executable, "-P", "-m", "proxy", "run", "-c", str(coxp_config(work, name)),
            "--listen", f"127.0.0.1:{port}", "--upstream", f"http://127.0.0.1:{origin_port}"]
    if valgrind:
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={work}/{name}.cg.%p",
                ] + argv
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONHASHSEED="0")
    p = bench.PROCS.start(name, argv, cpu=None if valgrind else 0, stdout_path=None,
                          stderr_path=work / f"{name}.stderr", env=env)
    if not bench.wait_ready(name, p, port, work / f"{name}.stderr", timeout=120):
        raise SystemExit(f"{name} did not start")
    return p, port


def callgrind(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def instructions(src: Path, work: Path, name: str, origin_port: int, workload: str, requests: int,
                 connections: int) -> float:
    p, port = start_coxp(src, work, name, origin_port, valgrind=True)
    try:
        send(port, workload, max(200, requests // 10), connections)  # warm-up: caches, pools, imports
        callgrind(p.pid, "-i", "on")
        send(port, workload, 50, connections)  # re-translate the hot code with instrumentation
        callgrind(p.pid, "-z")
        send(port, workload, requests, connections)
        callgrind(p.pid, "-d")
        dumps = sorted(work.glob(f"{name}.cg.{p.pid}*"), key=lambda f: f.stat().st_mtime)
        if KEEP_DUMPS:
            shutil.copy(dumps[-1], Path(KEEP_DUMPS) / f"{workload}-{name}.callgrind")
        text = dumps[-1].read_text(errors="replace")
        match = re.search(r"(?m)^(?:summary|totals):\s*(\d+)", text)
        if match is None:
            raise SystemExit(f"no totals in {dumps[-1]}")
        return int(match.group(1)) / requests
    finally:
        bench.PROCS.stop(p)


def cpu_ticks(pid: int) -> tuple[int, int, int]:
    """utime and stime of `pid` (clock ticks) and its minor page faults."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12]), int(fields[7])


def cpu_per_request(port: int, pid: int, work: Path, workload: str, duration: int, connections: int) -> tuple:
    wl = {"method": "OPTIONS" if workload == "preflight" else "GET", "path": PATHS[workload],
          "headers": dict([line.split(": ", 1) for line in request_bytes(workload, port).decode().split("\r\n")[2:] if line])}
    wrk = bench.Wrk(work, connections, 1)
    wrk.run(port, wl, 1)
    user, system, faults = cpu_ticks(pid)
    res = wrk.run(port, wl, duration)
    user_after, system_after, faults_after = cpu_ticks(pid)
    per_request = 1e6 / os.sysconf("SC_CLK_TCK") / res["requests"]
    return ((user_after - user + system_after - system) * per_request, res["rps"],
            (system_after - system) * per_request, (faults_after - faults) / res["requests"])


def export(rev: str, root: Path) -> Path:
    sha = subprocess.run(["git", "-C", str(bench.REPO), "rev-parse", "--short", rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    dest = root / sha
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(bench.REPO), "archive", sha, "proxy"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", action="append", default=[], help="a checkout to measure (repeatable)")
    ap.add_argument("--rev", action="append", default=[], help="a git revision to measure (repeatable)")
    ap.add_argument("--mode", choices=("instructions", "cpu"), default="instructions")
    ap.add_argument("--workload", action="append", choices=sorted(PATHS), help="repeatable; default small+preflight")
    ap.add_argument("--requests", type=int, default=2000, help="requests counted (instructions mode)")
    ap.add_argument("--duration", type=int, default=4, help="seconds per run (cpu mode)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    workloads = args.workload or ["small", "preflight"]
    bench.atexit.register(bench.PROCS.stop_all)
    work = Path(tempfile.mkdtemp(prefix="coxp-cost-"))
    try:
        sources = [(s, Path(s).resolve()) for s in args.src] + [(r, export(r, work / "src")) for r in args.rev]
        if not sources:
            sources = [(".", bench.REPO)]
        root = work / "www"
        (root / "api").mkdir(parents=True)
        (root / "files").mkdir()
        (root / "api" / "small.json").write_text('{"ok":true,"service":"coxp-bench","items":[1,2,3,4,5],'
                                                 '"message":"hello from the origin, about one hundred bytes"}')
        (root / "files" / "100k.bin").write_bytes(os.urandom(100 * KiB))
        (root / "files" / "1m.bin").write_bytes(os.urandom(1024 * KiB))
        origin_port = bench.free_port()
        bench.start_nginx("origin", HERE / "nginx-origin.conf", work, origin_port, 0, ROOT=root)
        time.sleep(0.3)
        results: dict[tuple[str, str], list[float]] = {}
        natives = {}
        if args.mode == "cpu":
            for i, (label, src) in enumerate(sources):
                natives[label] = start_coxp(src, work, f"coxp{i}", origin_port, valgrind=False)
        for rnd in range(args.rounds):
            for workload in workloads:
                for i, (label, src) in enumerate(sources if rnd % 2 == 0 else sources[::-1]):
                    if args.mode == "instructions":
                        value = instructions(src, work, f"cg{i}", origin_port, workload, args.requests,
                                             args.connections)
                        extra = ""
                    else:
                        p, port = natives[label]
                        value, rps, kernel, faults = cpu_per_request(port, p.pid, work, workload, args.duration,
                                                                     args.connections)
                        extra = f" (of which kernel {kernel:,.1f}; {faults:,.1f} page faults; {rps:,.0f} req/s)"
                    results.setdefault((workload, label), []).append(value)
                    unit = "instructions" if args.mode == "instructions" else "CPU µs"
                    print(f"round {rnd + 1} {workload:9s} {label:30s} {value:12,.1f} {unit}/request{extra}",
                          file=sys.stderr, flush=True)
        print(f"\nmedian {args.mode} per request ({args.rounds} rounds):")
        for workload in workloads:
            base = None
            for label, _ in sources:
                value = statistics.median(results[(workload, label)])
                base = base or value
                print(f"  {workload:9s} {label:30s} {value:12,.1f}  {value / base:6.3f}x of the first")
        return 0
    finally:
        bench.PROCS.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
