// probe's HTML explorer. Every number on the page was computed in Python by probe.analysis; this script only
// formats, sorts and filters rows, draws interval bars and small curves, and opens the drill-down. No statistics.
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const FACETS = [["dataset", "dataset"], ["task", "task"], ["family", "family"], ["config", "configuration"],
                  ["probe", "probe"], ["evaluation", "evaluation"]];
  const filters = {};
  const sortState = {};
  const DASH = "—";
  const PAGE_ROWS = 400;  // rows drawn per table until "show all" (a page with thousands of rows still opens fast)

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of [].concat(children || [])) {
      if (c === null || c === undefined) continue;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  }
  function svgEl(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  // ------------------------------------------------------------------------------------ formatting

  function scaleOf(col, row) { return col.scale_key ? (row[col.scale_key] || 1) : (col.scale || 1); }
  function fmt(value, col, row, signed) {
    if (value === null || value === undefined || Number.isNaN(value)) return DASH;
    const v = value * scaleOf(col, row);
    const text = v.toFixed(col.digits === undefined ? 1 : col.digits);
    return (signed && v > 0 ? "+" : "") + text;
  }
  function sortValue(col, row) {
    const v = row[col.key];
    if (v === null || v === undefined) return null;
    if (col.kind === "config") return v.label;
    if (col.kind === "interval") return v.est;
    if (col.kind === "list") return v.join(",");
    return v;
  }
  function configLink(cell) {
    const info = DATA.configs[cell.id] || {};
    const button = el("button", {type: "button", class: "config-link", "data-config": cell.id,
                                  title: "open " + cell.label});
    button.appendChild(el("span", {class: "marker", style: "color:" + (info.color || "#555"), "aria-hidden": "true",
                                   text: info.marker || "●"}));
    button.appendChild(document.createTextNode(cell.label));
    button.addEventListener("click", () => openDrill(cell.id));
    return button;
  }
  // A small interval bar: [low, high] as a line, the estimate as a dot, 0 as a red tick when in range.
  function intervalBar(iv, range, col, row) {
    const w = 90, h = 14;
    const s = scaleOf(col, row);
    const lo = range[0] * s, hi = range[1] * s;
    const x = (v) => (hi === lo ? w / 2 : 4 + (w - 8) * (v * s - lo) / (hi - lo));
    const svg = svgEl("svg", {width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img",
                              "aria-label": "interval " + fmt(iv.low, col, row, col.signed) + " to " +
                                            fmt(iv.high, col, row, col.signed)});
    if (lo <= 0 && hi >= 0 && col.signed) {
      svg.appendChild(svgEl("line", {x1: x(0), x2: x(0), y1: 1, y2: h - 1, stroke: "#cf222e", "stroke-width": 1}));
    }
    if (iv.low !== null && iv.high !== null) {
      svg.appendChild(svgEl("line", {x1: x(iv.low), x2: x(iv.high), y1: h / 2, y2: h / 2, stroke: "#57606a",
                                     "stroke-width": 2}));
    }
    svg.appendChild(svgEl("circle", {cx: x(iv.est), cy: h / 2, r: 3, fill: "#1b1f24"}));
    return svg;
  }
  function cellFor(col, row, ranges) {
    const v = row[col.key];
    const numeric = ["int", "value", "interval"].includes(col.kind);
    const td = el("td", {class: numeric ? "num" : null, "data-col": col.key});
    if (v === null || v === undefined || v === "") { td.textContent = DASH; return td; }
    if (col.kind === "config") td.appendChild(configLink(v));
    else if (col.kind === "int") td.textContent = String(v);
    else if (col.kind === "value") td.textContent = fmt(v, col, row, col.signed);
    else if (col.kind === "list") td.textContent = v.join(", ");
    else if (col.kind === "interval") {
      const text = fmt(v.est, col, row, col.signed) +
        (v.low !== null && v.high !== null ? " [" + fmt(v.low, col, row, col.signed) + ", " +
                                             fmt(v.high, col, row, col.signed) + "]" : "");
      const wrap = el("span", {class: "ci"}, [el("span", {class: "ci-text", text: text})]);
      if (ranges[col.key]) wrap.appendChild(intervalBar(v, ranges[col.key], col, row));
      td.appendChild(wrap);
    } else td.textContent = String(v);
    return td;
  }

  // ------------------------------------------------------------------------------------ tables

  function visible(row) {
    const f = row._f || {};
    for (const [key, value] of Object.entries(filters)) {
      if (!value) continue;
      if (f[key] && !f[key].includes(value)) return false;
    }
    return true;
  }
  function renderTable(container, id, spec, rows, opts) {
    opts = opts || {};
    const state = sortState[id] || (sortState[id] = {key: spec.sort || null, desc: !!spec.desc});
    const shown = rows.filter((r) => (opts.noFilter ? true : visible(r)));
    if (state.key) {
      const col = spec.columns.find((c) => c.key === state.key);
      if (col) {
        shown.sort((a, b) => {
          const x = sortValue(col, a), y = sortValue(col, b);
          if (x === null && y === null) return 0;
          if (x === null) return 1;  // missing values last in either direction
          if (y === null) return -1;
          const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
          return state.desc ? -c : c;
        });
      }
    }
    const ranges = {};
    for (const col of spec.columns) {
      if (col.kind !== "interval") continue;
      let lo = Infinity, hi = -Infinity;
      for (const r of shown) {
        const v = r[col.key];
        if (!v) continue;
        for (const x of [v.est, v.low, v.high]) if (x !== null) { lo = Math.min(lo, x); hi = Math.max(hi, x); }
      }
      if (col.signed) { lo = Math.min(lo, 0); hi = Math.max(hi, 0); }
      if (lo <= hi) ranges[col.key] = [lo, hi];
    }
    const table = el("table", {class: "data", id: "table-" + id, "data-table-id": id});
    if (spec.caption) table.appendChild(el("caption", {text: spec.caption}));
    const head = el("tr");
    for (const col of spec.columns) {
      const th = el("th", {scope: "col", "data-col": col.key, class: "sortable",
                           "aria-sort": state.key === col.key ? (state.desc ? "descending" : "ascending") : "none"});
      const button = el("button", {type: "button", text: col.label, title: "sort by " + col.label});
      button.addEventListener("click", () => {
        if (state.key === col.key) state.desc = !state.desc;
        else { state.key = col.key; state.desc = ["int", "value", "interval"].includes(col.kind); }
        renderTable(container, id, spec, rows, opts);
      });
      th.appendChild(button);
      head.appendChild(th);
    }
    table.appendChild(el("thead", {}, head));
    const body = el("tbody");
    const limit = state.all ? shown.length : Math.min(shown.length, PAGE_ROWS);
    for (const r of shown.slice(0, limit)) {
      const tr = el("tr");
      for (const col of spec.columns) tr.appendChild(cellFor(col, r, ranges));
      body.appendChild(tr);
    }
    table.appendChild(body);
    const count = el("p", {class: "count", text: limit < shown.length
      ? `${limit} of ${shown.length} matching rows shown (${rows.length} in all) `
      : `${shown.length} of ${rows.length} rows shown`});
    if (limit < shown.length) {
      const more = el("button", {type: "button", class: "show-all", text: "show all"});
      more.addEventListener("click", () => { state.all = true; renderTable(container, id, spec, rows, opts); });
      count.appendChild(more);
    }
    container.replaceChildren(el("div", {class: "table-wrap"}, table), count);
  }
  function renderAll() {
    for (const block of document.querySelectorAll("main .table-block")) {
      const id = block.getAttribute("data-table");
      const spec = id === "protocols" ? DATA.protocols : DATA.tables[id];
      if (!spec) continue;
      const cols = id === "protocols"
        ? [{key: "config", label: "configuration", kind: "config"}, {key: "family", label: "family"}]
            .concat(spec.columns) : spec.columns;
      renderTable(block, id, Object.assign({}, spec, {columns: cols}), spec.rows);
    }
  }
  function buildFilters() {
    const bar = document.getElementById("filters");
    for (const [key, label] of FACETS) {
      const values = (DATA.facets || {})[key] || [];
      if (!values.length) continue;
      const select = el("select", {id: "filter-" + key, "data-facet": key});
      select.appendChild(el("option", {value: "", text: "all"}));
      for (const v of values) {
        select.appendChild(el("option", {value: v, text: key === "config" ? (DATA.facet_labels[v] || v) : v}));
      }
      select.addEventListener("change", () => { filters[key] = select.value; renderAll(); });
      bar.appendChild(el("label", {}, [label, select]));
    }
    const reset = el("button", {type: "button", id: "filter-reset", text: "clear filters"});
    reset.addEventListener("click", () => {
      for (const s of bar.querySelectorAll("select")) s.value = "";
      for (const k of Object.keys(filters)) filters[k] = "";
      renderAll();
    });
    bar.appendChild(reset);
  }

  // ------------------------------------------------------------------------------------ drill-down

  // One curve (layer-wise or few-shot) of one configuration: points with their interval (or ± sd) as whiskers.
  function curveChart(points, info) {
    const w = 300, h = 170, m = {l: 42, r: 10, t: 8, b: 28};
    const s = points[0].scale || 1;
    const ys = [];
    for (const p of points) {
      if (!p.y) continue;
      ys.push(p.y.est);
      if (p.y.low !== null) ys.push(p.y.low, p.y.high);
      if (p.sd !== null) ys.push(p.y.est - p.sd, p.y.est + p.sd);  // the drawn whisker's ends, not a statistic
    }
    const xs = points.map((p) => p.x);
    let y0 = Math.min(...ys) * s, y1 = Math.max(...ys) * s;
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    const x0 = Math.min(...xs), x1 = Math.max(...xs);
    const X = (x) => m.l + (x1 === x0 ? (w - m.l - m.r) / 2 : (w - m.l - m.r) * (x - x0) / (x1 - x0));
    const Y = (y) => h - m.b - (h - m.t - m.b) * (y * s - y0) / (y1 - y0);
    const svg = svgEl("svg", {width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img"});
    const title = svgEl("title", {});
    title.textContent = points[0].kind + " curve of " + info.label;
    svg.appendChild(title);
    svg.appendChild(svgEl("line", {x1: m.l, x2: w - m.r, y1: h - m.b, y2: h - m.b, stroke: "#888"}));
    svg.appendChild(svgEl("line", {x1: m.l, x2: m.l, y1: m.t, y2: h - m.b, stroke: "#888"}));
    for (const v of [y0, y1]) {
      const t = svgEl("text", {x: m.l - 4, y: (v === y0 ? h - m.b : m.t + 8), "text-anchor": "end",
                               "font-size": 10});
      t.textContent = v.toFixed(1);
      svg.appendChild(t);
    }
    for (const x of [...new Set(xs)]) {
      const t = svgEl("text", {x: X(x), y: h - m.b + 12, "text-anchor": "middle", "font-size": 10});
      t.textContent = String(x);
      svg.appendChild(t);
    }
    const xl = svgEl("text", {x: (w + m.l) / 2, y: h - 2, "text-anchor": "middle", "font-size": 10});
    xl.textContent = points[0].kind === "few-shot" ? "shots per class" : "block";
    svg.appendChild(xl);
    const sorted = points.filter((p) => p.y).sort((a, b) => a.x - b.x);
    const path = sorted.map((p, i) => (i ? "L" : "M") + X(p.x) + " " + Y(p.y.est)).join(" ");
    svg.appendChild(svgEl("path", {d: path, fill: "none", stroke: info.color, "stroke-width": 1.5,
                                   "stroke-dasharray": info.linestyle === "--" ? "5 3" :
                                     info.linestyle === ":" ? "1 3" : info.linestyle === "-." ? "6 3 1 3" : "none"}));
    for (const p of sorted) {
      const lo = p.y.low !== null ? p.y.low : (p.sd !== null ? p.y.est - p.sd : null);
      const hi = p.y.high !== null ? p.y.high : (p.sd !== null ? p.y.est + p.sd : null);
      if (lo !== null) {
        svg.appendChild(svgEl("line", {x1: X(p.x), x2: X(p.x), y1: Y(lo), y2: Y(hi), stroke: info.color}));
      }
      const t = svgEl("text", {x: X(p.x), y: Y(p.y.est) + 4, "text-anchor": "middle", "font-size": 12,
                               fill: info.color});
      t.textContent = info.marker || "●";
      svg.appendChild(t);
    }
    return svg;
  }
  function identityList(info) {
    const dl = el("dl", {class: "identity"});
    const items = [["backbone", info.backbone], ["weights", info.weights], ["input size (px)", info.img_size],
                   ["precision", info.precision], ["family", info.family + " (" + (info.family_source || DASH) + ")"],
                   ["feature cache keys", (info.cache_keys || []).join(", ") || DASH],
                   ["probe versions of its rows", (info.probe_versions || []).join(", ") || DASH]];
    for (const [k, v] of items) {
      dl.appendChild(el("dt", {text: k}));
      dl.appendChild(el("dd", {text: v === null || v === undefined ? DASH : String(v)}));
    }
    return dl;
  }
  function openDrill(id) {
    const info = DATA.configs[id] || {label: id};
    const dialog = document.getElementById("drill");
    document.getElementById("drill-title").textContent = info.label;
    const body = document.getElementById("drill-body");
    body.replaceChildren();
    body.setAttribute("data-config", id);
    body.appendChild(identityList(info));
    // protocols
    body.appendChild(el("h3", {text: "Protocols (all probes and taps; val and test scores, seeds)"}));
    const prot = el("div", {class: "table-block", id: "drill-protocols"});
    body.appendChild(prot);
    const rows = DATA.protocols.rows.filter((r) => r.config.id === id);
    renderTable(prot, "drill-protocols", Object.assign({}, DATA.protocols, {sort: "dataset", desc: false}), rows,
                {noFilter: true});
    // curves
    const curves = DATA.curves.filter((c) => c.config === id);
    if (curves.length) {
      body.appendChild(el("h3", {text: "Layer-wise and few-shot curves"}));
      const box = el("div", {class: "curves", id: "drill-curves"});
      const groups = {};
      for (const c of curves) {
        const k = [c.kind, c.dataset, c.task, c.evaluation, c.method].join(" · ");
        (groups[k] = groups[k] || []).push(c);
      }
      for (const [k, pts] of Object.entries(groups)) {
        const unit = pts[0].scale === 100 ? " (%)" : "";
        const whisker = pts[0].kind === "few-shot" ? "± sd over seeds" : DATA.summary.ci + " bootstrap CI";
        box.appendChild(el("figure", {class: "curve"}, [curveChart(pts, info),
          el("figcaption", {text: k + ": test " + pts[0].metric + unit + ", bars " + whisker})]));
      }
      body.appendChild(box);
    }
    // paired comparisons
    const pairs = DATA.pairs.filter((p) => p.a === id);
    body.appendChild(el("h3", {text: "Paired comparisons with another configuration (this − other, same test " +
                                     "items, computed in advance)"}));
    if (!pairs.length) {
      body.appendChild(el("p", {text: "No other configuration shares a dataset and selection metric with it."}));
    } else {
      const others = [...new Set(pairs.map((p) => p.b))];
      const select = el("select", {id: "drill-other"});
      for (const o of others) select.appendChild(el("option", {value: o, text: (DATA.configs[o] || {}).label || o}));
      body.appendChild(el("label", {}, ["compare with ", select]));
      const box = el("div", {class: "table-block", id: "drill-pairs"});
      body.appendChild(box);
      const cols = [{key: "dataset", label: "dataset"}, {key: "task", label: "task"},
                    {key: "evaluation", label: "evaluation"}, {key: "side", label: "side"},
                    {key: "metric", label: "metric"}, {key: "method_a", label: "this: method"},
                    {key: "value_a", label: "this", kind: "value", scale_key: "scale", digits: 1},
                    {key: "method_b", label: "other: method"},
                    {key: "value_b", label: "other", kind: "value", scale_key: "scale", digits: 1},
                    {key: "diff", label: "this − other [CI]", kind: "interval", scale_key: "scale", digits: 1,
                     signed: true},
                    {key: "n", label: "paired items", kind: "int"}, {key: "note", label: "note"}];
      const show = () => renderTable(box, "drill-pairs", {columns: cols, sort: "dataset"},
                                     pairs.filter((p) => p.b === select.value), {noFilter: true});
      select.addEventListener("change", show);
      show();
    }
    if (typeof dialog.showModal === "function") dialog.showModal(); else dialog.setAttribute("open", "");
  }

  // ------------------------------------------------------------------------------------ provenance, notes

  function renderProvenance() {
    const p = DATA.provenance;
    const box = document.getElementById("provenance-body");
    const dl = el("dl", {class: "identity"});
    const items = [["probe version", p.probe + " (results written by " + (p.results_probe_versions.join(", ") || DASH)
                    + ")"], ["results", p.results_dir],
                   ["bootstrap", `${p.n_boot} resamples, seed ${p.seed}, ${Math.round(p.ci * 100)}% intervals`]];
    for (const [k, v] of items) { dl.appendChild(el("dt", {text: k})); dl.appendChild(el("dd", {text: v})); }
    box.appendChild(dl);
    box.appendChild(el("h3", {text: "Command"}));
    box.appendChild(el("pre", {id: "provenance-command"}, el("code", {text: p.command})));
    box.appendChild(el("h3", {text: "Packages"}));
    const pk = el("table", {class: "data"});
    pk.appendChild(el("thead", {}, el("tr", {}, [el("th", {scope: "col", text: "package"}),
                                                 el("th", {scope: "col", text: "version"})])));
    const tb = el("tbody");
    for (const [k, v] of Object.entries(p.packages)) tb.appendChild(el("tr", {}, [el("td", {text: k}),
                                                                                 el("td", {text: v})]));
    pk.appendChild(tb);
    box.appendChild(el("div", {class: "table-wrap"}, pk));
    box.appendChild(el("h3", {text: "Configurations: weights identity and preprocessing"}));
    const cfg = el("table", {class: "data", id: "provenance-configs"});
    const heads = ["configuration", "backbone_config", "backbone", "weights", "img_size", "precision", "family",
                   "feature cache keys"];
    cfg.appendChild(el("thead", {}, el("tr", {}, heads.map((h) => el("th", {scope: "col", text: h})))));
    const cb = el("tbody");
    const ids = Object.keys(DATA.configs).sort((a, b) => DATA.configs[a].order - DATA.configs[b].order);
    for (const id of ids) {
      const c = DATA.configs[id];
      const first = el("td", {}, configLink({id: id, label: c.label}));
      cb.appendChild(el("tr", {}, [first].concat([id, c.backbone, c.weights, c.img_size, c.precision, c.family,
                                                  (c.cache_keys || []).join(", ")]
        .map((v) => el("td", {text: v === null || v === undefined ? DASH : String(v)})))));
    }
    cfg.appendChild(cb);
    box.appendChild(el("div", {class: "table-wrap"}, cfg));
    box.appendChild(el("h3", {text: "Study file"}));
    if (p.study) {
      box.appendChild(el("p", {}, el("code", {text: p.study.path})));
      box.appendChild(el("pre", {id: "provenance-study"}, el("code", {text: p.study.text})));
    } else box.appendChild(el("p", {text: "No study file beside the results folder."}));
  }
  function renderNotes() {
    const ul = document.getElementById("notes-body");
    if (!DATA.notes.length) ul.appendChild(el("li", {text: "None."}));
    for (const n of DATA.notes) ul.appendChild(el("li", {text: n}));
  }

  const s = DATA.summary;
  document.getElementById("summary").textContent =
    `Results: ${s.results_dir} (${s.jobs} jobs; ${s.datasets.length} dataset(s): ${s.datasets.join(", ")}; ` +
    `${s.configs} backbone configuration(s); families: ${s.families.join(", ")}). Test scores; selection on val ` +
    `only; intervals are ${s.ci} bootstrap intervals. Sort by clicking a column header; filter with the bar below; ` +
    "click a configuration for its drill-down.";
  document.getElementById("drill-close").addEventListener("click", () => document.getElementById("drill").close());
  buildFilters();
  renderAll();
  renderProvenance();
  renderNotes();
  document.body.setAttribute("data-ready", "1");
})();
