#!/usr/bin/env python3
"""SVG charts for perf/run.sh, written by hand (python3 standard library only).

    charts.py --results results.tsv --out-stem perf/results/STEM \
              --workloads 1k,16k --rounds 3 --proxy 'weir=Weir' --proxy 'nginx=nginx' ...

Reads run.sh's per-run results.tsv (one line per round, workload and proxy) and
writes two charts next to the report, printing each path it wrote:

  STEM-throughput.svg  req/s and p99 per proxy for the 1k workload (or the first
                       workload run if 1k was not), two panels side by side
  STEM-cpu.svg         CPU time per request per proxy, one panel per workload,
                       each on its own linear scale

A proxy with no run at all in a workload (HAProxy sits out tls1k) has no row in
that workload's panels.

Bars are medians over rounds (as in the report's tables), dots the single rounds.
"""
import argparse
import math
import os
import statistics
import sys
from xml.sax.saxutils import escape

# results.tsv columns (0-based), see run.sh
C_ROUND, C_WORKLOAD, C_PROXY, C_RPS, C_P99, C_US = 0, 1, 2, 4, 6, 9
C_NON2XX, C_SOCK, C_RC, C_ALIVE = 10, slice(11, 15), 17, 18

FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
CHAR_W = 7.0            # rough width of one 12 px character
ROW_H = 24
BAR_H = 16
PANEL_W = 450

FIXED_COLORS = {"nginx": "#1b9e77", "haproxy": "#3b6fb6", "weir": "#d95f02"}
VARIANT_COLORS = ["#d95f02", "#e7298a", "#a6761d", "#e6ab02", "#8c2d04", "#fd8d3c",
                  "#7a0177", "#66a61e"]

WORKLOAD_TITLES = {
    "1k": "1k: GET, 1 KiB response",
    "16k": "16k: GET, 16 KiB response",
    "256k": "256k: GET, 256 KiB response",
    "upload64k": "upload64k: POST, 64 KiB body",
    "tls1k": "tls1k: GET over HTTPS, 1 KiB response",
}


def num(v):
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def load(path):
    """{(workload, proxy): {"rps": [...], "p99": [...], "us": [...], "errors": bool}}"""
    data = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = line.rstrip("\n").split("\t")
            if len(row) < 19:
                continue
            d = data.setdefault((row[C_WORKLOAD], row[C_PROXY]),
                                {"rps": [], "p99": [], "us": [], "errors": False})
            for key, col in (("rps", C_RPS), ("p99", C_P99), ("us", C_US)):
                x = num(row[col])
                if x is not None:
                    d[key].append(x)
            sock = sum(num(v) or 0 for v in row[C_SOCK])
            if (num(row[C_NON2XX]) or 0) > 0 or sock > 0 or row[C_RC] != "0" or row[C_ALIVE] != "1":
                d["errors"] = True
    return data


def nice_scale(vmax):
    """(top, step): a round axis end >= vmax with 4-6 ticks."""
    if vmax <= 0:
        vmax = 1.0
    raw = vmax / 5
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        step = m * mag
        if step >= raw:
            break
    top = math.ceil(vmax / step - 1e-9) * step
    return top, step


def fmt_count(v):
    return f"{v:,.0f}"


def fmt_ms(v):
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def fmt_us(v):
    return f"{v:.1f}"


def fmt_tick(v, step):
    if step >= 1000 and v != 0:
        return f"{v / 1000:g}k"
    d = max(0, -math.floor(math.log10(step) + 1e-9))
    if abs(step * 10 ** d - round(step * 10 ** d)) > 1e-6:
        d += 1
    return f"{v:.{d}f}"


class Svg:
    def __init__(self):
        self.parts = []

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, size=12, anchor="start", weight="normal", fill="#222"):
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                 f'font-weight="{weight}" fill="{fill}">{escape(s)}</text>')

    def render(self, width, height, title):
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
                f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="{FONT}">\n'
                f'<title>{escape(title)}</title>\n'
                f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>\n')
        return head + "\n".join(self.parts) + "\n</svg>\n"


def hbar_panel(svg, x, y, w, title, xlabel, items, fmt_value, label_w, value_head="median"):
    """Horizontal bars, one row per item: (label, median or None, [round values], color).
    Returns the panel's height."""
    value_w = 70
    bx0, bx1 = x + label_w, x + w - value_w
    svg.text(x + 4, y + 15, title, size=13, weight="bold")
    y0 = y + 26
    vmax = max([v for _, m, rs, _ in items for v in ([m] if m is not None else []) + rs] or [1])
    top, step = nice_scale(vmax)

    def sx(v):
        return bx0 + (bx1 - bx0) * v / top

    y_axis = y0 + ROW_H * len(items) + 4
    svg.text(x + w - 4, y0 - 4, value_head, size=10, anchor="end", fill="#777")
    # grid and tick labels
    nt = int(round(top / step))
    for i in range(nt + 1):
        v = i * step
        gx = sx(v)
        svg.add(f'<line x1="{gx:.1f}" y1="{y0 - 2:.1f}" x2="{gx:.1f}" y2="{y_axis:.1f}" '
                f'stroke="{"#888" if i == 0 else "#e3e3e3"}" stroke-width="1"/>')
        svg.text(gx, y_axis + 14, fmt_tick(v, step), size=11, anchor="middle", fill="#555")
    svg.add(f'<line x1="{bx0:.1f}" y1="{y_axis:.1f}" x2="{bx1:.1f}" y2="{y_axis:.1f}" stroke="#888" stroke-width="1"/>')
    svg.text((bx0 + bx1) / 2, y_axis + 30, xlabel, size=11, anchor="middle", fill="#333")
    # bars
    for i, (label, med, rounds, color) in enumerate(items):
        ry = y0 + i * ROW_H
        cy = ry + ROW_H / 2
        svg.text(bx0 - 6, cy + 4, label, anchor="end")
        if med is None:
            svg.text(bx0 + 4, cy + 4, "n/a", fill="#888")
            continue
        svg.add(f'<rect x="{bx0:.1f}" y="{cy - BAR_H / 2:.1f}" width="{max(sx(med) - bx0, 0.5):.1f}" '
                f'height="{BAR_H}" fill="{color}" fill-opacity="0.85"/>')
        if len(rounds) > 1:
            for v in rounds:
                svg.add(f'<circle cx="{sx(v):.1f}" cy="{cy:.1f}" r="2.6" fill="#111" '
                        f'fill-opacity="0.6" stroke="#fff" stroke-width="0.8"/>')
        # the median in its own column right of the plot, so dots never cover it
        svg.text(x + w - 4, cy + 4, fmt_value(med), weight="bold", anchor="end", fill="#111")
    return (y_axis + 38) - y


def colors_for(proxies):
    out, k = {}, 0
    for pid, _ in proxies:
        if pid in FIXED_COLORS and pid != "weir":
            out[pid] = FIXED_COLORS[pid]
        elif pid == "weir":
            out[pid] = FIXED_COLORS["weir"]
        else:
            out[pid] = VARIANT_COLORS[k % len(VARIANT_COLORS)]
            k += 1
    return out


def label_for(data, w, pid, label):
    d = data.get((w, pid))
    return label + (" (errors)" if d and d["errors"] else "")


def median(xs):
    return statistics.median(xs) if xs else None


def write(path, content):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(content)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True)
    ap.add_argument("--out-stem", required=True)
    ap.add_argument("--workloads", required=True, help="comma list, in report order")
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument("--proxy", action="append", default=[], metavar="ID=LABEL",
                    help="proxy id and its label, in report order (repeat)")
    args = ap.parse_args()

    proxies = [tuple(p.split("=", 1)) for p in args.proxy if "=" in p]
    if not proxies:
        sys.exit("charts.py: no --proxy given")
    workloads = [w for w in args.workloads.split(",") if w]
    data = load(args.results)
    color = colors_for(proxies)
    name = os.path.basename(args.out_stem)
    rounds_txt = f"median of {args.rounds} rounds, dots = single rounds" if args.rounds > 1 else "1 round"
    head = "median" if args.rounds > 1 else "value"

    all_labels = [label_for(data, w, pid, lab) for w in workloads for pid, lab in proxies]
    label_w = max(len(s) for s in all_labels) * CHAR_W + 16

    written = []

    # Chart 1: req/s and p99 for 1k (or the first workload run)
    w = "1k" if "1k" in workloads else workloads[0]
    svg = Svg()
    title = f"Workload {w}: throughput and p99 latency per proxy"
    svg.text(14, 22, title, size=15, weight="bold")
    svg.text(14, 40, f"{name} · wrk closed loop, 1 proxy worker on 1 core · {rounds_txt}", size=11, fill="#666")
    rows_rps, rows_p99 = [], []
    for pid, lab in proxies:
        if (w, pid) not in data:
            continue  # not run in this workload
        d = data[(w, pid)]
        rows_rps.append((label_for(data, w, pid, lab), median(d["rps"]), d["rps"], color[pid]))
        rows_p99.append((label_for(data, w, pid, lab), median(d["p99"]), d["p99"], color[pid]))
    h1 = hbar_panel(svg, 10, 54, PANEL_W, "Requests per second (higher is better)", "req/s",
                    rows_rps, fmt_count, label_w, head)
    h2 = hbar_panel(svg, 10 + PANEL_W + 20, 54, PANEL_W, "p99 latency (lower is better)",
                    "ms (wrk --latency, closed loop)", rows_p99, fmt_ms, label_w, head)
    path = f"{args.out_stem}-throughput.svg"
    write(path, svg.render(20 + 2 * PANEL_W + 20, 54 + max(h1, h2) + 8, title))
    written.append(path)

    # Chart 2: CPU per request, one panel per workload, two columns
    svg = Svg()
    title = "CPU time per request, µs (lower is better)"
    svg.text(14, 22, title, size=15, weight="bold")
    cols = 1 if len(workloads) == 1 else 2
    svg.text(14, 40, f"{name} · utime+stime of the proxy's processes / requests · {rounds_txt}", size=11, fill="#666")
    if cols > 1:
        svg.text(20 + cols * PANEL_W + (cols - 1) * 20 - 10, 22, "each workload on its own scale",
                 size=11, anchor="end", fill="#666")
    y, h_row, height = 54, 0, 54
    for i, w in enumerate(workloads):
        c = i % cols
        if c == 0 and i > 0:
            y += h_row
            h_row = 0
        rows = []
        for pid, lab in proxies:
            if (w, pid) not in data:
                continue  # not run in this workload
            d = data[(w, pid)]
            rows.append((label_for(data, w, pid, lab), median(d["us"]), d["us"], color[pid]))
        h = hbar_panel(svg, 10 + c * (PANEL_W + 20), y, PANEL_W, WORKLOAD_TITLES.get(w, w),
                       "CPU µs per request", rows, fmt_us, label_w, head)
        h_row = max(h_row, h)
        height = y + h_row
    path = f"{args.out_stem}-cpu.svg"
    width = max(20 + cols * PANEL_W + (cols - 1) * 20, 14 + 6.2 * (len(name) + len(rounds_txt) + 52))
    write(path, svg.render(width, height + 8, title))
    written.append(path)

    for p in written:
        print(p)


if __name__ == "__main__":
    main()
