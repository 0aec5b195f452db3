"""Render the Grafana dashboard ``lensflow.json`` to a PNG without Grafana.

Every target of every timeseries panel is evaluated by a real Prometheus server over its HTTP API
(``/api/v1/query_range``) for one fixed time range, and the panels are drawn with matplotlib in
dashboard order (``gridPos``), under the titles of the rows they belong to. A panel whose queries
return nothing says "no data"; a query Prometheus rejects shows its error in the panel (and on stderr).

Dashboard variables are substituted the way Grafana would with "All" selected: every template variable
(``$namespace``, ``$group``, ``$consumergroup``, ...) becomes ``.*`` unless ``--var NAME=VALUE`` says
otherwise, ``$__rate_interval`` / ``$__interval`` become ``--rate-interval`` / ``--step``, and
``$__range`` the length of the range.

Needs matplotlib only (not a project dependency; use a separate venv)::

    python3 -m venv /tmp/render-venv && /tmp/render-venv/bin/pip install matplotlib
    /tmp/render-venv/bin/python deploy/grafana/render.py --prometheus http://127.0.0.1:9090 \\
        --start 2026-11-25T10:00:00Z --end 2026-11-25T10:02:30Z --step 2s --rate-interval 20s \\
        --out docs/images/dashboard.png --title "lensflow — bench/stages.py --replicas 12" \
        --caption "where the metrics came from"

``--start`` / ``--end`` take ISO 8601 (naive = UTC) or Unix seconds. The summary of what each panel
returned is printed on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, PercentFormatter  # noqa: E402
from PIL import Image  # noqa: E402 (a matplotlib dependency)

HERE = Path(__file__).resolve().parent

# Grafana's classic series palette
PALETTE = ["#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9", "#705DA0",
           "#508642", "#CCA300", "#447EBC", "#C15C17", "#E5A8E2", "#0A437C", "#F9934E", "#B7DBAB"]
BG, PANEL, GRID, TEXT, MUTED = "#111217", "#181b1f", "#2c3235", "#d8d9da", "#8e8e8e"

# fieldConfig.defaults.unit -> (y-axis label, formatter)
UNITS = {
    "ops": ("ops/s", None),
    "reqps": ("req/s", None),
    "percentunit": ("percent", PercentFormatter(1.0)),
    "percent": ("percent", PercentFormatter(100.0)),
    "s": ("seconds", None),
    "ms": ("milliseconds", None),
    "bytes": ("bytes", None),
    "short": (None, None),
    "none": (None, None),
}

# inches per gridPos height unit, the figure's width in inches (1600 px at 100 dpi)
UNIT_IN, FIG_W_IN, DPI = 0.42, 16.0, 100
PAD_L, PAD_R, PAD_T, PAD_X = 0.75, 0.2, 0.42, 0.38   # inches around each plot: left ticks, right, title, x ticks
LEGEND_ROW_IN, LEGEND_COLS = 0.19, 4


def parse_time(s: str) -> float:
    """Unix seconds from ``s`` (a number, or ISO 8601; naive means UTC)."""
    try:
        return float(s)
    except ValueError:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
        return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def duration_s(s: str) -> float:
    """Seconds in a Prometheus duration such as ``2s``, ``1m30s``, ``500ms`` (or a bare number)."""
    try:
        return float(s)
    except ValueError:
        pass
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise argparse.ArgumentTypeError(f"not a duration: {s!r}")
    return sum(float(n) * units[u] for n, u in parts)


def walk_panels(dashboard: dict):
    """(section title, panel) in dashboard order; rows give the section, collapsed rows' panels included."""
    section = None
    for p in sorted(dashboard.get("panels", []), key=lambda p: (p.get("gridPos", {}).get("y", 0), p.get("gridPos", {}).get("x", 0))):
        if p.get("type") == "row":
            section = p.get("title")
            yield section, p
            for q in p.get("panels", []):          # a collapsed row keeps its panels inside it
                yield section, q
        else:
            yield section, p


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana variable syntaxes ``$name``, ``${name}``, ``${name:fmt}``, ``[[name]]`` replaced from ``values``;
    unknown names are left as they are (Prometheus will then reject the query and say why)."""
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return values.get(name, m.group(0))
    return re.sub(r"\$\{(\w+)(?::[\w-]+)?\}|\$(\w+)|\[\[(\w+)\]\]", repl, expr)


def query_range(base: str, expr: str, start: float, end: float, step: str,
                timeout: float = 30) -> tuple[list[dict], list[str]]:
    """The ``result`` of a range query (a matrix) and the warnings/infos Prometheus attached to it; raises
    RuntimeError with Prometheus' error text when it rejects the query."""
    body = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step}).encode()
    req = urllib.request.Request(base.rstrip("/") + "/api/v1/query_range", data=body,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            doc = json.load(r)
    except urllib.error.HTTPError as e:      # 400/422 carry a JSON body with errorType and error
        try:
            doc = json.load(e)
        except ValueError:
            raise RuntimeError(f"HTTP {e.code}: {e.reason}") from None
    if doc.get("status") != "success":
        raise RuntimeError(f"{doc.get('errorType', 'error')}: {doc.get('error', doc)}")
    return doc["data"]["result"], doc.get("warnings", []) + doc.get("infos", [])


def legend(fmt: str | None, labels: dict[str, str]) -> str:
    """The target's legendFormat with ``{{label}}`` filled in (missing labels are empty, as in Grafana);
    without one, or when it comes out blank, the label set."""
    if fmt and fmt != "__auto":
        text = re.sub(r"\{\{\s*([\w.]+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()
        if text:
            return text
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{rest}}}" if (name or rest) else "value"


def fetch(panels, args, values, start, end):
    """Per panel: (section, panel, series, errors); a series is (legend, times, values, label set, target
    index), sorted by labels within its target; an error is (refId, message)."""
    out = []
    for section, p in panels:
        series, errors = [], []
        if p.get("type") == "row":
            out.append((section, p, series, errors))
            continue
        for i, t in enumerate(x for x in p.get("targets", []) if x.get("expr") and not x.get("hide")):
            expr = substitute(t["expr"], values)
            try:
                result, notes = query_range(args.prometheus, expr, start, end, args.step)
            except (RuntimeError, OSError) as e:
                errors.append((t.get("refId", "?"), str(e)))
                print(f"error: panel {p.get('title')!r} target {t.get('refId', '?')}: {e}\n  query: {expr}", file=sys.stderr)
                continue
            for note in notes:
                print(f"note: panel {p.get('title')!r} target {t.get('refId', '?')}: {note}", file=sys.stderr)
            for s in sorted(result, key=lambda s: sorted(s["metric"].items())):
                xs = [datetime.fromtimestamp(float(ts), timezone.utc) for ts, _ in s["values"]]
                ys = [float(v) for _, v in s["values"]]   # "NaN", "+Inf" parse as floats
                key = tuple(sorted(s["metric"].items()))
                series.append((legend(t.get("legendFormat"), s["metric"]), xs, ys, key, i))
        out.append((section, p, series, errors))
    return out


def draw(fetched, args, start, end) -> list[tuple[str, str]]:
    """Lay the panels out on their gridPos (24 columns) and save the figure; returns (title, outcome).

    Panels that share a gridPos ``y`` form a line of the layout (as every line of lensflow.json does); a
    line is as tall as its tallest panel, which grows with its legend (one legend row per 4 series)."""
    layout, summary = [], []
    y_in = 1.0 + (0.3 if args.caption else 0)
    rows: dict[int, list] = {}
    for item in fetched:
        rows.setdefault(item[1].get("gridPos", {}).get("y", 0), []).append(item)
    for y in sorted(rows):
        items = rows[y]
        heights = []
        for section, p, series, errors in items:
            gp = p.get("gridPos", {"h": 8})
            if p.get("type") == "row":
                heights.append(0.5)
                continue
            finite = [s for s in series if any(math.isfinite(v) for v in s[2])]
            n_leg = math.ceil(len(finite) / LEGEND_COLS) if finite else 0
            heights.append(gp.get("h", 8) * UNIT_IN + n_leg * LEGEND_ROW_IN)
        h = max(heights)
        for item in items:
            layout.append((y_in, h, item))
        y_in += h + 0.12
    fig_h = y_in + 0.2
    plt.rcParams.update({"font.size": 9, "text.color": TEXT, "axes.labelcolor": MUTED, "text.parse_math": False,
                         "xtick.color": MUTED, "ytick.color": MUTED})   # no mathtext: "$" appears in the texts
    fig = plt.figure(figsize=(FIG_W_IN, fig_h), dpi=DPI, facecolor=BG)
    fx = lambda inch: inch / FIG_W_IN           # noqa: E731
    fy = lambda inch: 1 - inch / fig_h           # noqa: E731 (top-down inches -> figure fraction)
    title = args.title or "lensflow"
    fig.text(fx(0.25), fy(0.34), title, fontsize=17, weight="bold", color=TEXT, va="center")
    span = (f"{datetime.fromtimestamp(start, timezone.utc):%Y-%m-%d %H:%M:%S} – "
            f"{datetime.fromtimestamp(end, timezone.utc):%H:%M:%S} UTC · step {args.step} · "
            f"$__rate_interval={args.rate_interval} · " + ", ".join(f"${k}={v}" for k, v in args.shown_vars.items()))
    fig.text(fx(0.25), fy(0.72), span + f" · {args.prometheus}", fontsize=10, color=MUTED, va="center")
    if args.caption:
        fig.text(fx(0.25), fy(1.0), args.caption, fontsize=10, color=MUTED, va="center")
    for top, h, (section, p, series, errors) in layout:
        gp = p.get("gridPos", {"x": 0, "w": 24})
        x0, w = gp.get("x", 0) * FIG_W_IN / 24, gp.get("w", 24) * FIG_W_IN / 24
        if p.get("type") == "row":
            fig.text(fx(x0 + 0.25), fy(top + 0.25), p.get("title", ""), fontsize=13, weight="bold", color=TEXT, va="center")
            fig.add_artist(plt.Line2D([fx(x0 + 0.25), fx(x0 + w - 0.25)], [fy(top + 0.47)] * 2, color=GRID, lw=1))
            continue
        # the panel's background box
        fig.add_artist(matplotlib.patches.FancyBboxPatch(
            (fx(x0 + 0.08), fy(top + h)), fx(w - 0.16), (h) / fig_h, boxstyle="round,pad=0,rounding_size=0.004",
            transform=fig.transFigure, facecolor=PANEL, edgecolor=GRID, lw=0.8, zorder=-1))
        finite = [s for s in series if any(math.isfinite(v) for v in s[2])]
        n_leg = math.ceil(len(finite) / LEGEND_COLS) if finite else 0
        plot_top, plot_bottom = top + PAD_T, top + h - PAD_X - n_leg * LEGEND_ROW_IN - (0.08 if n_leg else 0)
        ax = fig.add_axes([fx(x0 + PAD_L), fy(plot_bottom), fx(w - PAD_L - PAD_R), (plot_bottom - plot_top) / fig_h])
        ax.set_facecolor(PANEL)
        fig.text(fx(x0 + 0.22), fy(top + 0.2), p.get("title", ""), fontsize=10.5, weight="bold", color=TEXT, va="center")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for side in ("left", "bottom"):
            ax.spines[side].set_color(GRID)
        ax.grid(True, color=GRID, lw=0.6)
        ax.set_xlim(datetime.fromtimestamp(start, timezone.utc), datetime.fromtimestamp(end, timezone.utc))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=timezone.utc))
        ax.tick_params(labelsize=8.5, length=0)
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        label, formatter = UNITS.get(unit, (unit, None))
        if label:
            ax.set_ylabel(label, fontsize=8.5)
        ax.yaxis.set_major_formatter(formatter or FuncFormatter(short))
        # one colour per label set, so "objects p50" and "objects p95" match; the 2nd, 3rd.. target is dashed, dotted
        color_of: dict[tuple, str] = {}
        for name, xs, ys, key, i in finite:
            c = color_of.setdefault(key, PALETTE[len(color_of) % len(PALETTE)])
            ax.plot(xs, ys, color=c, lw=1.4, ls=["-", "--", ":", "-."][i % 4], label=name)
        if finite:
            ax.set_ylim(bottom=min(0, min(min(v for v in s[2] if math.isfinite(v)) for s in finite)))
            ax.legend(loc="upper left", bbox_to_anchor=(-0.02, -0.1), ncol=LEGEND_COLS, fontsize=8.5, frameon=False,
                      handlelength=1.4, columnspacing=1.2, borderaxespad=0, labelcolor=TEXT)
            summary.append((p.get("title", ""), f"{len(finite)} series" + (f" ({len(series) - len(finite)} all-NaN)"
                                                                          if len(series) > len(finite) else "")))
        else:
            ax.set_yticks([])
            msg = "no data" if not errors else "query error:\n" + "\n".join(f"{r}: {e[:110]}" for r, e in errors)
            ax.text(0.5, 0.5, msg, transform=ax.transAxes, ha="center", va="center",
                    fontsize=14 if not errors else 8.5, color=MUTED if not errors else "#E24D42", wrap=True)
            summary.append((p.get("title", ""), "no data" if not errors else "error"))
        for ref, e in errors if finite else []:
            ax.text(1, 1.02, f"{ref}: error (see stderr)", transform=ax.transAxes, ha="right", fontsize=8, color="#E24D42")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor=BG)
    # a 256-colour palette keeps the PNG a few hundred KB instead of ~1 MB, with no visible loss on flat panels
    Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return summary


def short(v: float, _pos=None) -> str:
    """Grafana's "short" unit: 1.2K, 3.4M, small numbers with few digits."""
    a = abs(v)
    for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if a >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.3g}" if a else "0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dashboard", type=Path, default=HERE / "lensflow.json")
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    ap.add_argument("--start", required=True, help="ISO 8601 (naive = UTC) or Unix seconds")
    ap.add_argument("--end", required=True, help="ISO 8601 (naive = UTC) or Unix seconds")
    ap.add_argument("--step", default="2s", help="query_range step, a Prometheus duration (also $__interval)")
    ap.add_argument("--rate-interval", default="20s", help="what $__rate_interval becomes")
    ap.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                    help="a dashboard variable's value (default .* for every template variable); repeatable")
    ap.add_argument("--out", default="docs/images/dashboard.png")
    ap.add_argument("--title", help="heading of the image (default: the dashboard's title)")
    ap.add_argument("--caption", help="a line under the heading, e.g. where the metrics came from")
    args = ap.parse_args()

    start, end = parse_time(args.start), parse_time(args.end)
    if end <= start:
        ap.error("--end must be after --start")
    duration_s(args.step), duration_s(args.rate_interval)       # fail early on a bad duration
    dashboard = json.loads(args.dashboard.read_text())
    names = [v["name"] for v in dashboard.get("templating", {}).get("list", []) if v.get("type") != "datasource"]
    values = {n: ".*" for n in names}
    for kv in args.var:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"--var wants NAME=VALUE, got {kv!r}")
        values[k] = v
    args.shown_vars = dict(values)
    values.update({"__rate_interval": args.rate_interval, "__interval": args.step,
                   "__range": f"{int(end - start)}s", "__range_s": str(int(end - start))})
    args.title = args.title or dashboard.get("title", "dashboard")

    panels = [(s, p) for s, p in walk_panels(dashboard) if p.get("type") in ("row", "timeseries", "graph")]
    fetched = fetch(panels, args, values, start, end)
    summary = draw(fetched, args, start, end)
    width = max(len(t) for t, _ in summary)
    for t, outcome in summary:
        print(f"{t:<{width}}  {outcome}")
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
