// Small SVG line charts: no library, no network. lineChart(svg, ts, series, opts)
// ts: timestamps (ns); series: [{values, cls, label}] (null = not reported: the line breaks).
// opts: min, max, floor (y range), emptyText, title (drawn top left). The svg keeps what it drew
// last: data-ts (newest timestamp) and data-last<label> (newest value of each series).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceRange(lo, hi) {
  if (!isFinite(lo) || !isFinite(hi)) return [0, 1];
  if (hi - lo < 1e-9) { const pad = Math.abs(hi) * 0.1 || 1; return [lo - pad, hi + pad]; }
  const pad = (hi - lo) * 0.08;
  return [lo - pad, hi + pad];
}

function fmtNum(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100) return v.toFixed(0);
  return v.toFixed(1);
}

function lineChart(svg, ts, series, opts) {
  opts = opts || {};
  const w = svg.clientWidth || 360, h = svg.clientHeight || 140;
  const m = { l: 44, r: 8, t: 8, b: 18 };
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const title = () => opts.title &&
    svg.appendChild(svgEl("text", { x: w - m.r - 2, y: m.t + 9, class: "title", "text-anchor": "end" }, opts.title));
  const vals = [];
  for (const s of series) for (const v of s.values) if (v !== null && v !== undefined) vals.push(v);
  if (!ts.length || !vals.length) {
    svg.appendChild(svgEl("text", { x: w / 2, y: h / 2, class: "empty", "text-anchor": "middle" },
      opts.emptyText || "no data"));
    delete svg.dataset.ts;
    title();
    return;
  }
  let [lo, hi] = niceRange(Math.min(...vals, opts.min ?? Infinity), Math.max(...vals, opts.max ?? -Infinity));
  if (opts.min !== undefined && Math.min(...vals) >= opts.min) lo = opts.min;
  if (opts.max !== undefined && Math.max(...vals) <= opts.max) hi = opts.max;
  if (opts.floor !== undefined) lo = Math.max(lo, opts.floor);
  const t0 = ts[0], t1 = ts[ts.length - 1];
  const x = t => m.l + (t1 > t0 ? (t - t0) / (t1 - t0) : 1) * (w - m.l - m.r);
  const y = v => h - m.b - (v - lo) / (hi - lo) * (h - m.t - m.b);
  for (let i = 0; i <= 3; i++) {
    const v = lo + (hi - lo) * i / 3, yy = y(v);
    svg.appendChild(svgEl("line", { x1: m.l, x2: w - m.r, y1: yy, y2: yy, class: "grid" }));
    svg.appendChild(svgEl("text", { x: m.l - 4, y: yy + 3, class: "axis", "text-anchor": "end" }, fmtNum(v)));
  }
  const span = (t1 - t0) / 1e9;
  svg.appendChild(svgEl("text", { x: m.l, y: h - 4, class: "axis" }, `-${span.toFixed(0)} s`));
  svg.appendChild(svgEl("text", { x: w - m.r, y: h - 4, class: "axis", "text-anchor": "end" }, "now"));
  for (const s of series) {
    let d = "", pen = false;
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(ts[i]).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    if (d) svg.appendChild(svgEl("path", { d, class: "line " + (s.cls || "") }));
    const last = [...s.values].reverse().find(v => v !== null && v !== undefined);
    if (last !== undefined) svg.dataset["last" + (s.label || "")] = String(last);
  }
  svg.dataset.ts = String(t1);
  title();
}
