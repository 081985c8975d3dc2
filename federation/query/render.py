"""Results as people read them: terminal tables, CSV, JSON, Markdown, and plots
(Kaplan-Meier curves with their risk table, bar charts of counts)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from federation.csvsafe import SafeWriter
from federation.query.central.runner import Result

HIDDEN = "<5"


def _bin(v: dict[str, Any]) -> list[str]:
    """A quantile's bin (lo, hi]: its upper end and width; an open bin at either end of the grid."""
    lo, hi = v.get("bin", [None, v.get("value")])
    if hi is None:
        return [f"> {_fmt(lo)}", "open bin"]
    if lo is None:
        return [f"<= {_fmt(hi)}", "open bin"]
    return [_fmt(hi), f"{v['error_bound']:.2g}"]


def _fmt(v: Any, hidden: str = "suppr.") -> str:
    if isinstance(v, dict) and v.get("suppressed"):
        return hidden
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def group_label(dims: list[str], group: list[Any]) -> str:
    """A group as people read it: its values, a yes/no column named ("had_radiotherapy: yes"); "all" for none."""
    return " / ".join(f"{d}: {'yes' if v else 'no'}" if isinstance(v, bool) else str(v)
                      for d, v in zip(dims, group, strict=False)) or "all"


SURVIVAL_LABEL = {"efs": "event-free survival", "os": "overall survival", "late_effect": "late-effect-free survival"}


def survival_summary(payload: dict[str, Any]) -> list[str]:
    """A Kaplan-Meier result's medians (combined curves) and log-rank tests, as lines of text."""
    if payload.get("statistic") not in ("km", "cif"):
        return []
    out = []
    what = SURVIVAL_LABEL.get(payload.get("endpoint", ""), "overall survival")
    dims = list(payload.get("dims") or [])
    for c in payload["curves"]:
        m = c["combined"].get("median")
        if m is None:
            continue
        name = group_label(dims, c["group"])
        out.append(f"median {what}, {name}: {_days(m['day'])} (95% CI {_days(m['ci95'][0])} to "
                   f"{_days(m['ci95'][1])})")
    for c in payload["curves"]:
        rm = c["combined"].get("rmst")
        if rm is None or rm.get("withheld"):  # not at a day the curve shows: the JSON says which days it shows
            continue
        name = group_label(dims, c["group"])
        out.append(f"restricted mean {what} to day {rm['horizon_days']:g}, {name}: {rm['days']:.1f} days "
                   f"(SE {rm['se']:.1f}; 95% CI {rm['ci95'][0]:.1f} to {rm['ci95'][1]:.1f})")
    for d in payload.get("rmst_differences") or []:
        out.append(f"difference in restricted mean {what} to day {d['horizon_days']:g}, "
                   f"{group_label(dims, d['group'])} minus {group_label(dims, d['reference'])}: "
                   f"{d['difference_days']:.1f} days (95% CI "
                   f"{d['ci95'][0]:.1f} to {d['ci95'][1]:.1f}; {_p(d['p'])})")
    tests = (("gray", "Gray's test"), ("gray_stratified_by_site", "Gray's test stratified by site"),
             ("logrank", "log-rank test"), ("logrank_stratified_by_site", "log-rank test stratified by site"))
    for key, title in tests:
        t = (payload.get("tests") or {}).get(key)
        if t is None:
            continue
        if t.get("withheld"):
            out.append(f"{title}: not given ({t['reason']})")
            continue
        groups = ", ".join(group_label(dims, g) for g in t["groups"])
        left = (" (left out, too small to show: " + ", ".join(group_label(dims, g) for g in t["left_out"]) + ")"
                if t["left_out"] else "")
        hazard = f", {t['hazard']}" if t.get("hazard") else ""
        out.append(f"{title} of {groups}{left}: chi2 = {t['chi2']:.3f}, df = {t['df']}, {_p(t['p'])} "
                   f"(follow-up to day {t['follow_up_days']:g}{hazard})")
    return out


def _days(v: float | None) -> str:
    return "not reached" if v is None else f"day {v:.0f} ({v / 365.25:.2f} y)"


def _p(p: float | None) -> str:
    """"p = 0.0123", "p < 0.0001"."""
    return "p not computed" if p is None else "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}"


def rows_of(result: Result) -> tuple[list[str], list[list[Any]]]:
    """A flat table of the released values: header and rows (suppressed entries say so)."""
    p = result.payload
    stat = p.get("statistic")
    sites = result.sites
    if stat == "count":
        header = [*p["dims"], "combined", *sites]
        rows = [[*r["group"], _fmt(r["combined"]), *[_fmt(r["per_site"].get(s)) for s in sites]] for r in p["rows"]]
        if p["dims"]:
            rows.append(["total"] + [""] * (len(p["dims"]) - 1) + [_fmt(p["total"]["combined"])]
                        + [_fmt(p["total"]["per_site"].get(s)) for s in sites])
        return header, rows
    if stat == "crosstab":
        header = [f"{p['rows_dim']} \\ {p['cols_dim']}", *map(str, p["cols"])]
        return header, [[r, *[_fmt(v) for v in vals]] for r, vals in zip(p["rows"], p["combined"], strict=True)]
    if stat in ("sum", "mean", "variance"):
        keys = ["n", "mean", "sd", "variance"] + (["sum"] if stat == "sum" else [])
        header = [*p["dims"], "site", *keys]
        rows = []
        for r in p["rows"]:
            for site, v in [("combined", r["combined"]), *r["per_site"].items()]:
                rows.append([*r["group"], site, *(["suppr."] * len(keys) if v.get("suppressed")
                                                  else [_fmt(v.get(k2, "")) for k2 in keys])])
        return header, rows
    if stat == "proportion":
        header = [*p["dims"], "site", "x", "n", "proportion", "ci95 low", "ci95 high"]
        rows = []
        for r in p["rows"]:
            for site, v in [("combined", r["combined"]), *r["per_site"].items()]:
                rows.append([*r["group"], site, *(["suppr."] * 5 if v.get("suppressed") else
                                                  [v["x"], v["n"], _fmt(v["proportion"]), _fmt(v["ci95"][0]),
                                                   _fmt(v["ci95"][1])])])
        return header, rows
    if stat == "quantiles":
        header = [*p["dims"], "n", "probability", "value", "error bound"]
        rows = []
        for r in p["rows"]:
            c = r["combined"]
            if c.get("suppressed"):
                rows.append([*r["group"], "suppr.", "", "", ""])
                continue
            for prob, v in c["quantiles"].items():
                rows.append([*r["group"], c["n"], prob, *(["suppr.", ""] if v.get("suppressed") else _bin(v))])
        return header, rows
    if stat == "cif":
        header = [*p["dims"], "curve", "day", "incidence", "ci95 low", "ci95 high", "competing", "ci95 low",
                  "ci95 high", "at risk"]
        rows = []
        for c in p["curves"]:
            for name, curve in [("combined", c["combined"]), *c["per_site"].items()]:
                for pt in curve["points"]:
                    rows.append([*c["group"], name, f"{pt['day']:.0f}", _fmt(pt["incidence"]), _fmt(pt["ci95"][0]),
                                 _fmt(pt["ci95"][1]), _fmt(pt["competing"]), _fmt(pt["competing_ci95"][0]),
                                 _fmt(pt["competing_ci95"][1]), _fmt(pt["at_risk"])])
        return header, rows
    if stat == "km":
        header = [*p["dims"], "curve", "day", "survival", "ci95 low", "ci95 high", "at risk"]
        rows = []
        for c in p["curves"]:
            for name, curve in [("combined", c["combined"]), *c["per_site"].items()]:
                for pt in curve["points"]:
                    rows.append([*c["group"], name, f"{pt['day']:.0f}", _fmt(pt["survival"]), _fmt(pt["ci95"][0]),
                                 _fmt(pt["ci95"][1]), _fmt(pt["at_risk"])])
        return header, rows
    if stat in ("logistic", "cox"):
        ratio = "odds_ratio" if stat == "logistic" else "hazard_ratio"
        name = ratio.replace("_", " ")
        header = ["term", "estimate (log)", "se", "z", "p", name, f"{name} ci95 low", f"{name} ci95 high"]
        return header, [[c["term"], _fmt(c["estimate"]), _fmt(c["se"]), _fmt(c["z"]), _fmt(c["p"]),
                         _fmt(c[ratio]), _fmt(c[f"{ratio}_ci95"][0]), _fmt(c[f"{ratio}_ci95"][1])]
                        for c in p["coefficients"]]
    return [], []


def to_text(result: Result, max_rows: int = 60) -> str:
    lines = [result.query.describe()]
    if result.status != "released":
        lines.append(f"{result.status.upper()}: {result.reason}")
        if result.suggestion:
            lines.append(f"  instead: {result.suggestion}")
        lines.append(f"  (audit entry #{result.audit_id})")
        return "\n".join(lines)
    header, rows = rows_of(result)
    shown = rows[:max_rows] if result.payload.get("statistic") in ("km", "cif") else rows
    widths = [max(len(str(x)) for x in col) for col in zip(header, *shown, strict=False)] if shown else []
    lines.append("  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=False)))
    for r in shown:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=False)))
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more rows (use --format csv)")
    lines += survival_summary(result.payload)
    lines.append(f"versions: {', '.join(result.versions.values())}  audit entry #{result.audit_id}")
    for site, why in result.excluded.items():
        lines.append(f"  {site}: {why}")
    for note in result.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def to_csv(result: Result) -> str:
    if result.status != "released":
        return f"{result.status},{json_quote(result.reason)}\n"
    header, rows = rows_of(result)
    buf = io.StringIO()
    w = SafeWriter(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def json_quote(text: str) -> str:
    return json.dumps(text)


def to_markdown(result: Result) -> str:
    header, rows = rows_of(result)
    if result.status != "released":
        return f"**{result.status.capitalize()}**: {result.reason}\n\n{result.suggestion}\n"
    out = [f"**{result.query.describe()}**", "", "| " + " | ".join(map(str, header)) + " |",
           "|" + "---|" * len(header)]
    out += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    summary = survival_summary(result.payload)
    out += ["", *(f"- {line}" for line in summary)] if summary else []
    out += ["", f"Versions: {', '.join(result.versions.values())}. Audit entry #{result.audit_id}."]
    return "\n".join(out) + "\n"


def to_json(result: Result) -> str:
    return json.dumps(result.to_dict(), indent=2, default=str) + "\n"


def plot(result: Result, path: Path) -> Path:
    """Kaplan-Meier curves with a risk table, or a bar chart of counts; PNG."""
    import matplotlib.pyplot as plt

    fig = figure(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure(result: Result) -> Any:
    """The matplotlib figure of `plot` (Kaplan-Meier with risk table, or bars of counts)."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "nbagg"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = result.payload
    stat = p.get("statistic")
    if stat in ("km", "cif"):
        fig, (ax, risk) = plt.subplots(2, 1, figsize=(8, 6), height_ratios=[4, 1.3], sharex=True)
        years = []
        value = "survival" if stat == "km" else "incidence"
        for c in p["curves"]:
            pts = c["combined"]["points"]
            label = group_label(p.get("dims") or [], c["group"])
            median = c["combined"].get("median") or {}
            if median.get("day") is not None:
                label += f" (median {median['day'] / 365.25:.1f} y)"
            elif c["combined"].get("withheld"):
                label += " (withheld by disclosure control)"
            elif len(pts) < 2:
                label += " (too few events to show)"
            xs = [pt["day"] / 365.25 for pt in pts]
            line, = ax.step(xs, [pt[value] for pt in pts], where="post", label=label)
            ax.fill_between(xs, [pt["ci95"][0] for pt in pts], [pt["ci95"][1] for pt in pts], step="post", alpha=0.15)
            # censor marks: a + on each step during which at least k patients were censored
            marks = [((a["day"] + b["day"]) / 2 / 365.25, a[value]) for a, b in zip(pts, pts[1:], strict=False)
                     if b.get("censored_since")]
            if marks:
                ax.plot(*zip(*marks, strict=True), linestyle="none", marker="+", color=line.get_color(),
                        markersize=7)
            if stat == "cif":  # the competing events' incidence, dashed in the same colour
                ax.step(xs, [pt["competing"] for pt in pts], where="post", linestyle="--", color=line.get_color(),
                        label=f"{label}: competing events")
            years.append((label, pts))
        ax.plot([], [], linestyle="none", marker="+", color="grey",
                label="censored on this step (marked when at least k)")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(SURVIVAL_LABEL.get(p["endpoint"], "survival") if stat == "km" else
                      f"cumulative incidence of {'/'.join(p.get('cause', []))}")
        ax.legend(loc="lower left" if stat == "km" else "upper left")
        test = (p.get("tests") or {}).get("logrank") or {}
        if "p" in test:
            ax.text(0.98, 0.97, f"log-rank {_p(test['p'])}", transform=ax.transAxes, ha="right", va="top",
                    fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_title(result.query.describe(), fontsize=9)
        xmax = max((pt["day"] / 365.25 for _, pts in years for pt in pts), default=1.0)
        ax.set_xlim(-0.2, xmax + 0.3)
        ax.tick_params(labelbottom=True)
        ax.set_xlabel("years since enrollment")
        risk.set_axis_off()
        for i, c in enumerate(p["curves"]):
            label = group_label(p.get("dims") or [], c["group"])
            for row in c["combined"].get("risk_table", []):
                if row["year"] <= xmax:
                    risk.text(row["year"], -i, _fmt(row["at_risk"], HIDDEN), ha="center", fontsize=8)
            risk.text(-0.4, -i, label, ha="right", fontsize=8)
        risk.set_ylim(-len(p["curves"]), 1)
        risk.set_title("number at risk", fontsize=8, loc="left")
        del years
    else:
        header, rows = rows_of(result)
        fig, ax = plt.subplots(figsize=(8, 4.5))
        if stat == "count" and p["dims"]:
            labels = [group_label(p.get("dims") or [], r["group"]) for r in p["rows"]]
            values = [0 if isinstance(r["combined"], dict) else r["combined"] for r in p["rows"]]
            bars = ax.bar(labels, values)
            for bar, r in zip(bars, p["rows"], strict=True):
                if isinstance(r["combined"], dict):
                    ax.annotate("suppressed", (bar.get_x() + bar.get_width() / 2, 0), ha="center", fontsize=7,
                                rotation=90, va="bottom")
            ax.set_ylabel("count (combined)")
        elif stat == "crosstab":
            cols = p["cols"][:-1]
            width = 0.8 / max(len(cols), 1)
            for j, col in enumerate(cols):
                vals = [0 if isinstance(row[j], dict) else row[j] for row in p["combined"][:-1]]
                xs = [i + j * width for i in range(len(vals))]
                ax.bar(xs, vals, width, label=str(col))
                for x, row in zip(xs, p["combined"][:-1], strict=True):
                    if isinstance(row[j], dict):
                        ax.annotate("suppressed", (x, 0), ha="center", va="bottom", fontsize=6, rotation=90)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(p["rows"]) - 1)], p["rows"][:-1])
            ax.legend(title=p["cols_dim"])
            ax.set_xlabel(p["rows_dim"])
        else:
            ax.text(0.5, 0.5, "no plot for this statistic; use --format", ha="center")
        ax.set_title(result.query.describe(), fontsize=9)
        del header, rows
    fig.tight_layout()
    return fig
