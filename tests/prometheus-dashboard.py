#!/usr/bin/env python3
"""Runs every query of the Grafana dashboard (packaging/grafana/weir-dashboard.json)
against a real Prometheus server scraping a real Weir under load, and fails unless each
query succeeds with data. With --picture FILE, also draws three of its panels from
Prometheus' query API into an SVG (the picture in README).

Run by .ci/run (through tests/prometheus-dashboard.sh, which installs Prometheus);
python3 standard library only. Everything stays on 127.0.0.1 and ends by itself.
"""

import html
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOAD_SECONDS = 20


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(pattern, path, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            m = re.search(pattern, open(path).read())
            if m:
                return m
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    sys.exit(f"prometheus-dashboard: `{pattern}` never appeared in {path}:\n{open(path).read()}")


def start_weir(tmp, weir_bin):
    dead = free_port()
    config = os.path.join(tmp, "weir.toml")
    with open(config, "w") as f:
        f.write(f"""
[server]
workers = 2

[admin]
address = "127.0.0.1:0"

[[listener]]
name = "public"
address = "127.0.0.1:0"

[[listener]]
name = "origin"
address = "127.0.0.1:0"

[upstream.origin]
targets = ["127.0.0.2:{dead}"]

[upstream.dead]
targets = ["127.0.0.1:{dead}"]

[[route]]
listener = "origin"
path = "/{{*rest}}"
mock = {{ body = "from the origin", headers = {{ "cache-control" = "max-age=60" }} }}

[[route]]
listener = "public"
path = "/api/{{*rest}}"
upstream = "origin"

[[route]]
listener = "public"
path = "/cached/{{*rest}}"
upstream = "origin"
cache = {{ ttl = "60s" }}

[[route]]
listener = "public"
path = "/limited"
mock = {{ body = "ok" }}
throttle = {{ rate = 20, burst = 20 }}

[[route]]
listener = "public"
path = "/down"
upstream = "dead"
""")
    log = os.path.join(tmp, "weir.log")
    proc = subprocess.Popen([weir_bin, "run", "-c", config], stderr=open(log, "w"))
    public = wait_for(r"listening on http://(\S+) \(listener `public`\)", log).group(1)
    origin = wait_for(r"listening on http://(\S+) \(listener `origin`\)", log).group(1)
    admin = wait_for(r"admin API on http://(\S+)", log).group(1)
    # Point the origin group at the origin listener, now that its port is known.
    text = open(config).read().replace(f"127.0.0.2:{dead}", origin)
    open(config, "w").write(text)
    subprocess.run([weir_bin, "reload", "-c", config], check=True, stdout=subprocess.DEVNULL)
    return proc, public, admin


def start_prometheus(tmp, admin):
    port = free_port()
    config = os.path.join(tmp, "prometheus.yml")
    with open(config, "w") as f:
        f.write(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: weir
    static_configs:
      - targets: ["{admin}"]
""")
    log = os.path.join(tmp, "prometheus.log")
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={os.path.join(tmp, 'data')}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
    )
    wait_for(r"Server is ready to receive web requests", log, 60)
    return proc, f"127.0.0.1:{port}"


def load(public, seconds):
    """Keep-alive clients on every route for `seconds`."""
    stop = time.time() + seconds
    # Weighted, so the routes' lines differ: mostly the API, then the cache, then the rest.
    paths = ["/api/users/1"] * 5 + ["/cached/catalog"] * 3 + ["/limited"] * 2 + ["/down", "/nowhere"]

    def client(offset):
        conn = http.client.HTTPConnection(public, timeout=10)
        i = offset
        while time.time() < stop:
            try:
                conn.request("GET", paths[i % len(paths)])
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(public, timeout=10)
            i += 1
            time.sleep(0.002)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def query(prom, path, params):
    url = f"http://{prom}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def check_panels(prom, dashboard):
    failed = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            answer = query(prom, "query", {"query": target["expr"]})
            results = answer.get("data", {}).get("result", [])
            ok = answer.get("status") == "success" and results
            print(f"prometheus-dashboard: {'ok ' if ok else 'FAILED'} {panel['title']}: {len(results)} series")
            if not ok:
                failed.append((panel["title"], target["expr"], answer))
    return failed


def picture(prom, dashboard, start, end, path):
    """Three panels as an SVG: one chart each, a line per series."""
    wanted = ["Requests per second, by route", "Latency p99, by route", "Cache hit ratio, by route"]
    panels = [p for p in dashboard["panels"] if p["title"] in wanted]
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    w, h, pad = 900, 230, 70
    units = {"reqps": "req/s", "s": "s", "percentunit": "(ratio)", "none": ""}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h * len(panels)}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h * len(panels)}" fill="white"/>']
    for n, panel in enumerate(panels):
        expr = panel["targets"][0]["expr"]
        answer = query(prom, "query_range", {"query": expr, "start": start, "end": end, "step": 1})
        series = answer["data"]["result"]
        top = n * h
        values = [float(v) for s in series for _, v in s["values"] if v not in ("NaN", "+Inf")]
        vmax = max(values) if values else 1.0
        vmax = vmax * 1.1 or 1.0
        unit = panel["fieldConfig"]["defaults"]["unit"]
        parts.append(f'<text x="{pad}" y="{top + 18}" font-size="14" font-weight="bold">{html.escape(panel["title"])}</text>')
        parts.append(f'<text x="{pad}" y="{top + 34}" fill="#555">{html.escape(expr)}</text>')
        x0, y0, x1, y1 = pad, top + h - 30, w - 200, top + 45
        parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#999"/>')
        parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#999"/>')
        label = f"{vmax:.3g} {units.get(unit, unit)}"
        parts.append(f'<text x="{x0 - 4}" y="{y1 + 4}" text-anchor="end" font-size="10">{label}</text>')
        parts.append(f'<text x="{x0}" y="{y0 + 14}" font-size="10">{int(end - start)} s of load</text>')
        for i, s in enumerate(series):
            points = []
            for t, v in s["values"]:
                if v in ("NaN", "+Inf"):
                    continue
                x = x0 + (float(t) - start) / max(end - start, 1) * (x1 - x0)
                y = y0 - float(v) / vmax * (y0 - y1)
                points.append(f"{x:.1f},{y:.1f}")
            color = colors[i % len(colors)]
            if points:
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{" ".join(points)}"/>')
            name = ", ".join(f"{k}={v}" for k, v in s["metric"].items())
            parts.append(f'<text x="{x1 + 10}" y="{y1 + 14 * i + 10}" fill="{color}" font-size="10">{html.escape(name)}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")
    print(f"prometheus-dashboard: picture written to {path}")


def main():
    picture_path = None
    if len(sys.argv) == 3 and sys.argv[1] == "--picture":
        picture_path = sys.argv[2]
    weir_bin = os.environ.get("WEIR_BIN", os.path.join(ROOT, "target", "debug", "weir"))
    dashboard = json.load(open(os.path.join(ROOT, "packaging", "grafana", "weir-dashboard.json")))
    tmp = tempfile.mkdtemp(prefix="weir-dashboard.")
    procs = []
    try:
        weir, public, admin = start_weir(tmp, weir_bin)
        procs.append(weir)
        prom, prom_addr = start_prometheus(tmp, admin)
        procs.append(prom)
        start = time.time()
        load(public, LOAD_SECONDS)
        time.sleep(3)  # the last scrapes
        end = time.time()
        failed = check_panels(prom_addr, dashboard)
        if picture_path:
            picture(prom_addr, dashboard, start, end, picture_path)
        if failed:
            for title, expr, answer in failed:
                print(f"prometheus-dashboard: no data for `{title}`: {expr}\n  {answer}")
            sys.exit(1)
        print(f"prometheus-dashboard: all {len(dashboard['panels'])} panels have data")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
