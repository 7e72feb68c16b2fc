/* privmob offline report: draws the embedded release as SVG hexagons. No libraries, no network.
 * Written for browsers from ~2019 on (no optional chaining), as offices do not always update. */
(function () {
  "use strict";

  var D = JSON.parse(document.getElementById("privmob-data").textContent);
  var svg = document.getElementById("map");
  var NS = svg.namespaceURI;
  var $ = function (id) { return document.getElementById(id); };
  var layers = {
    released: $("layer-released"), boundary: $("layer-boundary"),
    flows: $("layer-flows"), focus: $("layer-focus")
  };
  var tooltip = $("tooltip");
  var hoverInfo = $("hover-info");
  var slider = $("window");
  var nf = new Intl.NumberFormat("en-US");

  // ── colour scale: viridis, 16 stops, linear in the count ─────────────────────────────
  var VIRIDIS = ["#440154", "#481a6c", "#472f7d", "#414487", "#39568c", "#31688e", "#2a788e", "#23888e",
    "#1f988b", "#22a884", "#35b779", "#54c568", "#7ad151", "#a5db36", "#d2e21b", "#fde725"];
  var RGB = VIRIDIS.map(function (h) {
    return [parseInt(h.substr(1, 2), 16), parseInt(h.substr(3, 2), 16), parseInt(h.substr(5, 2), 16)];
  });
  function colour(v) {
    return colourAt((v - D.vmin) / Math.max(D.vmax - D.vmin, 1));
  }
  // An adaptive release mixes cell sizes: a big cell holds more persons merely for being big, so
  // its cells are coloured by persons per km² on a log scale (D.colourBy === "density").
  var DENSITY = D.colourBy === "density";
  function densityT(d) {
    var lo = Math.log(D.dmin), hi = Math.log(D.dmax);
    return (Math.log(Math.max(d, 1e-12)) - lo) / Math.max(hi - lo, 1e-12);
  }
  function shade(idx, count) {
    return DENSITY ? colourAt(densityT(Math.max(count, 1) / D.cellKm2[idx])) : colour(count);
  }
  function cellFacts(idx, count) {
    // resolution and area of a cell of an adaptive release (and its density, for a count)
    if (!D.cellRes) { return null; }
    var a = D.cellKm2[idx];
    return "H3 resolution " + D.cellRes[idx] + " · area ≈ " + nf.format(a) + " km²" +
      (count === null ? "" : " · " + nf.format(+(count / a).toPrecision(3)) + " persons per km²");
  }
  function colourAt(t) {
    t = Math.min(1, Math.max(0, t)) * (RGB.length - 1);
    var i = Math.min(Math.floor(t), RGB.length - 2), f = t - i, a = RGB[i], b = RGB[i + 1];
    return "rgb(" + [0, 1, 2].map(function (k) { return Math.round(a[k] + (b[k] - a[k]) * f); }).join(",") + ")";
  }

  // ── projection: equirectangular, x scaled by cos(mid latitude) ────────────────────────
  var bb = D.bbox || [0, 0, 1, 1];
  var kx = Math.cos(((bb[1] + bb[3]) / 2) * Math.PI / 180);
  var W = 1000;
  var S = W / Math.max((bb[2] - bb[0]) * kx, 1e-9);
  var H = Math.max((bb[3] - bb[1]) * S, 1);
  if (H > 4 * W) { S = 4 * W / Math.max(bb[3] - bb[1], 1e-9); H = 4 * W; W = (bb[2] - bb[0]) * kx * S; }
  var PAD = 0.03 * Math.max(W, H);
  function X(lng) { return (lng - bb[0]) * kx * S + PAD; }
  function Y(lat) { return (bb[3] - lat) * S + PAD; }
  var FULL = { x: 0, y: 0, w: W + 2 * PAD, h: H + 2 * PAD };
  var KM_PER_UNIT = 111.2 / S;

  function ringPath(flat, close) {
    var d = "";
    for (var i = 0; i < flat.length; i += 2) {
      d += (i ? "L" : "M") + X(flat[i]).toFixed(1) + " " + Y(flat[i + 1]).toFixed(1);
    }
    return close ? d + "Z" : d;
  }
  // Cell outlines arrive as [lng0, lat0, dlng1, dlat1, ...] in 1e-5 degrees; decode once.
  function decode(p) {
    var out = new Array(p.length), x = 0, y = 0;
    for (var i = 0; i < p.length; i += 2) { x += p[i]; y += p[i + 1]; out[i] = x / 1e5; out[i + 1] = y / 1e5; }
    return out;
  }
  D.poly = D.poly.map(decode);
  if (D.roots) { D.roots = D.roots.map(decode); }
  // Window values arrive as a count (interval = count ± half-width, clipped at 0), [count, lo, hi],
  // or [count, lo, hi, 1] near the threshold (selection-aware interval); all become [count, lo, hi, near].
  D.windows.forEach(function (w) {
    for (var k in w.values) {
      var v = w.values[k];
      if (typeof v === "number") { w.values[k] = [v, Math.max(v - D.halfwidth, 0), v + D.halfwidth, 0]; }
      else if (v.length < 4) { v.push(0); }
    }
  });
  var pathCache = {};
  function cellPath(idx) {
    var d = pathCache[idx];
    if (d === undefined) { d = pathCache[idx] = ringPath(D.poly[idx], true); }
    return d;
  }
  function centre(idx) {
    var p = D.poly[idx], x = 0, y = 0, n = p.length / 2;
    for (var i = 0; i < p.length; i += 2) { x += p[i]; y += p[i + 1]; }
    return [x / n, y / n];
  }
  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) { e.setAttribute(k, attrs[k]); } }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function html(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = text; }
    if (cls) { e.className = cls; }
    return e;
  }
  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } }

  // ── static layers: withheld key cells, boundary, watermark ────────────────────────────
  var releasedAnywhere = {};
  D.windows.forEach(function (w) { for (var k in w.values) { releasedAnywhere[k] = true; } });
  // Withheld key cells are painted on a canvas under the SVG: tens of thousands of SVG
  // elements (or one giant path) make every redraw slow on an office PC, while the canvas is
  // repainted only when the view moves. Which cell the pointer is over comes from a grid of
  // cell centres.
  var keyIndex = null, keyList = [];
  var canvas = $("withheld-canvas"), ctx = canvas.getContext("2d"), showWithheld = !!D.isKey;
  if (D.isKey) {
    var grid = {}, size = 0;
    D.isKey.forEach(function (isKey, idx) {
      if (!isKey) { return; }
      keyList.push(idx);
      if (!size) {
        var p0 = D.poly[idx];
        size = Math.max(Math.abs(X(p0[0]) - X(p0[6])), Math.abs(Y(p0[1]) - Y(p0[7])), 1e-6) * 1.2;
      }
      if (D.cellRes) {  // cells of several sizes: the grid is as coarse as the largest
        var pk = D.poly[idx];
        size = Math.max(size, Math.abs(X(pk[0]) - X(pk[6])) * 1.2, Math.abs(Y(pk[1]) - Y(pk[7])) * 1.2);
      }
      var c = centre(idx), key = Math.floor(X(c[0]) / size) + ":" + Math.floor(Y(c[1]) / size);
      (grid[key] = grid[key] || []).push(idx);
    });
    keyIndex = { grid: grid, size: size };
    canvas.setAttribute("data-cells", String(keyList.length));
  } else {
    canvas.style.display = "none";
  }
  var projected = {};
  function proj(idx) {
    var q = projected[idx];
    if (!q) {
      var p = D.poly[idx];
      q = projected[idx] = new Float64Array(p.length);
      for (var i = 0; i < p.length; i += 2) { q[i] = X(p[i]); q[i + 1] = Y(p[i + 1]); }
    }
    return q;
  }
  var paintQueued = false;
  function paintWithheld() {
    if (paintQueued) { return; }
    paintQueued = true;
    window.requestAnimationFrame(function () { paintQueued = false; paintNow(); });
  }
  function paintNow() {
    if (!keyList.length) { return; }
    var dpr = window.devicePixelRatio || 1, w = svg.clientWidth, h = svg.clientHeight;
    var cw = Math.max(1, Math.round(w * dpr)), ch = Math.max(1, Math.round(h * dpr));
    if (canvas.width !== cw || canvas.height !== ch) { canvas.width = cw; canvas.height = ch; }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, cw, ch);
    if (!showWithheld) { return; }
    var vh = view.w * aspect(), vx = view.cx - view.w / 2, vy = view.cy - vh / 2, k = dpr * w / view.w;
    var m = keyIndex.size;
    ctx.setTransform(k, 0, 0, k, -vx * k, -vy * k);
    // One small path per cell: a single path of every cell is far slower to fill in software.
    ctx.fillStyle = hatchPattern(dpr / k);
    (D.roots || []).forEach(function (ring) {
      // an adaptive partition's roots, under its cells: H3 children do not tile their parent
      // exactly, and the slivers between cells of different sizes are withheld area too
      ctx.beginPath();
      for (var r = 0; r < ring.length; r += 2) { ctx[r ? "lineTo" : "moveTo"](X(ring[r]), Y(ring[r + 1])); }
      ctx.closePath();
      ctx.fill();
    });
    ctx.strokeStyle = "#ffffff";
    ctx.lineWidth = 0.7 * dpr / k;
    for (var n = 0; n < keyList.length; n++) {
      var q = proj(keyList[n]);
      if (q[0] < vx - m || q[0] > vx + view.w + m || q[1] < vy - m || q[1] > vy + vh + m) { continue; }
      ctx.beginPath();
      ctx.moveTo(q[0], q[1]);
      for (var i = 2; i < q.length; i += 2) { ctx.lineTo(q[i], q[i + 1]); }
      ctx.closePath();
      ctx.fill();
      ctx.stroke();
    }
  }
  var hatchTile = null;
  function hatchPattern(scale) {
    // Light grey with diagonal hatching, about 7 CSS pixels apart at any zoom: "no number here".
    if (!hatchTile) {
      hatchTile = document.createElement("canvas");
      hatchTile.width = hatchTile.height = 7;
      var t = hatchTile.getContext("2d");
      t.fillStyle = "#ececec";
      t.fillRect(0, 0, 7, 7);
      t.strokeStyle = "#c9c9c9";
      t.lineWidth = 1.5;
      t.beginPath();
      t.moveTo(-1, 8); t.lineTo(8, -1); t.moveTo(-1, 1); t.lineTo(1, -1); t.moveTo(6, 8); t.lineTo(8, 6);
      t.stroke();
    }
    var pattern = ctx.createPattern(hatchTile, "repeat");
    if (pattern && pattern.setTransform && window.DOMMatrix) {
      pattern.setTransform(new DOMMatrix([scale, 0, 0, scale, 0, 0]));
      return pattern;
    }
    return "#e6e6e6";  // browsers that cannot scale a pattern: plain light grey
  }
  function inside(idx, x, y) {
    var p = D.poly[idx], hit = false;
    for (var i = 0, j = p.length - 2; i < p.length; j = i, i += 2) {
      var xi = X(p[i]), yi = Y(p[i + 1]), xj = X(p[j]), yj = Y(p[j + 1]);
      if ((yi > y) !== (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) { hit = !hit; }
    }
    return hit;
  }
  function keyCellAt(clientX, clientY) {
    if (!keyIndex) { return null; }
    var pt = svg.createSVGPoint();
    pt.x = clientX; pt.y = clientY;
    pt = pt.matrixTransform(svg.getScreenCTM().inverse());
    var gx = Math.floor(pt.x / keyIndex.size), gy = Math.floor(pt.y / keyIndex.size);
    for (var dx = -1; dx <= 1; dx++) {
      for (var dy = -1; dy <= 1; dy++) {
        var list = keyIndex.grid[(gx + dx) + ":" + (gy + dy)] || [];
        for (var i = 0; i < list.length; i++) { if (inside(list[i], pt.x, pt.y)) { return list[i]; } }
      }
    }
    return null;
  }
  D.boundary.forEach(function (ring) { el("path", { d: ringPath(ring, true) }, layers.boundary); });

  // ── view: zoom and pan by changing the viewBox ────────────────────────────────────────
  var view = { cx: FULL.w / 2, cy: FULL.h / 2, w: FULL.w };
  function aspect() { return Math.max(svg.clientHeight, 1) / Math.max(svg.clientWidth, 1); }
  function fit(box) {
    var a = aspect();
    view.w = Math.max(box.w, box.h / a) * 1.04;
    view.cx = box.x + box.w / 2;
    view.cy = box.y + box.h / 2;
    applyView();
  }
  function applyView() {
    view.w = Math.min(Math.max(view.w, FULL.w / 200), FULL.w * 4);
    var h = view.w * aspect();
    svg.setAttribute("viewBox", [view.cx - view.w / 2, view.cy - h / 2, view.w, h].map(function (v) {
      return v.toFixed(2);
    }).join(" "));
    scaleBar();
    locate(h);
    paintWithheld();
  }
  function zoomAt(factor, px, py) {
    var r = svg.getBoundingClientRect();
    var ux = view.cx + (px - r.width / 2) * view.w / r.width;
    var uy = view.cy + (py - r.height / 2) * view.w / r.width;
    var w2 = Math.min(Math.max(view.w / factor, FULL.w / 200), FULL.w * 4);
    var f = view.w / w2;
    view.cx = ux - (ux - view.cx) / f;
    view.cy = uy - (uy - view.cy) / f;
    view.w = w2;
    applyView();
  }
  function releasedBox(cells) {
    var x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    Object.keys(cells).forEach(function (k) {
      var p = D.poly[+k];
      for (var i = 0; i < p.length; i += 2) {
        var x = X(p[i]), y = Y(p[i + 1]);
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    });
    if (!isFinite(x0)) { return FULL; }
    var m = Math.max(x1 - x0, y1 - y0) * 0.06 + FULL.w / 50;
    var box = { x: x0 - m, y: y0 - m, w: x1 - x0 + 2 * m, h: y1 - y0 + 2 * m };
    var minW = FULL.w * 0.3;  // keep some surroundings in view, whatever the spread
    if (box.w < minW) { box.x -= (minW - box.w) / 2; box.w = minW; }
    if (box.h < minW * 0.6) { box.y -= (minW * 0.6 - box.h) / 2; box.h = minW * 0.6; }
    return box;
  }
  // The locator: the whole area in a corner, with the part on screen outlined (hidden at full view).
  var locator = $("locator"), locRect = null;
  (function () {
    locator.setAttribute("viewBox", "0 0 " + FULL.w.toFixed(0) + " " + FULL.h.toFixed(0));
    locator.style.height = Math.min(150, 150 * FULL.h / FULL.w).toFixed(0) + "px";
    if (D.boundary.length) {
      D.boundary.forEach(function (ring) { el("path", { d: ringPath(ring, true) }, locator); });
    } else if (D.isKey) {
      el("path", { d: keyList.map(cellPath).join("") }, locator);
    }
    Object.keys(releasedAnywhere).forEach(function (k) { el("path", { d: cellPath(+k), "class": "hot" }, locator); });
    locRect = el("rect", {}, locator);
    locator.addEventListener("click", function (ev) {
      var r = locator.getBoundingClientRect();
      var k = Math.max(FULL.w / r.width, FULL.h / r.height);
      view.cx = (ev.clientX - r.left - (r.width - FULL.w / k) / 2) * k;
      view.cy = (ev.clientY - r.top - (r.height - FULL.h / k) / 2) * k;
      applyView();
    });
  })();
  function locate(h) {
    var x = view.cx - view.w / 2, y = view.cy - h / 2;
    var whole = x <= FULL.x + 1 && y <= FULL.y + 1 && x + view.w >= FULL.w - 1 && y + h >= FULL.h - 1;
    locator.style.display = whole || !D.bbox ? "none" : "";
    locRect.setAttribute("x", x.toFixed(1));
    locRect.setAttribute("y", y.toFixed(1));
    locRect.setAttribute("width", view.w.toFixed(1));
    locRect.setAttribute("height", h.toFixed(1));
  }
  function scaleBar() {
    var box = $("scalebar");
    var kmPerPx = view.w / Math.max(svg.clientWidth, 1) * KM_PER_UNIT;
    var target = kmPerPx * 110, p = Math.pow(10, Math.floor(Math.log(target) / Math.LN10)), nice = p;
    [1, 2, 5, 10].forEach(function (m) { if (m * p <= target) { nice = m * p; } });
    box.firstChild.style.width = (nice / kmPerPx).toFixed(0) + "px";
    box.lastChild.textContent = (nice >= 1 ? nf.format(nice) + " km" : nf.format(nice * 1000) + " m");
  }
  $("zoom-in").addEventListener("click", function () { zoomAt(1.6, svg.clientWidth / 2, svg.clientHeight / 2); });
  $("zoom-out").addEventListener("click", function () { zoomAt(1 / 1.6, svg.clientWidth / 2, svg.clientHeight / 2); });
  $("zoom-all").addEventListener("click", function () { fit(FULL); });
  $("zoom-released").addEventListener("click", function () {
    var values = D.windows[current].values;
    fit(releasedBox(Object.keys(values).length ? values : releasedAnywhere));
  });
  svg.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    var r = svg.getBoundingClientRect();
    zoomAt(Math.pow(1.0015, -ev.deltaY), ev.clientX - r.left, ev.clientY - r.top);
  }, { passive: false });
  var drag = null;
  svg.addEventListener("pointerdown", function (ev) {
    if (ev.button !== 0) { return; }
    drag = { x: ev.clientX, y: ev.clientY, cx: view.cx, cy: view.cy, moved: false };
  });
  svg.addEventListener("pointermove", function (ev) {
    if (!drag) { return; }
    var dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) { return; }
    if (!drag.moved) { drag.moved = true; svg.classList.add("dragging"); svg.setPointerCapture(ev.pointerId); }
    var k = view.w / svg.getBoundingClientRect().width;
    view.cx = drag.cx - dx * k;
    view.cy = drag.cy - dy * k;
    applyView();
    hideTip();
  });
  function endDrag() { drag = null; svg.classList.remove("dragging"); }
  svg.addEventListener("pointerup", endDrag);
  svg.addEventListener("pointercancel", endDrag);
  if (window.ResizeObserver) { new ResizeObserver(function () { applyView(); }).observe(svg); }
  else { window.addEventListener("resize", applyView); }

  // ── hover: released cells, withheld cells, flows ─────────────────────────────────────
  var current = 0;
  function describe(target, ev) {
    var w = D.windows[current];
    if (target.hasAttribute("data-count")) {
      var c = +target.getAttribute("data-count"), lo = target.getAttribute("data-lo");
      var hi = target.getAttribute("data-hi"), near = target.getAttribute("data-near") === "1";
      var cellLines = ["95% interval " + nf.format(+lo) + " – " + nf.format(+hi) +
          (near ? " (selection-aware)" : (D.halfwidth !== null ? " (± " + D.halfwidth + ")" : "")),
          "cell " + target.getAttribute("data-cell"), w.label];
      var facts = cellFacts(+target.getAttribute("data-idx"), c);
      if (facts) { cellLines.splice(1, 0, facts); }
      if (near) {
        cellLines.unshift("near threshold: biased upward (published because its noise lifted it over " +
          (D.threshold !== null ? D.threshold : "the threshold") + ")");
      }
      return { big: nf.format(c) + " persons" + (near ? " · near threshold" : ""), lines: cellLines,
        idx: +target.getAttribute("data-idx") };
    }
    if (target.hasAttribute("data-flow")) {
      var f = D.flows.windows[current][+target.getAttribute("data-flow")];
      var lines = ["from " + D.flows.nodes[f[0]], "to " + D.flows.nodes[f[1]]];
      if (f[3] !== null && f[4] !== null) { lines.unshift("95% interval " + nf.format(f[3]) + " – " + nf.format(f[4])); }
      lines.push("trips departing " + D.flows.labels[f[5]]);
      return { big: "flow: " + nf.format(f[2]) + " persons", lines: lines, idx: null };
    }
    if (target === svg && showWithheld) {
      var idx = keyCellAt(ev.clientX, ev.clientY);
      if (idx === null) { return null; }
      return {
        big: "withheld",
        lines: ["noisy count below the release threshold " + (D.threshold !== null ? D.threshold : "") +
          ": fewer than about " + (D.threshold !== null ? D.threshold : "that many") +
          " persons, possibly none — not zero", "cell " + D.cells[idx]].concat(
          D.cellRes ? [cellFacts(idx, null)] : [], [w.label]),
        idx: idx
      };
    }
    return null;
  }
  function fill(box, info, smallCls) {
    clear(box);
    box.appendChild(html("div", info.big, "big"));
    info.lines.forEach(function (t) { box.appendChild(html("div", t, smallCls)); });
  }
  function showTip(ev, info) {
    fill(tooltip, info, "small");
    tooltip.hidden = false;
    var wrap = $("mapwrap").getBoundingClientRect();
    var x = ev.clientX - wrap.left + 14, y = ev.clientY - wrap.top + 14;
    if (x + tooltip.offsetWidth > wrap.width - 8) { x = ev.clientX - wrap.left - tooltip.offsetWidth - 14; }
    if (y + tooltip.offsetHeight > wrap.height - 8) { y = ev.clientY - wrap.top - tooltip.offsetHeight - 14; }
    tooltip.style.left = Math.max(4, x) + "px";
    tooltip.style.top = Math.max(4, y) + "px";
    fill(hoverInfo, info, "small");
    clear(layers.focus);
    if (info.idx !== null) { el("path", { d: cellPath(info.idx) }, layers.focus); }
  }
  function hideTip() { tooltip.hidden = true; clear(layers.focus); }
  function onPointer(ev) {
    if (drag && drag.moved) { return; }
    var info = describe(ev.target, ev);
    if (info) { showTip(ev, info); } else { hideTip(); }
  }
  svg.addEventListener("mouseover", onPointer);
  svg.addEventListener("mousemove", onPointer);
  svg.addEventListener("mouseleave", hideTip);
  svg.addEventListener("focusin", function (ev) {
    var r = ev.target.getBoundingClientRect();
    var info = describe(ev.target, { clientX: r.left + r.width / 2, clientY: r.top + r.height / 2 });
    if (!info) { return; }
    showTip({ clientX: r.left + r.width / 2, clientY: r.top + r.height / 2 }, info);
  });

  // ── per-window drawing ───────────────────────────────────────────────────────────────
  var nWindows = D.windows.length;
  var releasedPerWindow = D.windows.map(function (w) { return Object.keys(w.values).length; });

  function drawBars() {
    var bars = $("bars"), n = nWindows, bw = 10, top = Math.max.apply(null, releasedPerWindow.concat([1]));
    clear(bars);
    bars.setAttribute("viewBox", "0 0 " + n * bw + " 62");
    bars.setAttribute("preserveAspectRatio", "none");
    var step = Math.ceil(n / 8);
    releasedPerWindow.forEach(function (v, i) {
      var h = v ? Math.max(2, 38 * v / top) : 0.8;
      var r = el("rect", { x: i * bw + 1, y: 44 - h, width: bw - 2, height: h, "data-w": i }, bars);
      var t = el("title", {}, r);
      t.textContent = D.windows[i].label + ": " + v + " cell(s) released";
      r.addEventListener("click", function () { setWindow(i); });
    });
    // Tick labels live in a separate, non-stretched overlay so the text is not distorted.
    var labels = $("bar-labels");
    if (!labels) {
      labels = html("div", null, "bar-labels");
      labels.id = "bar-labels";
      labels.style.cssText = "position:relative;height:14px;margin-top:-16px;font-size:10px;color:#5b6270";
      bars.parentNode.insertBefore(labels, bars.nextSibling);
    }
    clear(labels);
    for (var i = 0; i < n; i += step) {
      var s = html("span", D.windows[i].tick);
      s.style.cssText = "position:absolute;transform:translateX(-50%);left:" + ((i + 0.5) / n * 100) + "%";
      labels.appendChild(s);
    }
  }

  function drawColourBar() {
    var bar = $("colour-bar"), w = 300, x0 = 8, x1 = 292;
    clear(bar);
    bar.setAttribute("viewBox", "0 0 " + w + " 46");
    var n = 48;
    for (var i = 0; i < n; i++) {
      var v = D.vmin + (D.vmax - D.vmin) * (i + 0.5) / n;
      el("rect", { x: x0 + (x1 - x0) * i / n, y: 4, width: (x1 - x0) / n + 0.6, height: 14,
        fill: DENSITY ? colourAt((i + 0.5) / n) : colour(v) }, bar);
    }
    if (DENSITY) { densityTicks(bar, x0, x1); return; }
    var span = D.vmax - D.vmin, p = Math.pow(10, Math.floor(Math.log(Math.max(span, 1) / 4) / Math.LN10));
    var step = p;
    [1, 2, 5, 10].forEach(function (m) { if (span / (m * p) >= 3) { step = m * p; } });
    var ticks = [D.vmin];
    for (var t = Math.ceil(D.vmin / step) * step; t < D.vmax; t += step) {
      if (t - D.vmin > step * 0.6 && D.vmax - t > step * 0.6) { ticks.push(t); }
    }
    ticks.push(D.vmax);
    ticks.forEach(function (t, j) {
      var x = x0 + (x1 - x0) * (t - D.vmin) / Math.max(D.vmax - D.vmin, 1);
      el("line", { x1: x, x2: x, y1: 18, y2: 22, stroke: "#333", "stroke-width": 1 }, bar);
      var label = el("text", { x: x, y: 33, "text-anchor": j === 0 ? "start" : (j === ticks.length - 1 ? "end" : "middle") }, bar);
      label.textContent = nf.format(t);
    });
    var cap = el("text", { x: x0, y: 44 }, bar);
    cap.textContent = (D.threshold !== null ? "release threshold " + D.threshold + " · " : "") +
      (D.halfwidth !== null ? "each count ± " + D.halfwidth + " (95%)" : "");
  }

  function densityTicks(bar, x0, x1) {
    // powers of ten between the lowest and highest density (log scale), and the ends
    var ticks = [D.dmin];
    for (var e = Math.ceil(Math.log(D.dmin) / Math.LN10); Math.pow(10, e) < D.dmax; e++) {
      var t = Math.pow(10, e), f = densityT(t);
      if (f > 0.12 && f < 0.88) { ticks.push(t); }
    }
    ticks.push(D.dmax);
    ticks.forEach(function (t, j) {
      var x = x0 + (x1 - x0) * densityT(t);
      el("line", { x1: x, x2: x, y1: 18, y2: 22, stroke: "#333", "stroke-width": 1 }, bar);
      var label = el("text", { x: x, y: 33, "text-anchor": j === 0 ? "start" : (j === ticks.length - 1 ? "end" : "middle") }, bar);
      label.textContent = nf.format(+t.toPrecision(2));
    });
    var cap = el("text", { x: x0, y: 44 }, bar);
    cap.textContent = "persons per km², log scale" + (D.threshold !== null ? " · release threshold " + D.threshold + " persons" : "");
  }

  function drawFlows(w) {
    clear(layers.flows);
    if (!D.flows) { return; }
    var list = D.flows.windows[w], c = D.flows.centres;
    list.forEach(function (f, i) {
      var x0 = X(c[f[0]][0]), y0 = Y(c[f[0]][1]), x1 = X(c[f[1]][0]), y1 = Y(c[f[1]][1]);
      var mx = (x0 + x1) / 2 - (y1 - y0) * 0.18, my = (y0 + y1) / 2 + (x1 - x0) * 0.18;
      el("path", {
        d: "M" + x0.toFixed(1) + " " + y0.toFixed(1) + "Q" + mx.toFixed(1) + " " + my.toFixed(1) + " " +
          x1.toFixed(1) + " " + y1.toFixed(1),
        "stroke-width": (1.2 + 4 * Math.sqrt(f[2] / Math.max(D.flows.max, 1))).toFixed(2),
        "marker-end": "url(#arrow)", "data-flow": i
      }, layers.flows);
    });
  }

  function drawTable(entries, w) {
    var body = $("cells-table").tBodies[0], limit = 25;
    clear(body);
    entries.slice(0, limit).forEach(function (e, i) {
      var tr = html("tr"), ctr = centre(e.idx);
      tr.appendChild(html("td", String(i + 1)));
      var td = html("td");
      var sw = html("span", null, "swatch");
      sw.style.background = shade(e.idx, e.v[0]);
      td.appendChild(sw);
      td.appendChild(html("code", D.cells[e.idx]));
      tr.appendChild(td);
      if (D.cellRes) {
        tr.appendChild(html("td", String(D.cellRes[e.idx]), "num"));
        tr.appendChild(html("td", nf.format(D.cellKm2[e.idx]), "num"));
      }
      tr.appendChild(html("td", ctr[1].toFixed(4) + ", " + ctr[0].toFixed(4)));
      tr.appendChild(html("td", nf.format(e.v[0]), "num"));
      tr.appendChild(html("td", nf.format(e.v[1]) + " – " + nf.format(e.v[2]) +
        (e.v[3] ? " · near threshold" : ""), e.v[3] ? "num near" : "num"));
      body.appendChild(tr);
    });
    var cap = entries.length
      ? entries.length + " cell(s) released in " + D.windows[w].label + ", highest count first" +
        (entries.length > limit ? "; the first " + limit + " are listed" : "") + "."
      : "No cell was released in " + D.windows[w].label + ".";
    $("cells-caption").textContent = cap;
  }

  function setWindow(w) {
    w = Math.max(0, Math.min(nWindows - 1, w | 0));
    current = w;
    if (+slider.value !== w) { slider.value = w; }
    var values = D.windows[w].values;
    var entries = Object.keys(values).map(function (k) { return { idx: +k, v: values[k] }; });
    entries.sort(function (a, b) { return b.v[0] - a.v[0] || a.idx - b.idx; });
    clear(layers.released);
    var frag = document.createDocumentFragment();
    // lowest first, so the highest counts are drawn on top; near-threshold cells last, so no
    // neighbour's seam covers their dashed outline
    var order = entries.slice().reverse();
    order = order.filter(function (e) { return !e.v[3]; }).concat(order.filter(function (e) { return e.v[3]; }));
    if (D.cellRes) {  // cells of several sizes: coarse ones first, so finer ones stay on top
      order = order.map(function (e, i) { return { e: e, i: i }; }).sort(function (a, b) {
        return D.cellRes[a.e.idx] - D.cellRes[b.e.idx] || a.i - b.i;
      }).map(function (o) { return o.e; });
    }
    order.forEach(function (e) {
      var attrs = {
        d: cellPath(e.idx), fill: shade(e.idx, e.v[0]), tabindex: 0, "data-idx": e.idx, "data-cell": D.cells[e.idx],
        "data-count": e.v[0], "data-lo": e.v[1], "data-hi": e.v[2], "data-near": e.v[3] ? 1 : 0
      };
      if (e.v[3]) { attrs["class"] = "near"; }
      if (D.cellRes) { attrs["data-res"] = D.cellRes[e.idx]; attrs["data-km2"] = D.cellKm2[e.idx]; }
      frag.appendChild(el("path", attrs));
    });
    layers.released.appendChild(frag);
    drawFlows(w);
    svg.setAttribute("data-window", String(w));
    svg.setAttribute("data-released", String(entries.length));
    $("window-label").textContent = D.windows[w].label;
    slider.setAttribute("aria-valuetext", D.windows[w].label);
    var bars = $("bars").querySelectorAll("rect");
    for (var i = 0; i < bars.length; i++) { bars[i].setAttribute("class", i === w ? "current" : ""); }
    var stats = $("window-stats");
    clear(stats);
    var add = function (strong, text) {
      if (strong !== null) { stats.appendChild(html("b", strong)); }
      stats.appendChild(document.createTextNode(text));
    };
    add(nf.format(entries.length), entries.length === 1 ? " cell released" : " cells released");
    if (D.keyCells !== null) {
      add(null, " · ");
      add(nf.format(D.keyCells - entries.length), " withheld");
    }
    if (entries.length) {
      add(null, " · highest ");
      add(nf.format(entries[0].v[0]), D.halfwidth !== null ? " ± " + D.halfwidth : "");
    }
    if (D.flows) {
      add(null, " · ");
      add(nf.format(D.flows.windows[w].length), " flows");
    }
    drawTable(entries, w);
    hideTip();
    hoverInfo.textContent = "—";
  }

  slider.addEventListener("input", function () { setWindow(+slider.value); });
  slider.addEventListener("change", function () { setWindow(+slider.value); });
  $("prev").addEventListener("click", function () { setWindow(current - 1); });
  $("next").addEventListener("click", function () { setWindow(current + 1); });
  var timer = null;
  $("play").addEventListener("click", function () {
    var btn = $("play");
    if (timer) { clearInterval(timer); timer = null; btn.textContent = "▶ play"; return; }
    btn.textContent = "❚❚ pause";
    timer = setInterval(function () { setWindow((current + 1) % nWindows); }, 1400);
  });
  var tw = $("toggle-withheld");
  if (tw) { tw.addEventListener("change", function () { showWithheld = tw.checked; paintNow(); }); }
  var tf = $("toggle-flows");
  if (tf) { tf.addEventListener("change", function () { layers.flows.style.display = tf.checked ? "" : "none"; }); }

  drawBars();
  drawColourBar();
  setWindow(+slider.value || 0);
  // Open on all the released cells (never fewer) when they fill only part of the area (a city's hot spots
  // are a few hexagons in a large boundary); the locator and ⤢ give the whole area back.
  var rb = releasedBox(releasedAnywhere);
  fit(rb.w * rb.h < 0.5 * FULL.w * FULL.h ? rb : FULL);
  if (!D.bbox) { $("hover-info").textContent = "Nothing to draw: the release has no cells and no boundary was given."; }
  document.documentElement.setAttribute("data-ready", "1");
})();
