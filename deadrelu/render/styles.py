"""The report page's CSS (scoped to the report's container by ``render.html.scope_css``).

Under 640 px the sites table becomes one card per site (name, then kind, units, dead, dead %
labelled), so a phone shows the verdict, the name and dead % without sideways scrolling.
"""

from __future__ import annotations

CSS = """
:root{--fg:#1d1d1f;--muted:#5f6368;--line:#dadce0;--bg:#fff;--soft:#f6f7f9;--dead:#d62728;--sat:#ff7f0e;
--ok:#1e8e3e;--warn:#b06000;--crit:#c5221f;--info:#1a73e8;--leaky:#0f8a9d;
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--fg);background:var(--bg);text-align:left}
*{box-sizing:border-box}
main{max-width:1120px;margin:0 auto;padding:24px 28px 64px}
.verdictcard{display:flex;flex-wrap:wrap;gap:6px 16px;align-items:baseline;border:1px solid var(--line);
border-left:8px solid var(--ok);border-radius:8px;padding:12px 16px;margin:0 0 14px;background:var(--soft)}
.verdictcard.WARN{border-left-color:var(--warn)}.verdictcard.FAIL{border-left-color:var(--crit)}
.verdictcard .level{font-size:26px;font-weight:750;color:var(--ok)}.verdictcard.WARN .level{color:var(--warn)}
.verdictcard.FAIL .level{color:var(--crit)}.verdictcard .what{font-size:17px;overflow-wrap:anywhere}
.verdictcard .more{flex-basis:100%;color:var(--muted);font-size:14px}
tr.leaky td{background:#e8f6f8}.explains{font-weight:650}.cause{font-weight:650;margin-right:.6em}.destructive{color:var(--crit);font-weight:650}
.changes{font-size:13px;color:var(--muted)}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:36px 0 12px;border-bottom:1px solid var(--line);
padding-bottom:4px}h3{font-size:16px;margin:0 0 6px}
.sub{color:var(--muted);margin:0 0 18px;overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px}
.card{border:1px solid var(--line);border-radius:8px;padding:12px 14px;background:var(--soft)}
.card .label{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.card .value{font-size:24px;font-weight:650}.card .note{font-size:13px;color:var(--muted)}
.card.bad .value{color:var(--crit)}.card.good .value{color:var(--ok)}
.verdict{font-size:17px;margin:16px 0 0}
.plotbox{overflow-x:auto;max-width:100%}
img.plot{max-width:none;height:auto;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.name{overflow-wrap:anywhere;max-width:380px}
tr.bad td{background:#fdecea}tr.warn td{background:#fff4e5}
.bar{display:inline-block;height:9px;background:var(--dead);vertical-align:middle;border-radius:2px}
.sugg{border:1px solid var(--line);border-left:6px solid var(--info);border-radius:8px;padding:12px 16px;
margin:12px 0;break-inside:avoid}
.sugg.critical{border-left-color:var(--crit)}.sugg.warning{border-left-color:var(--warn)}
.sev{font-size:12px;font-weight:700;letter-spacing:.05em;margin-right:6px}
.critical .sev{color:var(--crit)}.warning .sev{color:var(--warn)}.info .sev{color:var(--info)}
.sugg h3,.sugg p,.sugg li{overflow-wrap:anywhere}.sugg .finding{font-size:14px}
.sugg p{margin:6px 0}.sugg .sites{color:var(--muted);font-size:13px;overflow-wrap:anywhere}
.evidence{font-size:13px;margin:8px 0}.evidence td:first-child{color:var(--muted);width:34%}
.evidence.matrix td:first-child{width:auto}.evidence.matrix th{font-size:12px}
pre{background:#f1f3f4;border-radius:6px;padding:10px 12px;overflow-x:auto;font-size:13px;line-height:1.4;
white-space:pre}
.tablebox{overflow-x:auto;max-width:100%}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
details.site{border:1px solid var(--line);border-radius:8px;margin:8px 0;padding:0 12px}
details.site>summary{cursor:pointer;padding:8px 0;overflow-wrap:anywhere}
details.site[open]>summary{border-bottom:1px solid var(--line);margin-bottom:8px}
.detail{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start;padding-bottom:10px}
.detail figure{margin:0}.detail figcaption{font-size:12px;color:var(--muted)}
img.map{image-rendering:pixelated;image-rendering:crisp-edges;border:1px solid var(--line)}
svg.hist text{font-size:10px;fill:#5f6368}
.units{font-size:13px;overflow-wrap:anywhere;font-family:ui-monospace,Menlo,Consolas,monospace}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;vertical-align:middle}
table.facts{width:auto;min-width:300px;font-size:13px}table.facts td:first-child{color:var(--muted);
white-space:nowrap}table.facts td{overflow-wrap:anywhere;max-width:360px}
.muted{color:var(--muted)}.meta td:first-child{width:24%;color:var(--muted)}
.meta td{overflow-wrap:anywhere}
ul.warnings li{margin:2px 0;overflow-wrap:anywhere}
footer{margin-top:40px;color:var(--muted);font-size:13px}
@media (max-width:640px){main{padding:14px 10px 40px}.verdictcard .level{font-size:22px}
table.sites thead{display:none}table.sites,table.sites tbody{display:block;width:100%}
table.sites tr{display:flex;flex-wrap:wrap;gap:0 14px;padding:6px 8px;border-bottom:1px solid var(--line)}
table.sites td{display:block;border:0;padding:0;background:none!important;text-align:left}
table.sites tr.bad{background:#fdecea}table.sites tr.warn{background:#fff4e5}table.sites tr.leaky{background:#e8f6f8}
table.sites td.name{flex-basis:100%;max-width:none;font-weight:600;overflow-wrap:anywhere}
table.sites td.minor{display:none}table.sites td[data-label]::before{content:attr(data-label) " ";color:var(--muted);
font-size:12px}table.sites .bar{display:none}.sugg{overflow-x:auto}details.site li{overflow-wrap:anywhere}}
@media print{main{max-width:none;padding:0}img.plot{max-width:100%}details.site{break-inside:avoid}
details::details-content{content-visibility:visible;display:block;height:auto}
a{color:inherit;text-decoration:none}}
"""


__all__ = ["CSS"]
