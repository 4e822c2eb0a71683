// Static twins of the ipywidgets explorers: they redraw in the browser, without a Python kernel,
// from the maps a notebook computed and embedded beside this script (detr_tutorial/viz/
// static_explorers.py). Python wraps this file as `(function (explorerId) { ... })("<id>")`, so
// every block has its own scope: nothing here becomes a global, and several twins share a page.
"use strict";

// -- the block ---------------------------------------------------------------------------------
// The block with this id that no script has started yet (two identical blocks on one page share
// an id; each script takes the next one).
function findRoot(id) {
  var blocks = document.querySelectorAll('.detr-explorer[data-explorer-id="' + id + '"]');
  for (var i = 0; i < blocks.length; i++) {
    if (!blocks[i].hasAttribute("data-ready")) return blocks[i];
  }
  return null;
}

// -- decoding the embedded data ----------------------------------------------------------------
function bytes(b64) {
  var text = atob(b64), out = new Uint8Array(text.length);
  for (var i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}
function floats(b64) { return new Float32Array(bytes(b64).buffer); }
function uint16s(b64) { return new Uint16Array(bytes(b64).buffer); }
function fmt(template, values) {
  return template.replace(/\{(\w+)\}/g, function (all, key) {
    return Object.prototype.hasOwnProperty.call(values, key) ? String(values[key]) : all;
  });
}
function rgb(c) { return "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")"; }

// -- pictures ----------------------------------------------------------------------------------
// The embedded image drawn into an offscreen canvas; `done(canvas, imageData)` once it is decoded.
function loadImage(src, done) {
  var img = new Image();
  img.onload = function () {
    var c = document.createElement("canvas");
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    var ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    done(c, ctx.getImageData(0, 0, c.width, c.height));
  };
  img.src = src;
}

// Bilinear resize of an [h, w] map to [H, W] with align_corners=False (torch's F.interpolate),
// the geometry of viz.attention_to_image: cell (i, j) is centred on pixel ((j+.5)W/w, (i+.5)H/h).
function resizeBilinear(map, h, w, H, W) {
  var out = new Float32Array(H * W);
  for (var y = 0; y < H; y++) {
    var sy = Math.max((y + 0.5) * h / H - 0.5, 0), y0 = Math.floor(sy);
    var y1 = y0 < h - 1 ? y0 + 1 : y0, ly = sy - y0;
    for (var x = 0; x < W; x++) {
      var sx = Math.max((x + 0.5) * w / W - 0.5, 0), x0 = Math.floor(sx);
      var x1 = x0 < w - 1 ? x0 + 1 : x0, lx = sx - x0;
      var top = map[y0 * w + x0] * (1 - lx) + map[y0 * w + x1] * lx;
      var bottom = map[y1 * w + x0] * (1 - lx) + map[y1 * w + x1] * lx;
      out[y * W + x] = top * (1 - ly) + bottom * ly;
    }
  }
  return out;
}

// viz.overlay_attention: the image in gray, the resized map over it in a colormap with `alpha`,
// the colors spanning the map's own min..max. Returns a canvas of the image's size.
function overlay(pixels, map, h, w, lut, alpha) {
  var W = pixels.width, H = pixels.height, heat = resizeBilinear(map, h, w, H, W);
  var lo = Infinity, hi = -Infinity;
  for (var i = 0; i < heat.length; i++) { lo = Math.min(lo, heat[i]); hi = Math.max(hi, heat[i]); }
  var span = hi > lo ? hi - lo : 1;
  var c = document.createElement("canvas");
  c.width = W;
  c.height = H;
  var ctx = c.getContext("2d"), out = ctx.createImageData(W, H), src = pixels.data;
  for (var p = 0; p < heat.length; p++) {
    var k = Math.min(255, Math.floor((heat[p] - lo) / span * 256)) * 3;
    var gray = (src[4 * p] + src[4 * p + 1] + src[4 * p + 2]) / 3;
    for (var ch = 0; ch < 3; ch++) out.data[4 * p + ch] = Math.round(gray * (1 - alpha) + lut[k + ch] * alpha);
    out.data[4 * p + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  return c;
}

// Two image panels side by side under two-line titles; `panel(i)` is panel i's rectangle.
function twoPanels(canvas, data) {
  var pw = data.panel_width, ph = Math.round(pw * data.image_size[0] / data.image_size[1]);
  var title = 36, gap = 14;
  canvas.width = 2 * pw + gap;
  canvas.height = title + ph;
  return { title: title, panel: function (i) { return { x: i * (pw + gap), y: title, w: pw, h: ph }; } };
}
function drawPicture(ctx, source, box) {
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(source, box.x, box.y, box.w, box.h);
}
function drawTitle(ctx, lines, box) {
  ctx.fillStyle = "#222";
  ctx.font = "12px sans-serif";
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (var i = 0; i < lines.length; i++) ctx.fillText(lines[i], box.x + box.w / 2, 2 + 15 * i, box.w);
}
// A rectangle given in image pixels (x1, y1, x2, y2), drawn in a panel.
function drawRect(ctx, data, box, r, color, width, dash) {
  var sx = box.w / data.image_size[1], sy = box.h / data.image_size[0];
  ctx.save();
  ctx.beginPath();
  ctx.rect(box.x, box.y, box.w, box.h);
  ctx.clip();
  ctx.strokeStyle = color;
  ctx.lineWidth = width;
  ctx.setLineDash(dash || []);
  ctx.strokeRect(box.x + r[0] * sx, box.y + r[1] * sy, (r[2] - r[0]) * sx, (r[3] - r[1]) * sy);
  ctx.restore();
}
function drawCaption(ctx, text, x, y, color) {
  ctx.font = "11px sans-serif";
  ctx.textAlign = "left";
  ctx.textBaseline = "bottom";
  var width = ctx.measureText(text).width;
  ctx.fillStyle = color;
  ctx.globalAlpha = 0.75;
  ctx.fillRect(x, y - 14, width + 4, 14);
  ctx.globalAlpha = 1;
  ctx.fillStyle = "#fff";
  ctx.fillText(text, x + 2, y - 1);
}
function drawCross(ctx, data, box, point) {
  var x = box.x + (point[0] + 0.5) * box.w / data.image_size[1];
  var y = box.y + (point[1] + 0.5) * box.h / data.image_size[0];
  ctx.strokeStyle = "red";
  ctx.lineWidth = 2;
  ctx.setLineDash([]);
  ctx.beginPath();
  ctx.moveTo(x - 7, y); ctx.lineTo(x + 7, y);
  ctx.moveTo(x, y - 7); ctx.lineTo(x, y + 7);
  ctx.stroke();
}
// The pixel of the image under a mouse event on `canvas`, or null outside every panel.
function imagePoint(event, canvas, data, panels) {
  var rect = canvas.getBoundingClientRect();
  var cx = (event.clientX - rect.left) * canvas.width / rect.width;
  var cy = (event.clientY - rect.top) * canvas.height / rect.height;
  for (var i = 0; i < panels.length; i++) {
    var b = panels[i];
    if (cx >= b.x && cx < b.x + b.w && cy >= b.y && cy < b.y + b.h) {
      var H = data.image_size[0], W = data.image_size[1];
      return [Math.min(W - 1, Math.floor((cx - b.x) * W / b.w)),
              Math.min(H - 1, Math.floor((cy - b.y) * H / b.h))];
    }
  }
  return null;
}

// -- controls ----------------------------------------------------------------------------------
function control(root, role) { return root.querySelector('[data-role="' + role + '"]'); }
function onChange(el, redraw) {
  if (!el) return;
  el.addEventListener(el.tagName === "SELECT" ? "change" : "input", redraw);
}
// Toggle buttons (data-role=role, data-value=...): the pressed one's value, and a click handler.
function toggles(root, role, redraw) {
  var buttons = root.querySelectorAll('[data-role="' + role + '"] button');
  function value() {
    for (var i = 0; i < buttons.length; i++) {
      if (buttons[i].getAttribute("aria-pressed") === "true") return buttons[i].getAttribute("data-value");
    }
    return buttons.length ? buttons[0].getAttribute("data-value") : null;
  }
  Array.prototype.forEach.call(buttons, function (b) {
    b.addEventListener("click", function () {
      Array.prototype.forEach.call(buttons, function (o) { o.setAttribute("aria-pressed", String(o === b)); });
      redraw();
    });
  });
  return value;
}
function headName(L, head) { return head === "mean" ? L.mean : fmt(L.head_n, { n: head + 1 }); }

// -- encoder: where one point looks ------------------------------------------------------------
function startEncoder(root, canvas, data, pixels, picture) {
  var L = data.labels, h = data.feature_shape[0], w = data.feature_shape[1], hw = h * w;
  var codes = bytes(data.codes), scales = floats(data.scales), lut = bytes(data.colormap);
  var nh = data.heads.length, layerEl = control(root, "layer"), headEl = control(root, "head");
  var direction = toggles(root, "direction", redraw), status = root.querySelector(".detr-explorer-status");
  var geo = twoPanels(canvas, data), panels = [geo.panel(0), geo.panel(1)], point = data.point.slice();
  canvas.setAttribute("data-panels", JSON.stringify(panels));  // where a click lands (for tests)
  function cellOf(p) {
    var H = data.image_size[0], W = data.image_size[1];
    return [Math.min(Math.floor(p[1] * h / H), h - 1), Math.min(Math.floor(p[0] * w / W), w - 1)];
  }
  // Row `index` (where the point looks) or column `index` (what looks at it) of the stored
  // [HW, HW] matrix, de-quantized: code * (the scale of the code's row).
  function attentionMap(layer, head, index, dir) {
    var m = (layer * nh + head), out = new Float32Array(hw);
    for (var k = 0; k < hw; k++) {
      var row = dir === "row" ? index : k, col = dir === "row" ? k : index;
      out[k] = codes[(m * hw + row) * hw + col] * scales[m * hw + row];
    }
    return out;
  }
  function redraw() {
    var layer = Number(layerEl.value), head = Number(headEl.value), dir = direction();
    var cell = cellOf(point), H = data.image_size[0], W = data.image_size[1];
    var map = attentionMap(layer, head, cell[0] * w + cell[1], dir);
    var ctx = canvas.getContext("2d"), cellBox = [cell[1] * W / w, cell[0] * H / h, (cell[1] + 1) * W / w, (cell[0] + 1) * H / h];
    var where = { x: point[0], y: point[1], row: cell[0], col: cell[1], h: h, w: w,
                  layer: fmt(L.enc_layer, { n: data.layers[layer] + 1 }), head: headName(L, data.heads[head]),
                  direction: L[dir] };
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    drawPicture(ctx, picture, panels[0]);
    drawPicture(ctx, overlay(pixels, map, h, w, lut, data.alpha), panels[1]);
    drawTitle(ctx, fmt(L.enc_left, where).split("\n"), panels[0]);
    drawTitle(ctx, [where.layer + ", " + where.head + ":", where.direction], panels[1]);
    panels.forEach(function (b) { drawRect(ctx, data, b, cellBox, "cyan", 1.5); drawCross(ctx, data, b, point); });
    status.textContent = fmt(L.enc_status, where);
    root.setAttribute("data-cell", cell[0] + "," + cell[1]);
  }
  canvas.addEventListener("click", function (event) {
    var p = imagePoint(event, canvas, data, panels);
    if (p) { point = p; redraw(); }
  });
  canvas.addEventListener("keydown", function (event) {
    var steps = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[event.key];
    if (!steps) return;
    event.preventDefault();
    var H = data.image_size[0], W = data.image_size[1];
    point = [Math.max(0, Math.min(W - 1, point[0] + steps[0] * Math.ceil(W / w))),
             Math.max(0, Math.min(H - 1, point[1] + steps[1] * Math.ceil(H / h)))];
    redraw();
  });
  onChange(layerEl, redraw);
  onChange(headEl, redraw);
  redraw();
}

// -- decoder: where one detection's query looks ------------------------------------------------
function startDecoder(root, canvas, data, pixels, picture) {
  var L = data.labels, h = data.feature_shape[0], w = data.feature_shape[1], hw = h * w;
  var dets = data.detections, nd = dets.length, nh = data.heads.length, lut = bytes(data.colormap);
  var codes = nd ? bytes(data.codes) : null, scales = nd ? floats(data.scales) : null;
  var detEl = control(root, "detection"), layerEl = control(root, "layer"), headEl = control(root, "head");
  var status = root.querySelector(".detr-explorer-status"), geo = twoPanels(canvas, data);
  var panels = [geo.panel(0), geo.panel(1)];
  function attentionMap(layer, head, det) {
    var m = (layer * nh + head) * nd + det, out = new Float32Array(hw);
    for (var k = 0; k < hw; k++) out[k] = codes[m * hw + k] * scales[m];
    return out;
  }
  function redraw() {
    var ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!nd) {
      drawPicture(ctx, picture, panels[0]);
      status.textContent = data.none_message;
      return;
    }
    var det = Number(detEl.value), layer = Number(layerEl.value), head = Number(headEl.value), d = dets[det];
    var layerName = fmt(L.dec_layer, { n: data.layers[layer] + 1 }), head_ = headName(L, data.heads[head]);
    drawPicture(ctx, picture, panels[0]);
    drawRect(ctx, data, panels[0], d.box, rgb(data.box_color), 2);
    var sx = panels[0].w / data.image_size[1], sy = panels[0].h / data.image_size[0];
    drawCaption(ctx, d.caption, panels[0].x + Math.max(0, d.box[0] * sx), panels[0].y + Math.max(14, d.box[1] * sy), rgb(data.box_color));
    drawPicture(ctx, overlay(pixels, attentionMap(layer, head, det), h, w, lut, data.alpha), panels[1]);
    drawRect(ctx, data, panels[1], d.box, "cyan", 1.5);
    drawTitle(ctx, [d.label], panels[0]);
    drawTitle(ctx, [layerName + ", " + head_ + ":", fmt(L.dec_right, { q: d.query })], panels[1]);
    status.textContent = fmt(L.dec_status, { n: nd, t: data.threshold_text, det: d.label, layer: layerName, head: head_ });
    root.setAttribute("data-query", String(d.query));
  }
  [detEl, layerEl, headEl].forEach(function (el) { onChange(el, redraw); });
  redraw();
}

// -- matching: the assignment for the chosen cost weights --------------------------------------
function costMatrix(terms, weights, q, n) {
  var out = new Float64Array(q * n);
  for (var t = 0; t < 3; t++) {
    if (weights[t] === 0) continue;  // a term switched off is left out, as MatchingProblem does
    for (var k = 0; k < q * n; k++) out[k] += weights[t] * terms[t * q * n + k];
  }
  return out;
}
function drawMatrix(ctx, matrix, q, n, assignment, lut, box) {
  var lo = Infinity, hi = -Infinity;
  for (var k = 0; k < matrix.length; k++) { lo = Math.min(lo, matrix[k]); hi = Math.max(hi, matrix[k]); }
  var cw = box.w / n, ch = box.h / q, span = hi > lo ? hi - lo : 1;
  for (var i = 0; i < q; i++) {
    for (var j = 0; j < n; j++) {
      var c = Math.min(255, Math.floor((matrix[i * n + j] - lo) / span * 256)) * 3;
      ctx.fillStyle = "rgb(" + lut[c] + "," + lut[c + 1] + "," + lut[c + 2] + ")";
      ctx.fillRect(box.x + j * cw, box.y + i * ch, Math.ceil(cw), Math.ceil(ch));
    }
  }
  ctx.strokeStyle = "red";
  ctx.lineWidth = 2;
  ctx.setLineDash([]);
  for (var m = 0; assignment && m < assignment[0].length; m++) {
    ctx.strokeRect(box.x + assignment[1][m] * cw + 1, box.y + assignment[0][m] * ch + 1, cw - 2, ch - 2);
  }
  return [lo, hi];
}
function drawArrow(ctx, from, to, color) {
  var angle = Math.atan2(to[1] - from[1], to[0] - from[0]);
  ctx.strokeStyle = color;
  ctx.fillStyle = color;
  ctx.lineWidth = 1.5;
  ctx.setLineDash([]);
  ctx.beginPath(); ctx.moveTo(from[0], from[1]); ctx.lineTo(to[0], to[1]); ctx.stroke();
  ctx.beginPath();
  ctx.moveTo(to[0], to[1]);
  ctx.lineTo(to[0] - 7 * Math.cos(angle - 0.4), to[1] - 7 * Math.sin(angle - 0.4));
  ctx.lineTo(to[0] - 7 * Math.cos(angle + 0.4), to[1] - 7 * Math.sin(angle + 0.4));
  ctx.fill();
}
function drawMatches(ctx, data, box, assignment) {
  var sx = box.w / data.image_size[1], sy = box.h / data.image_size[0];
  function centre(r) { return [box.x + (r[0] + r[2]) / 2 * sx, box.y + (r[1] + r[3]) / 2 * sy]; }
  data.gt_boxes.forEach(function (g, j) {
    var c = rgb(data.palette[j % data.palette.length]);
    drawRect(ctx, data, box, g, c, 2);
    drawCaption(ctx, "gt" + j + " " + data.gt_names[j], box.x + Math.max(0, g[0] * sx), box.y + Math.max(14, g[1] * sy), c);
  });
  for (var m = 0; assignment && m < assignment[0].length; m++) {
    var q = assignment[0][m], j = assignment[1][m], p = data.pred_boxes[q];
    var c = rgb(data.palette[j % data.palette.length]);
    drawRect(ctx, data, box, p, c, 1.5, [5, 3]);
    drawArrow(ctx, centre(p), centre(data.gt_boxes[j]), c);
    ctx.fillStyle = c;
    ctx.font = "10px sans-serif";
    ctx.textAlign = "right";
    ctx.textBaseline = "top";
    ctx.fillText("q" + q, box.x + p[2] * sx, box.y + p[3] * sy);
  }
}
function drawLosses(ctx, L, losses, palette, box) {
  var names = ["loss_ce", "loss_bbox", "loss_giou"], top = 0;
  names.forEach(function (k) { top = Math.max(top, losses[k] || 0); });
  var barH = 22, scale = (box.w - 110) / (top > 0 ? top : 1);
  ctx.textBaseline = "middle";
  names.forEach(function (k, i) {
    var y = box.y + 10 + i * (barH + 12), v = losses[k] || 0;
    ctx.fillStyle = "#222"; ctx.font = "11px sans-serif"; ctx.textAlign = "right";
    ctx.fillText(k, box.x + 62, y + barH / 2);
    ctx.fillStyle = rgb(palette[i]);
    ctx.fillRect(box.x + 66, y, Math.max(1, v * scale), barH);
    ctx.fillStyle = "#222"; ctx.textAlign = "left";
    ctx.fillText(v.toFixed(3), box.x + 70 + v * scale, y + barH / 2);
  });
}
function startMatching(root, canvas, data, pixels, picture) {
  var L = data.labels, q = data.num_queries, n = data.num_targets, grid = data.grid, g = grid.length;
  var terms = floats(data.terms), ids = uint16s(data.assignment_ids), lut = bytes(data.colormap);
  var sliders = ["class", "bbox", "giou"].map(function (k) { return control(root, "cost_" + k); });
  var readouts = ["class", "bbox", "giou"].map(function (k) { return root.querySelector('[data-readout="cost_' + k + '"]'); });
  var status = root.querySelector(".detr-explorer-status"), title = 36, ph = data.panel_height;
  var boxes = [{ x: 34, y: title, w: 150, h: ph },
               { x: 214, y: title, w: Math.round(ph * data.image_size[1] / data.image_size[0]), h: ph }];
  boxes.push({ x: boxes[1].x + boxes[1].w + 24, y: title, w: 250, h: ph });
  canvas.width = boxes[2].x + boxes[2].w;
  canvas.height = title + ph + 22;
  function redraw() {
    var idx = sliders.map(function (s) { return Number(s.value); });
    var weights = idx.map(function (i) { return grid[i]; });
    readouts.forEach(function (r, t) { if (r) r.textContent = data.grid_text[idx[t]]; });
    var id = ids[(idx[0] * g + idx[1]) * g + idx[2]], ok = id !== 65535;
    var assignment = ok ? data.assignments[id] : null, ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    var range = n ? drawMatrix(ctx, costMatrix(terms, weights, q, n), q, n, assignment, lut, boxes[0]) : null;
    drawTitle(ctx, [L.cost_title, range ? range[0].toFixed(2) + " .. " + range[1].toFixed(2) : L.no_gt], boxes[0]);
    ctx.fillStyle = "#222"; ctx.font = "11px sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "top";
    ctx.fillText(L.ground_truth, boxes[0].x + boxes[0].w / 2, title + ph + 4);
    ctx.save(); ctx.translate(12, title + ph / 2); ctx.rotate(-Math.PI / 2); ctx.fillText(L.query, 0, -6); ctx.restore();
    drawPicture(ctx, picture, boxes[1]);
    drawMatches(ctx, data, boxes[1], assignment);
    drawTitle(ctx, [L.boxes_title], boxes[1]);
    var losses = ok ? data.losses[id] : {};
    drawLosses(ctx, L, losses, data.palette, boxes[2]);
    drawTitle(ctx, [L.loss_title, ok ? L.total + " " + losses.total.toFixed(3) : ""], boxes[2]);
    var pairs = [];
    for (var m = 0; ok && m < assignment[0].length; m++) pairs.push("q" + assignment[0][m] + "\u2192gt" + assignment[1][m]);
    var values = { c: data.grid_text[idx[0]], b: data.grid_text[idx[1]], g: data.grid_text[idx[2]],
                   pairs: pairs.join(", ") || L.match_none, total: ok ? losses.total.toFixed(3) : "-" };
    var zero = weights.every(function (v) { return v === 0; });
    status.textContent = !ok ? L.invalid : zero ? L.match_zero : fmt(L.match_status, values);
    root.setAttribute("data-assignment", ok ? pairs.join(",") : "");
  }
  sliders.forEach(function (s) { onChange(s, redraw); });
  redraw();
}

// -- start -------------------------------------------------------------------------------------
(function start() {
  var root = findRoot(explorerId);
  if (!root) return;
  root.setAttribute("data-ready", "loading");
  var data = JSON.parse(root.querySelector("script.detr-explorer-data").textContent);
  var canvas = root.querySelector("canvas");
  var kinds = { encoder: startEncoder, decoder: startDecoder, matching: startMatching };
  loadImage(data.image, function (picture, pixels) {
    kinds[root.getAttribute("data-kind")](root, canvas, data, pixels, picture);
    root.setAttribute("data-ready", "true");
  });
})();
