"""The read-only statistics page: campaigns with their figures and a chart of events over time.

Self-contained (no CDN, nothing fetched): the report is embedded as JSON and a small inline
script renders the table and an SVG chart with ``textContent`` only, so a campaign name can't
inject markup. Every figure cell carries ``data-campaign``, ``data-field`` and ``data-value``.

A second table has one row per message tag (what ``/api/stats`` returns as ``tags`` and
``smtpgate stats --by-tag`` prints): a message with two tags counts under both, so it has no total
line. Tag names come from senders' headers, so they are rendered the same way, as text only; its
cells carry ``data-tag`` instead of ``data-campaign``.
"""

from __future__ import annotations

import html
import json
from typing import Any

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>smtpgate statistics</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-top: 1em; font-size: 0.9em; display: block; max-width: 100%;
  overflow-x: auto; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tfoot td {{ font-weight: bold; }}
#chart {{ border: 1px solid #ddd; background: #fcfcfc; max-width: 100%; height: auto; }}
form label {{ display: inline-block; margin: 0 1em 0.5em 0; }}
input {{ max-width: 100%; }}
.legend span {{ margin-right: 1em; }}
</style></head>
<body>
<h1>Campaign statistics</h1>
<form method="get">
<label>Campaign <input name="campaign" value="{campaign}"></label>
<label>Since <input name="since" placeholder="YYYY-MM-DD" value="{since}"></label>
<label>Until <input name="until" placeholder="YYYY-MM-DD" value="{until}"></label>
<button type="submit">Show</button>
</form>
<p id="status">Rendering&hellip;</p>
<h2>Events over time</h2>
<div class="legend" id="legend"></div>
<svg id="chart" width="860" height="260" viewBox="0 0 860 260" role="img" aria-label="Events over time"></svg>
<h2>Campaigns</h2>
<table id="campaigns"><thead><tr id="head"></tr></thead><tbody></tbody><tfoot></tfoot></table>
<h2>By tag</h2>
<p>A message with several tags counts under each of them, so these rows do not add up to the totals.</p>
<table id="tags"><thead><tr id="tag-head"></tr></thead><tbody></tbody></table>
<noscript><p>This page renders with JavaScript; the same figures are at <a href="api/stats">/api/stats</a>.</p></noscript>
<script type="application/json" id="stats-data">{data}</script>
<script>
(function () {{
  "use strict";
  var data = JSON.parse(document.getElementById("stats-data").textContent);
  var COLS = [["sent", "Sent"], ["delivered", "Delivered"], ["bounced_hard", "Hard bounces"],
    ["bounced_soft", "Soft bounces"], ["opens", "Opens"], ["unique_opens", "Unique opens"],
    ["machine_opens", "Machine opens"], ["clicks", "Clicks"], ["unique_clicks", "Unique clicks"],
    ["machine_clicks", "Machine clicks"], ["unsubscribes", "Unsubscribes"], ["complaints", "Complaints"],
    ["delivery_rate", "Delivery rate"], ["open_rate", "Open rate"], ["click_rate", "Click rate"],
    ["unsubscribe_rate", "Unsubscribe rate"]];
  var SVG = "http://www.w3.org/2000/svg";
  function el(tag, text, attrs) {{
    var e = document.createElement(tag);
    if (text !== null) e.textContent = text;
    for (var k in attrs || {{}}) e.setAttribute(k, attrs[k]);
    return e;
  }}
  function fmt(field, v) {{
    return /_rate$/.test(field) ? (v * 100).toFixed(1) + "%" : String(v);
  }}
  function header(id, first) {{
    var head = document.getElementById(id);
    head.appendChild(el("th", first));
    COLS.forEach(function (c) {{ head.appendChild(el("th", c[1])); }});
  }}
  header("head", "Campaign");
  header("tag-head", "Tag");
  function row(name, label, r, key) {{
    key = key || "data-campaign";
    var attrs = {{}};
    attrs[key] = name;
    var tr = el("tr", null, attrs);
    tr.appendChild(el("td", label));
    COLS.forEach(function (c) {{
      var cell = {{}};  // attribute order: the row's key first, then field and value
      cell[key] = name;
      cell["data-field"] = c[0];
      cell["data-value"] = String(r[c[0]]);
      tr.appendChild(el("td", fmt(c[0], r[c[0]]), cell));
    }});
    return tr;
  }}
  var body = document.querySelector("#campaigns tbody");
  data.campaigns.forEach(function (r) {{ body.appendChild(row(r.campaign, r.campaign || "(no campaign)", r)); }});
  document.querySelector("#campaigns tfoot").appendChild(row("*", "All campaigns", data.totals));
  var tagBody = document.querySelector("#tags tbody"), tags = data.tags || [];
  tags.forEach(function (r) {{ tagBody.appendChild(row(r.tag, r.tag, r, "data-tag")); }});
  if (!tags.length) {{
    var none = el("tr");
    none.appendChild(el("td", "no tagged events", {{colspan: String(COLS.length + 1)}}));
    tagBody.appendChild(none);
  }}

  var tl = data.timeline, chart = document.getElementById("chart");
  var SERIES = [["delivered", "#2b7bb9"], ["opened", "#3a9d3a"], ["clicked", "#e08a00"],
    ["bounced", "#c0392b"], ["unsubscribed", "#7d3c98"]];
  var W = 860, H = 260, L = 50, R = 20, T = 15, B = 40;
  var max = 1;
  SERIES.forEach(function (s) {{ (tl.series[s[0]] || []).forEach(function (v) {{ if (v > max) max = v; }}); }});
  function svg(tag, attrs, text) {{
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    chart.appendChild(e);
    return e;
  }}
  svg("line", {{x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999"}});
  svg("line", {{x1: L, y1: T, x2: L, y2: H - B, stroke: "#999"}});
  svg("text", {{x: L - 6, y: T + 4, "text-anchor": "end", "font-size": 11}}, String(max));
  svg("text", {{x: L - 6, y: H - B, "text-anchor": "end", "font-size": 11}}, "0");
  var n = tl.labels.length;
  function x(i) {{ return n > 1 ? L + i * (W - L - R) / (n - 1) : L + (W - L - R) / 2; }}
  function y(v) {{ return H - B - v * (H - B - T) / max; }}
  if (n) {{
    svg("text", {{x: x(0), y: H - B + 16, "font-size": 11, "text-anchor": n > 1 ? "start" : "middle"}}, tl.labels[0]);
    if (n > 1) svg("text", {{x: x(n - 1), y: H - B + 16, "font-size": 11, "text-anchor": "end"}}, tl.labels[n - 1]);
  }}
  var legend = document.getElementById("legend");
  SERIES.forEach(function (s) {{
    var vals = tl.series[s[0]] || [];
    var pts = vals.map(function (v, i) {{ return x(i) + "," + y(v); }}).join(" ");
    if (vals.length > 1) svg("polyline", {{points: pts, fill: "none", stroke: s[1], "stroke-width": 2, "data-series": s[0]}});
    vals.forEach(function (v, i) {{ svg("circle", {{cx: x(i), cy: y(v), r: 3, fill: s[1], "data-series": s[0], "data-value": v}}); }});
    var total = vals.reduce(function (a, b) {{ return a + b; }}, 0);
    legend.appendChild(el("span", s[0] + ": " + total, {{style: "color:" + s[1], "data-series": s[0], "data-total": String(total)}}));
  }});
  document.getElementById("status").textContent =
    data.campaigns.length + " campaign(s), " + data.totals.sent + " sent, per " + tl.bucket + ".";
  document.body.setAttribute("data-rendered", "1");
}})();
</script>
</body></html>
"""


def _script_json(data: Any) -> str:
    """JSON safe inside ``<script>``: no ``<``, ``>`` or ``&`` that could end the element."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_stats_page(report: dict[str, Any], query: dict[str, str]) -> str:
    return _PAGE.format(
        data=_script_json(report),
        campaign=html.escape(query.get("campaign", "")),
        since=html.escape(query.get("since", "")),
        until=html.escape(query.get("until", "")),
    )
