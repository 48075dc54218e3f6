#!/usr/bin/env python3
"""Side-by-side benchmark: coxp vs nginx vs Caddy vs the origin itself (issue 5).

Everything runs on 127.0.0.1, each server on its own free port, and stops by itself:
  origin   nginx, one worker, /api/small.json (~100 B), /files/100k.bin, /files/1m.bin  CPU 0
  coxp     `coxp run -c bench/coxp.toml` in front of the origin                     CPU 0
  coxp-w2  the same with `workers = 2`                                               unpinned
  nginx    nginx doing the same job (bench/nginx-proxy.conf)                         CPU 0
  caddy    Caddy doing the same job (bench/Caddyfile)                                CPU 0
  direct   the origin itself (the limit)
  wrk      -t 1 -c 64 --latency                                                      CPU 1

Before measuring, every proxy must emit the same CORS/CORP/COOP/COEP/Vary headers and status as
the reference (coxp when present) for the same requests, or the run aborts with a diff.
See bench/NOTES.md.
"""
from __future__ import annotations

import argparse
import atexit
import datetime as dt
import grp
import http.client
import json
import os
import platform
import pwd
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ORIGIN = "https://app.example.test"
MiB = 1024 * 1024

WORKLOADS = {
    "small": {
        "title": "small GET with Origin (~100 B JSON)",
        "method": "GET", "path": "/api/small.json",
        "headers": {"Origin": ORIGIN}, "unit": "req/s",
    },
    "preflight": {
        "title": "synthesized preflight (OPTIONS, Origin, ACRM PUT, ACRH x-custom)",
        "method": "OPTIONS", "path": "/api/small.json",
        "headers": {"Origin": ORIGIN, "Access-Control-Request-Method": "PUT",
                    "Access-Control-Request-Headers": "x-custom"},
        "unit": "req/s",
    },
    # Between the upstream read pause (64 KiB) and one socket read (256 KiB): a whole body that
    # arrives while reading is paused (the size where a pooled connection once stayed paused).
    "100k": {
        "title": "100 KiB body (GET with Origin)",
        "method": "GET", "path": "/files/100k.bin",
        "headers": {"Origin": ORIGIN}, "unit": "MB/s",
    },
    "1m": {
        "title": "1 MiB body (GET with Origin)",
        "method": "GET", "path": "/files/1m.bin",
        "headers": {"Origin": ORIGIN}, "unit": "MB/s",
    },
}
ALL_TARGETS = ["coxp", "coxp-w2", "nginx", "caddy", "direct"]
PROXIES = {"coxp", "coxp-w2", "nginx", "caddy"}
APT_PACKAGES = {"nginx": "nginx", "wrk": "wrk", "caddy": "caddy"}

# Requests whose policy headers must agree between proxies before anything is measured.
CHECKS = [
    ("small GET, allowed Origin", "GET", "/api/small.json", {"Origin": ORIGIN}),
    ("preflight, allowed", "OPTIONS", "/api/small.json",
     {"Origin": ORIGIN, "Access-Control-Request-Method": "PUT",
      "Access-Control-Request-Headers": "x-custom"}),
    ("100 KiB GET, allowed Origin", "GET", "/files/100k.bin", {"Origin": ORIGIN}),
    ("1 MiB GET, allowed Origin", "GET", "/files/1m.bin", {"Origin": ORIGIN}),
    ("small GET, other Origin", "GET", "/api/small.json", {"Origin": "https://evil.example.test"}),
    ("small GET, no Origin", "GET", "/api/small.json", {}),
    ("preflight, header not allowed", "OPTIONS", "/api/small.json",
     {"Origin": ORIGIN, "Access-Control-Request-Method": "PUT",
      "Access-Control-Request-Headers": "x-other"}),
]
LIST_HEADERS = {"vary", "access-control-allow-methods", "access-control-allow-headers",
                "access-control-expose-headers"}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- processes

class Processes:
    """Every server this script starts, each in its own session; all stopped on exit."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], *, cpu: int | None, stdout_path: str | None,
              stderr_path: Path, env: dict | None = None) -> subprocess.Popen:
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + argv      # taskset execs: same pid
        out = open(stdout_path or os.devnull, "wb")
        err = open(stderr_path, "wb")
        log(f"start {name}: {shlex.join(argv)}")
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=env, cwd=str(REPO))
        out.close()
        err.close()
        self.procs.append((name, p))
        return p

    def stop(self, p: subprocess.Popen, grace: float = 5.0) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        try:                        # the group may still hold workers even if the leader exited
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(2)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self) -> None:
        while self.procs:
            name, p = self.procs.pop()
            self.stop(p)


PROCS = Processes()


def _on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _proc_field(path: str, field: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    """VmRSS summed over the process and all its descendants (workers)."""
    return sum(_proc_field(f"/proc/{p}/status", "VmRSS:") for p in descendants(pid))


def pss_kib(pid: int) -> int:
    """Proportional set size summed likewise (shared copy-on-write pages counted once)."""
    return sum(_proc_field(f"/proc/{p}/smaps_rollup", "Pss:") for p in descendants(pid))


def machine_jiffies() -> tuple[int, int]:
    """(all, idle) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v[:8]), v[3] + v[4]


def busy_fraction(start: tuple[int, int], end: tuple[int, int]) -> float:
    """Fraction of all CPUs busy between two `machine_jiffies()` readings."""
    return 1.0 - (end[1] - start[1]) / max(1, end[0] - start[0])


def cpu_busy(secs: float = 0.5) -> float:
    """Fraction of all CPUs busy over `secs` (taken while our servers are idle = other work)."""
    try:
        start = machine_jiffies()
        time.sleep(secs)
        return busy_fraction(start, machine_jiffies())
    except (OSError, ValueError, IndexError):
        return -1.0


def wait_quiet(max_wait: float, threshold: float = 0.10) -> float:
    """Wait (at most max_wait s) until other processes leave the CPUs alone; return the busy fraction."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (fields 14 and 15 of /proc/PID/stat), in seconds."""
    ticks = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuAccount:
    """Where the CPU went during one measured run: the target (the proxy with its workers), the
    origin, wrk (our only waited-for child while it runs: RUSAGE_CHILDREN) and the machine as a
    whole. This is what says whether a row was limited by the proxy's own cost per request or by
    the CPUs left to it (the `workers = 2` row shares the 2 CPUs with wrk and the origin)."""

    def __init__(self, target_pids: list[int], origin_pids: list[int]) -> None:
        self.target_pids, self.origin_pids = target_pids, origin_pids
        self.start = self._snap()

    def _snap(self) -> tuple[float, float, float, tuple[int, int]]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (cpu_seconds(self.target_pids), cpu_seconds(self.origin_pids),
                children.ru_utime + children.ru_stime, machine_jiffies())

    def per_request(self, requests: int) -> dict:
        end = self._snap()
        n = max(1, requests)
        busy = busy_fraction(self.start[3], end[3]) * (os.cpu_count() or 1)
        return {"target_us": (end[0] - self.start[0]) / n * 1e6, "origin_us": (end[1] - self.start[1]) / n * 1e6,
                "wrk_us": (end[2] - self.start[2]) / n * 1e6, "busy_cpus": busy}


def loadavg() -> float:
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError):
        return -1.0


# ----------------------------------------------------------------------------- tools

def ensure_tools(targets: list[str], no_install: bool) -> list[str]:
    """Install nginx/wrk/caddy with apt when missing. Returns notes for the report."""
    notes = []
    need = {"nginx", "wrk"} | ({"caddy"} if "caddy" in targets else set())
    missing = sorted(t for t in need if not shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin"))
    if missing and not no_install:
        sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
        if sudo is None:
            sys.exit(f"missing {missing} and not root (no sudo): install them with apt")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        log(f"installing with apt: {missing}")
        subprocess.run(sudo + ["apt-get", "update", "-q"], check=False, env=env)
        pkgs = []
        for t in missing:
            if t == "caddy":
                pol = subprocess.run(["apt-cache", "policy", "caddy"], capture_output=True, text=True).stdout
                if "Candidate: (none)" in pol or "Candidate:" not in pol:
                    notes.append("caddy: not in this machine's apt sources; its row is skipped")
                    continue
            pkgs.append(APT_PACKAGES[t])
        if pkgs:
            subprocess.run(sudo + ["apt-get", "install", "-y", "-q", "--no-install-recommends"] + pkgs,
                           check=True, env=env)
    for t in sorted(need):
        if not shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin"):
            if t == "caddy":
                notes.append("caddy: not installed; its row is skipped")
            else:
                sys.exit(f"{t} is required (apt-get install {APT_PACKAGES[t]})")
    if not shutil.which("taskset"):
        notes.append("taskset missing: nothing is pinned")
    return notes


def which(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or name


def tool_version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        out = (r.stdout + r.stderr).strip().splitlines()
        return out[0] if out else "?"
    except Exception:
        return "?"


# ----------------------------------------------------------------------------- servers

def fill(template: Path, dest: Path, **values) -> Path:
    text = template.read_text()
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    left = re.findall(r"@[A-Z_]+@", re.sub(r"(?m)#.*$", "", text))
    if left:
        raise SystemExit(f"{template}: unfilled placeholders {left}")
    dest.write_text(text)
    return dest


def nginx_user_line() -> str:
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};"


def start_nginx(name: str, template: Path, work: Path, port: int, cpu: int | None, **extra) -> subprocess.Popen:
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / f"{name}-tmp" / d).mkdir(parents=True, exist_ok=True)
    conf = fill(template, work / f"{name}.conf", WORK=work, PORT=port, USER=nginx_user_line(), **extra)
    test = subprocess.run([which("nginx"), "-t", "-q", "-p", str(work), "-e", str(work / f"{name}-error.log"),
                           "-c", str(conf)], capture_output=True, text=True)
    if test.returncode != 0:
        raise SystemExit(f"{name}: nginx -t failed:\n{test.stderr}")
    return PROCS.start(name, [which("nginx"), "-p", str(work), "-e", str(work / f"{name}-error.log"),
                              "-c", str(conf), "-g", "daemon off;"],
                       cpu=cpu, stdout_path=None, stderr_path=work / f"{name}.stderr")


def start_caddy(work: Path, port: int, origin_port: int, cpu: int | None) -> subprocess.Popen:
    conf = fill(HERE / "Caddyfile", work / "Caddyfile", PORT=port, ORIGIN_PORT=origin_port)
    env = dict(os.environ, HOME=str(work), XDG_DATA_HOME=str(work / "caddy-data"),
               XDG_CONFIG_HOME=str(work / "caddy-config"))
    # access log (JSON, like coxp's decision log) goes to stdout = /dev/null
    return PROCS.start("caddy", [which("caddy"), "run", "--config", str(conf), "--adapter", "caddyfile"],
                       cpu=cpu, stdout_path=None, stderr_path=work / "caddy.stderr", env=env)


def coxp_command() -> list[str]:
    exe = Path(sys.executable).parent / "coxp"
    if exe.exists():
        return [str(exe)]
    if shutil.which("coxp"):
        return [shutil.which("coxp")]
    return [sys.executable, "-m", "proxy"]


def start_coxp(name: str, cmd: list[str], work: Path, port: int, origin_port: int, workers: int,
               cpu: int | None) -> subprocess.Popen:
    text = (HERE / "coxp.toml").read_text()
    text, n = re.subn(r"(?m)^workers\s*=\s*\d+", f"workers = {workers}", text)
    if n != 1:
        raise SystemExit("bench/coxp.toml: expected one `workers = N` line in [proxy]")
    conf = work / f"{name}.toml"
    conf.write_text(text)
    argv = cmd + ["run", "-c", str(conf), "--listen", f"127.0.0.1:{port}",
                  "--upstream", f"http://127.0.0.1:{origin_port}"]
    # decision log (stdout) -> /dev/null; stderr kept for diagnostics
    return PROCS.start(name, argv, cpu=cpu, stdout_path=None, stderr_path=work / f"{name}.stderr")


def request(port: int, method: str, path: str, headers: dict, timeout: float = 10.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, headers=headers)
        r = c.getresponse()
        body = r.read()
        return r.status, r.getheaders(), len(body)
    finally:
        c.close()


def wait_ready(name: str, p: subprocess.Popen, port: int, stderr: Path, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            break
        try:
            request(port, "GET", "/api/small.json", {}, timeout=2)
            return True
        except OSError:
            time.sleep(0.1)
        except http.client.HTTPException:
            time.sleep(0.1)
    tail = stderr.read_text(errors="replace")[-2000:] if stderr.exists() else ""
    state = f"exited with {p.returncode}" if p.poll() is not None else "not answering"
    log(f"{name} did not come up on 127.0.0.1:{port} ({state}); stderr tail:\n{tail}")
    return False


# ----------------------------------------------------------------------------- verification

def policy_view(status: int, headers: list[tuple[str, str]], body_len: int, path: str) -> list[str]:
    merged: dict[str, list[str]] = {}
    for k, v in headers:
        k = k.lower()
        if k.startswith(("access-control-", "cross-origin-")) or k == "vary":
            merged.setdefault(k, []).append(v)
    lines = [f"status: {status}"]
    if path.endswith(".bin") and status == 200:
        lines.append(f"body bytes: {body_len}")
    for k in sorted(merged):
        if k in LIST_HEADERS:
            toks = [t.strip() for v in merged[k] for t in v.split(",") if t.strip()]
            if k != "access-control-allow-methods":
                toks = [t.lower() for t in toks]
            lines.append(f"{k}: {', '.join(sorted(set(toks)))}")
        else:
            lines.append(f"{k}: {' | '.join(merged[k])}")
    return lines


def verify(ports: dict[str, int]) -> bool:
    import difflib
    proxies = [t for t in ports if t in PROXIES]
    ok = True
    for t in ports:                              # every target serves the files
        for path, size in (("/api/small.json", None), ("/files/100k.bin", 100 * 1024), ("/files/1m.bin", MiB)):
            st, _, n = request(ports[t], "GET", path, {"Origin": ORIGIN})
            if st != 200 or (size and n != size):
                log(f"verify: {t} GET {path} -> {st}, {n} bytes")
                ok = False
    if len(proxies) < 2:
        log("verify: fewer than two proxies, header comparison skipped")
        return ok
    ref = proxies[0]
    for title, method, path, hdrs in CHECKS:
        views = {t: policy_view(*request(ports[t], method, path, hdrs), path) for t in proxies}
        log(f"verify [{title}] {ref}: " + "; ".join(views[ref]))
        for t in proxies[1:]:
            if views[t] != views[ref]:
                ok = False
                diff = difflib.unified_diff(views[ref], views[t], fromfile=ref, tofile=t, lineterm="")
                print(f"--- header mismatch for {title} ({method} {path} {hdrs})", file=sys.stderr)
                print("\n".join(diff), file=sys.stderr)
    return ok


# ----------------------------------------------------------------------------- wrk

WRK_LUA = """\
wrk.method = "{method}"
{headers}
local out_path = "{out}"
{delay}
function done(summary, latency, requests)
  local f = io.open(out_path, "w")
  local e = summary.errors
  f:write(string.format('{{"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,' ..
    '"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f,' ..
    '"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"p999_us":%.0f,"max_us":%.0f,"mean_us":%.1f}}',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
  f:close()
end
"""

# Fixed-rate mode (wrk 4 has no -R): one schedule for the whole thread, a request every
# `interval` ms on a monotonic clock (LuaJIT FFI); delay() is asked whenever a connection is ready
# to send and returns the wait until the next slot. A server that falls behind gets no extra
# slots back-filled beyond the schedule, so the achieved rate shows it.
DELAY_LUA = """\
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} coxp_bench_ts;
int clock_gettime(int clk_id, coxp_bench_ts *tp);
]]
local ts = ffi.new("coxp_bench_ts")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval = {interval}
local next_t = nil
function delay()
  local now = now_ms()
  if next_t == nil then next_t = now end
  next_t = next_t + interval
  local d = next_t - now
  if d <= 0 then return 0 end
  return math.floor(d + 0.5)
end
"""


class Wrk:
    def __init__(self, work: Path, connections: int, cpu: int | None) -> None:
        self.work, self.connections, self.cpu = work, connections, cpu
        self.n = 0

    def run(self, port: int, wl: dict, duration: int, rate: float | None = None) -> dict:
        self.n += 1
        out = self.work / f"wrk-{self.n}.json"
        delay = ""
        if rate:
            delay = DELAY_LUA.format(interval=repr(1000.0 / rate))
        headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in wl["headers"].items())
        script = self.work / f"wrk-{self.n}.lua"
        script.write_text(WRK_LUA.format(method=wl["method"], headers=headers, out=out, delay=delay))
        argv = ["wrk", "-t", "1", "-c", str(self.connections), "-d", f"{duration}s", "--latency",
                "--timeout", "5s", "-s", str(script), f"http://127.0.0.1:{port}{wl['path']}"]
        if self.cpu is not None:
            argv = ["taskset", "-c", str(self.cpu)] + argv
        r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        if r.returncode != 0 or not out.exists():
            raise RuntimeError(f"wrk failed ({r.returncode}): {r.stderr.strip()} {r.stdout[-500:]}")
        res = json.loads(out.read_text())
        secs = res["duration_us"] / 1e6
        res["rps"] = res["requests"] / secs
        res["mbps"] = res["bytes"] / secs / 1e6
        res["errors"] = res["connect"] + res["read"] + res["write"] + res["status"] + res["timeout"]
        res["text"] = r.stdout
        return res


# ----------------------------------------------------------------------------- report

def fmt_ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def fmt_num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "–"


def mib(kib: int | None) -> str:
    return f"{kib / 1024:.1f} MiB" if kib else "–"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured run (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each run (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported (default 3)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--targets", default=",".join(ALL_TARGETS),
                    help=f"comma list of {','.join(ALL_TARGETS)} (default all)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list of {','.join(WORKLOADS)}")
    ap.add_argument("--no-half-rate", action="store_true",
                    help="skip the p99-at-half-of-coxp's-peak-rate mode")
    ap.add_argument("--rate", type=float, help="fixed rate (req/s) for the latency mode instead of half of coxp's peak")
    ap.add_argument("--no-big-body", action="store_true", help="skip the coxp RSS check across a 1 GiB body")
    ap.add_argument("--coxp-cmd", help="command that behaves like `coxp` (default: the venv's coxp); "
                                       "e.g. 'python bench/stub_proxy.py' to test the harness")
    ap.add_argument("--no-verify", action="store_true", help="measure even if the headers differ (marked UNVERIFIED)")
    ap.add_argument("--no-install", action="store_true", help="never call apt")
    ap.add_argument("--wait-quiet", type=float, default=10.0,
                    help="before each measured run wait up to N s for other processes to leave the CPUs "
                         "(< 10 %% busy); default 10")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary directory (configs, logs)")
    ap.add_argument("--out", help="results file (default bench/results/<date>.md; "
                                  "<date>-partial.md when coxp is not measured or a stub is used)")
    args = ap.parse_args()

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for t in targets:
        if t not in ALL_TARGETS:
            ap.error(f"unknown target {t!r}")
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}")
    targets = [t for t in ALL_TARGETS if t in targets]     # fixed order: reference first

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(PROCS.stop_all)

    notes = ensure_tools(targets, args.no_install)
    if "caddy" in targets and not shutil.which("caddy"):
        targets.remove("caddy")
    ncpu = os.cpu_count() or 1
    pin = shutil.which("taskset") is not None and ncpu >= 2
    if not pin:
        notes.append(f"{ncpu} CPU(s) / taskset missing: processes are NOT pinned")
    cpu_srv, cpu_wrk = (0, 1) if pin else (None, None)

    work = Path(tempfile.mkdtemp(prefix="coxp-bench-"))
    os.chmod(work, 0o755)
    rc = 1
    try:
        rc = run(args, targets, workloads, notes, work, cpu_srv, cpu_wrk)
        return rc
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        rc = 130
        return rc
    finally:
        PROCS.stop_all()
        if args.keep_work or rc != 0:
            log(f"logs and configs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args, targets, workloads, notes, work: Path, cpu_srv, cpu_wrk) -> int:
    # --- files
    root = work / "www"
    (root / "api").mkdir(parents=True)
    (root / "files").mkdir()
    small = json.dumps({"ok": True, "service": "coxp-bench", "items": [1, 2, 3, 4, 5],
                        "message": "hello from the origin, about one hundred bytes"}, separators=(",", ":"))
    (root / "api" / "small.json").write_text(small)
    (root / "files" / "100k.bin").write_bytes(os.urandom(100 * 1024))
    (root / "files" / "1m.bin").write_bytes(os.urandom(MiB))
    with open(root / "files" / "1g.bin", "wb") as f:           # sparse: costs no disk
        f.truncate(1024 * MiB)
    os.chmod(root, 0o755)

    # --- servers
    ports: dict[str, int] = {}
    pids: dict[str, subprocess.Popen] = {}
    origin_port = free_port()
    origin = p = start_nginx("origin", HERE / "nginx-origin.conf", work, origin_port, cpu_srv, ROOT=root)
    if not wait_ready("origin", p, origin_port, work / "origin-error.log"):
        return 1
    coxp_cmd = shlex.split(args.coxp_cmd) if args.coxp_cmd else coxp_command()
    for t in targets:
        if t == "direct":
            ports[t] = origin_port
            continue
        port = free_port()
        if t == "nginx":
            p = start_nginx("nginx-proxy", HERE / "nginx-proxy.conf", work, port, cpu_srv, ORIGIN_PORT=origin_port)
            errf = work / "nginx-proxy-error.log"
        elif t == "caddy":
            p = start_caddy(work, port, origin_port, cpu_srv)
            errf = work / "caddy.stderr"
        else:
            workers = 2 if t == "coxp-w2" else 1
            p = start_coxp(t, coxp_cmd, work, port, origin_port, workers, None if t == "coxp-w2" else cpu_srv)
            errf = work / f"{t}.stderr"
        if not wait_ready(t, p, port, errf):
            if t.startswith("coxp"):
                notes.append(f"{t}: did not start (`{shlex.join(coxp_cmd)} run -c …`); row skipped")
                PROCS.stop(p)
                continue
            return 1
        ports[t] = port
        pids[t] = p
    if not any(t in ports for t in PROXIES):
        log("no proxy target is up; nothing to compare")
        return 1

    # --- fairness check
    verified = verify(ports)
    if not verified:
        if not args.no_verify:
            log("ABORT: targets differ (diff above); fix the configs so the comparison is fair")
            return 3
        notes.append("UNVERIFIED: targets' headers differed (run with --no-verify)")
    else:
        log("verify: all targets agree")

    coxp_rows = [t for t in ("coxp", "coxp-w2") if t in ports]
    rss = {t: {"before": rss_kib(pids[t].pid), "pss_before": pss_kib(pids[t].pid), "peak": 0,
               "after": None, "pss_after": None, "by_workload": {}} for t in coxp_rows}
    loading: dict[str, str | None] = {"target": None, "workload": None}  # what wrk is running now

    def note_peak(t: str, kib: int) -> None:
        rss[t]["peak"] = max(rss[t]["peak"], kib)
        wname = loading["workload"]
        if loading["target"] == t and wname is not None:
            rss[t]["by_workload"][wname] = max(rss[t]["by_workload"].get(wname, 0), kib)

    def sample_rss():
        for t in coxp_rows:
            if pids[t].poll() is None:
                note_peak(t, rss_kib(pids[t].pid))

    sampler_stop = threading.Event()

    def sampler():                      # every 200 ms during all runs; process tree refreshed every 2 s
        trees: dict[str, list[int]] = {}
        n = 0
        while not sampler_stop.is_set():
            for t in coxp_rows:
                if n % 10 == 0:
                    trees[t] = descendants(pids[t].pid)
                note_peak(t, sum(_proc_field(f"/proc/{q}/status", "VmRSS:") for q in trees.get(t, [])))
            n += 1
            sampler_stop.wait(0.2)

    if coxp_rows:
        threading.Thread(target=sampler, daemon=True).start()

    wrk = Wrk(work, args.connections, cpu_wrk)
    dead: set[str] = set()
    loads: list[float] = []

    def check_alive(t: str, when: str) -> None:
        p = pids.get(t)
        if p is not None and t not in dead and p.poll() is not None:
            dead.add(t)
            errf = work / f"{t}.stderr"
            tail = errf.read_text(errors="replace")[-1500:] if errf.exists() else ""
            log(f"{t} EXITED ({p.returncode}) during {when}; stderr tail:\n{tail}")
            notes.append(f"{t} exited with {p.returncode} during {when}; later runs skipped. "
                         f"stderr tail: `{tail.strip().splitlines()[-1][:300] if tail.strip() else ''}`")
    order = list(ports)
    results: dict[tuple[str, str], list[dict]] = {}
    total = args.rounds * sum(len(order) - (wname == "preflight" and "direct" in order) for wname in workloads)
    n = 0
    t0 = time.monotonic()
    for rnd in range(args.rounds):
        rot = order[rnd % len(order):] + order[:rnd % len(order)]     # vary who goes first
        for wname in workloads:
            wl = WORKLOADS[wname]
            for t in rot:
                if t == "direct" and wname == "preflight":
                    continue            # the origin has no preflight handling (405); nothing to compare
                n += 1
                if t in dead:
                    continue
                try:
                    loading.update(target=t, workload=wname)
                    if args.warmup:
                        wrk.run(ports[t], wl, args.warmup)
                    sample_rss()
                    la = wait_quiet(args.wait_quiet)
                    origin_pids = descendants(origin.pid)
                    # "direct" has no proxy: the origin is the target
                    account = CpuAccount(descendants(pids[t].pid) if t in pids else origin_pids,
                                         [] if t == "direct" else origin_pids)
                    res = wrk.run(ports[t], wl, args.duration)
                    res["cpu"] = account.per_request(res["requests"])
                    sample_rss()
                    loading.update(target=None, workload=None)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                    log(f"{t} {wname}: {e}")
                    notes.append(f"{t} {wname} round {rnd + 1}: wrk failed: {str(e)[:200]}")
                    check_alive(t, f"{wname} round {rnd + 1}")
                    continue
                loads.append(la)
                results.setdefault((wname, t), []).append(res)
                log(f"[{n}/{total}] round {rnd + 1} {wname:9s} {t:8s} {res['rps']:10,.0f} req/s "
                    f"{res['mbps']:8.1f} MB/s p50 {fmt_ms(res['p50_us'])} ms p99 {fmt_ms(res['p99_us'])} ms"
                    f" (other CPU use before: {la:.0%})" + (f" ERRORS {res['errors']}" if res["errors"] else ""))
                check_alive(t, f"{wname} round {rnd + 1}")
    log(f"peak rounds took {time.monotonic() - t0:.0f} s")

    def med(wname, t, key):
        rs = results.get((wname, t))
        return statistics.median(r[key] for r in rs) if rs else None

    # --- p99 at a fixed rate: half of coxp's peak on the small GET
    half = None
    if not args.no_half_rate and "small" in workloads:
        rate = args.rate
        basis = "--rate"
        if not rate:
            for t in ("coxp", "coxp-w2") + tuple(order):
                if (("small", t)) in results:
                    rate = med("small", t, "rps") / 2
                    basis = f"half of {t}'s median peak"
                    break
        half = {"rate": rate, "basis": basis, "res": {}}
        log(f"latency mode: {rate:,.0f} req/s ({basis}) for every target")
        for rnd in range(args.rounds):
            rot = order[rnd % len(order):] + order[:rnd % len(order)]
            for t in rot:
                if t in dead:
                    continue
                try:
                    if args.warmup:
                        wrk.run(ports[t], WORKLOADS["small"], args.warmup, rate=rate)
                    loads.append(wait_quiet(args.wait_quiet))
                    res = wrk.run(ports[t], WORKLOADS["small"], args.duration, rate=rate)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                    notes.append(f"{t} half-rate round {rnd + 1}: wrk failed: {str(e)[:200]}")
                    check_alive(t, f"half-rate round {rnd + 1}")
                    continue
                sample_rss()
                check_alive(t, f"half-rate round {rnd + 1}")
                half["res"].setdefault(t, []).append(res)
                log(f"half-rate round {rnd + 1} {t:8s} {res['rps']:10,.0f} req/s p50 {fmt_ms(res['p50_us'])} ms "
                    f"p99 {fmt_ms(res['p99_us'])} ms")

    # --- coxp memory across a 1 GiB body
    sampler_stop.set()
    big = {}
    if not args.no_big_body:
        for t in coxp_rows:
            if t in dead:
                continue
            big[t] = big_body_rss(ports[t], pids[t].pid, cpu_wrk)
            log(f"1 GiB body through {t}: {big[t]}")
            check_alive(t, "the 1 GiB body")
    for t in coxp_rows:
        if t not in dead:
            rss[t]["after"] = rss_kib(pids[t].pid)
            rss[t]["pss_after"] = pss_kib(pids[t].pid)
    if loads:
        noisy = sum(1 for x in loads if x > 0.10)
        notes.append(f"CPU use by other processes just before each measured run (servers idle): "
                     f"median {statistics.median(loads):.0%}, max {max(loads):.0%}; "
                     f"{noisy} of {len(loads)} runs started with > 10 % "
                     + ("— NOISY: the machine was shared, numbers are not trustworthy" if noisy > len(loads) // 4
                        else "(quiet enough)"))

    # --- report
    report = render(args, targets, workloads, ports, results, med, half, rss, big, notes, verified)
    print(report)
    date = dt.date.today().isoformat()
    partial = "coxp" not in ports or args.coxp_cmd
    out = Path(args.out) if args.out else HERE / "results" / f"{date}{'-partial' if partial else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    log(f"wrote {out}")
    return 0


def big_body_rss(port: int, pid: int, cpu) -> dict:
    """Stream /files/1g.bin through coxp to /dev/null while sampling its RSS every 50 ms."""
    before = rss_kib(pid)
    peak = [before]
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            stop.wait(0.05)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    t0 = time.monotonic()
    got, status = 0, None
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", "/files/1g.bin", headers={"Origin": ORIGIN})
        r = c.getresponse()
        status = r.status
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        c.close()
    except (OSError, http.client.HTTPException) as e:
        status = f"{status} ({e})"
    secs = time.monotonic() - t0
    stop.set()
    th.join()
    return {"status": status, "bytes": got, "seconds": round(secs, 2), "before_kib": before,
            "peak_kib": peak[0], "after_kib": rss_kib(pid)}


def targets_section(workloads, med, med_cpu, half, rss) -> list[str]:
    """Issue 16's targets as PASS/FAIL lines (`n/a` when a run needed for one is missing)."""
    lines: list[str] = []

    def check(title: str, value: float | None, target: float, shown: str, higher_is_better: bool = True) -> None:
        if value is None:
            lines.append(f"- n/a: {title} (not measured in this run)")
            return
        ok = value >= target if higher_is_better else value < target
        lines.append(f"- {'PASS' if ok else 'FAIL'}: {title}: {shown}")

    def ratio_of(wname: str, row: str, ref: str) -> float | None:
        key = "mbps" if WORKLOADS[wname]["unit"] == "MB/s" else "rps"
        a, b = med(wname, row, key), med(wname, ref, key)
        return a / b if a and b else None

    def show(x: float | None) -> str:
        return f"{x:.2f}×" if x is not None else "–"

    for wname, refs in (("small", (("caddy", 1.2), ("nginx", 0.3))), ("preflight", (("caddy", 1.0),)),
                        ("100k", (("caddy", 1.0),)), ("1m", (("caddy", 1.0), ("nginx", 1.0)))):
        if wname not in workloads:
            continue
        for ref, target in refs:
            r = ratio_of(wname, "coxp", ref)
            check(f"{WORKLOADS[wname]['title']}: coxp ≥ {target}× {ref}", r, target, show(r))
    if "small" in workloads:
        r = ratio_of("small", "coxp-w2", "coxp")
        others = ", ".join(f"{w} {show(ratio_of(w, 'coxp-w2', 'coxp'))}" for w in workloads if w != "small")
        one, two = med_cpu("small", "coxp", "target_us"), med_cpu("small", "coxp-w2", "target_us")
        why = ""
        origin_one = med_cpu("small", "coxp", "origin_us")
        origin_two, wrk_two = med_cpu("small", "coxp-w2", "origin_us"), med_cpu("small", "coxp-w2", "wrk_us")
        if one and two and origin_one is not None and origin_two is not None and wrk_two is not None:
            # One worker shares CPU 0 with the origin only; two workers share every CPU with the origin
            # and wrk too, so the CPUs alone cap the ratio at ncpu * (coxp + origin) / (coxp + origin + wrk).
            ceiling = (os.cpu_count() or 1) * (one + origin_one) / (two + origin_two + wrk_two)
            why = (f"; coxp's CPU per request: {one:.0f} µs with 1 worker, {two:.0f} µs with 2 (summed over workers); "
                   f"in the 2-worker runs wrk used {wrk_two:.0f} µs and the origin {origin_two:.0f} µs per request and "
                   f"{med_cpu('small', 'coxp-w2', 'busy_cpus'):.2f} of {os.cpu_count()} CPUs were busy, so these "
                   f"CPUs allow at most {ceiling:.2f}×")
        check("`workers = 2` ≥ 1.8× one worker (small GET req/s)", r, 1.8,
              show(r) + (f" (other workloads: {others})" if others else "") + why)
    if half:
        p99 = {t: statistics.median(r["p99_us"] for r in rs) for t, rs in half["res"].items()}
        d = (p99["coxp"] - p99["nginx"]) / 1000 if "coxp" in p99 and "nginx" in p99 else None
        check(f"p99 at {half['rate']:,.0f} req/s within 1 ms of nginx's", d, 1.0,
              f"{d:+.2f} ms" if d is not None else "–", higher_is_better=False)
    peak = rss.get("coxp", {}).get("by_workload", {}).get("1m")
    check("peak RSS of one worker under 64 concurrent 1 MiB bodies < 64 MiB", peak / 1024 if peak else None, 64,
          mib(peak), higher_is_better=False)
    if not lines:
        return []
    return ["", "## Targets (issue 16)", "", *lines]


def render(args, targets, workloads, ports, results, med, half, rss, big, notes, verified) -> str:
    def med_cpu(wname: str, t: str, key: str) -> float | None:
        rs = [r["cpu"][key] for r in results.get((wname, t), []) if "cpu" in r]
        return statistics.median(rs) if rs else None

    now = dt.datetime.now(dt.UTC)
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"],
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "proxy"],
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        commit, dirty = "?", ""
    cpu_model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    L = []
    L.append(f"# coxp benchmark, {now:%Y-%m-%d %H:%M} UTC")
    L.append("")
    L.append(f"- machine: {os.cpu_count()} CPUs ({cpu_model}), {platform.platform()}")
    L.append(f"- versions: {tool_version([which('nginx'), '-v'])}; "
             f"caddy {tool_version([which('caddy'), 'version']) if 'caddy' in ports else '(not run)'}; "
             f"{tool_version(['wrk', '-v'])}; Python {platform.python_version()}")
    L.append(f"- coxp: `{commit}`{' (+ uncommitted changes in proxy/)' if dirty else ''}"
             + (f"; command `{args.coxp_cmd}` (STUB, not coxp)" if args.coxp_cmd else ""))
    L.append(f"- load: `wrk -t 1 -c {args.connections} --latency` pinned to CPU 1; origin nginx and each proxy "
             f"pinned to CPU 0 (coxp-w2 unpinned); {args.warmup} s warm-up + {args.duration} s per run, "
             f"{args.rounds} interleaved rounds, medians")
    fairness = "all targets emit the same CORS/CORP/COOP/COEP/Vary headers" if verified else "UNVERIFIED (headers differed)"
    L.append(f"- fairness check: {fairness}")
    for n in notes:
        L.append(f"- note: {n}")
    L += targets_section(workloads, med, med_cpu, half, rss)
    order = [t for t in ALL_TARGETS if t in ports]
    for wname in workloads:
        wl = WORKLOADS[wname]
        key = "mbps" if wl["unit"] == "MB/s" else "rps"
        L.append("")
        L.append(f"## {wl['title']}")
        L.append("")
        L.append(f"| target | {wl['unit']} | p50 ms | p99 ms | × nginx | × caddy | × direct | rounds ({wl['unit']}) | errors |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---|---:|")
        ref = {r: med(wname, r, key) for r in ("nginx", "caddy", "direct")}
        for t in order:
            rs = results.get((wname, t))
            if not rs:
                continue
            v = med(wname, t, key)
            extra = f" ({fmt_num(med(wname, t, 'rps'))} req/s)" if key == "mbps" else ""
            L.append(f"| {t} | {fmt_num(v)}{extra} | {fmt_ms(med(wname, t, 'p50_us'))} | "
                     f"{fmt_ms(med(wname, t, 'p99_us'))} | {ratio(v, ref['nginx'])} | {ratio(v, ref['caddy'])} | "
                     f"{ratio(v, ref['direct'])} | {', '.join(fmt_num(r[key]) for r in rs)} | "
                     f"{sum(r['errors'] for r in rs)} |")
    L.append("")
    L.append("## Where the CPU went (per request, medians of the measured runs)")
    L.append("")
    L.append("CPU time (user + system) of the target (with its workers), the origin and wrk, divided by the "
             "requests served, and how many of the machine's CPUs were busy. A row whose target cost stays "
             "the same while its req/s does not grow was limited by the CPUs left to it.")
    L.append("")
    L.append(f"| workload | target | target µs | origin µs | wrk µs | CPUs busy (of {os.cpu_count()}) |")
    L.append("|---|---|---:|---:|---:|---:|")
    for wname in workloads:
        for t in order:
            if med_cpu(wname, t, "target_us") is None:
                continue
            L.append(f"| {wname} | {t} | {med_cpu(wname, t, 'target_us'):.1f} | {med_cpu(wname, t, 'origin_us'):.1f} | "
                     f"{med_cpu(wname, t, 'wrk_us'):.1f} | {med_cpu(wname, t, 'busy_cpus'):.2f} |")
    if half:
        L.append("")
        L.append(f"## p99 at a fixed rate: {half['rate']:,.0f} req/s ({half['basis']}), small GET")
        L.append("")
        L.append("wrk 4 has no `-R` and wrk2 is not packaged in Debian: the rate is held by a Lua `delay()` "
                 f"hook: one schedule per wrk thread, a request every 1/R s on a monotonic clock (LuaJIT FFI), "
                 f"sent on whichever of the {args.connections} connections is free; waits are rounded to whole ms "
                 "(bursts within a ms). Latency is timed from the actual send, so a server stall that holds all "
                 "connections is not charged to the requests that waited (coordinated omission, which wrk2 "
                 "corrects): p99 here is a lower bound. A target that cannot sustain R shows a lower achieved rate.")
        L.append("")
        L.append("| target | achieved req/s | p50 ms | p99 ms | p99 − nginx p99 (ms) | errors |")
        L.append("|---|---:|---:|---:|---:|---:|")
        hm = {t: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_us", "p99_us")}
              for t, rs in half["res"].items()}
        for t in order:
            if t not in hm:
                continue
            d = (f"{(hm[t]['p99_us'] - hm['nginx']['p99_us']) / 1000:+.2f}" if "nginx" in hm else "–")
            L.append(f"| {t} | {fmt_num(hm[t]['rps'])} | {fmt_ms(hm[t]['p50_us'])} | {fmt_ms(hm[t]['p99_us'])} | "
                     f"{d} | {sum(r['errors'] for r in half['res'][t])} |")
    if rss:
        L.append("")
        L.append("## coxp memory (VmRSS summed over the process and its workers)")
        L.append("")
        L.append("PSS counts pages shared between forked workers once; summed RSS counts them per process.")
        L.append("")
        L.append("| target | RSS before load | RSS peak during runs | peak during its 1 MiB runs | RSS after all runs "
                 "| PSS before → after | 1 GiB body: RSS before → peak → after |")
        L.append("|---|---:|---:|---:|---:|---:|---|")
        for t, r in rss.items():
            b = big.get(t)
            bs = (f"{mib(b['before_kib'])} → {mib(b['peak_kib'])} → {mib(b['after_kib'])} "
                  f"({b['bytes'] / MiB:,.0f} MiB in {b['seconds']} s, status {b['status']})") if b else "–"
            L.append(f"| {t} | {mib(r['before'])} | {mib(r['peak'])} | {mib(r['by_workload'].get('1m'))} | {mib(r['after'])} | "
                     f"{mib(r['pss_before'])} → {mib(r['pss_after'])} | {bs} |")
    L.append("")
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
