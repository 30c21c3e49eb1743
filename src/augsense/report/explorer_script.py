"""The unit explorer's script and style (plain JavaScript, no library, nothing fetched).

The script decodes the base64 typed arrays of :func:`augsense.report.explorer.explorer_payload`
once (float16 through a 65 536-entry table), filters all units in one pass over typed arrays, lists
the matches in a virtualised list (only the visible rows exist in the page) and draws the selected
unit: every factor's indices with intervals, and for per-position layers the channel's maps with the
unit's position outlined. Test hooks: ``#ex-count[data-count]``, ``.ex-row[data-unit]``,
``#ex-detail tr[data-factor]``, ``canvas.ex-map[data-factor]`` and ``#ex-root[data-last-ms]``
(how long the last interaction took in the page).
"""

EXPLORER_CSS = """
.explorer{border:1px solid #ddd;border-radius:4px;padding:.6em;margin:.8em 0}
.ex-controls{display:flex;flex-wrap:wrap;gap:.4em 1.1em;font-size:.88em;margin-bottom:.4em}
.ex-controls input[type=number]{width:5em}.ex-count{font-size:.85em;color:#555;margin:.2em 0 .4em}
.ex-body{display:flex;gap:1em;align-items:flex-start}
.ex-list{position:relative;overflow-y:auto;height:420px;flex:0 0 340px;border:1px solid #e4e4e4;font-size:.82em}
.ex-row{position:absolute;left:0;right:0;height:22px;line-height:22px;padding:0 .4em;cursor:pointer;white-space:nowrap;
overflow:hidden;display:flex;gap:.5em;border-bottom:1px solid #f2f2f2}
.ex-row:hover{background:#f3f7fc}.ex-row.sel{background:#dbe8f8}
.ex-row .l{flex:0 0 6.5em;overflow:hidden;text-overflow:ellipsis;color:#555}.ex-row .u{flex:0 0 6.5em}
.ex-row .f{flex:1 1 auto;overflow:hidden;text-overflow:ellipsis}.ex-row .v{flex:0 0 3.5em;text-align:right}
.ex-sw{display:inline-block;width:.8em;height:.8em;border-radius:2px;vertical-align:-.05em;margin-right:.25em}
.ex-detail{flex:1 1 auto;min-width:0;font-size:.88em}.ex-detail h3{margin:.1em 0 .3em;font-size:1.05em}
.ex-detail td.num{font-variant-numeric:tabular-nums;white-space:nowrap}.ex-hint{color:#777}
.ex-maps{display:flex;flex-wrap:wrap;gap:.6em;margin-top:.6em}.ex-maps figure{margin:0;text-align:center;font-size:.8em}
.ex-maps canvas{image-rendering:pixelated;border:2px solid #ccc;display:block}
.ex-over{color:#b00000;font-weight:600}
"""

EXPLORER_JS = r"""
(function () {
  "use strict";
  const root = document.getElementById("ex-root");
  const meta = JSON.parse(document.getElementById("ex-data").textContent);
  const ROW = 22, M = meta.units, d = meta.players.length, layers = meta.layers;
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
  const half = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    half[h] = e === 0 ? s * f * 5.960464477539063e-8 : e === 31 ? (f ? NaN : s * Infinity)
      : s * Math.pow(2, e - 15) * (1 + f / 1024);
  }
  function bytes(b64) {
    const bin = atob(b64), out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function float16(b64) {
    const raw = new Uint16Array(bytes(b64).buffer), out = new Float32Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = half[raw[i]];
    return out;
  }
  const A = {};
  for (const key of Object.keys(meta.arrays)) {
    const b64 = meta.arrays[key];
    A[key] = key === "variance" ? new Float32Array(bytes(b64).buffer)
      : (key === "dead" || key === "dominant") ? bytes(b64) : float16(b64);
  }
  const main = A[meta.main];
  const ctl = {layer: $("ex-layer"), dominant: $("ex-dominant"), factor: $("ex-factor"), threshold: $("ex-threshold"),
               search: $("ex-search"), sort: $("ex-sort"), dead: $("ex-dead")};
  const list = $("ex-list"), spacer = $("ex-spacer"), count = $("ex-count"), detail = $("ex-detail");
  let matches = new Uint32Array(0), selected = -1;

  function layerOf(u) {
    for (let k = layers.length - 1; k > 0; k--) if (u >= layers[k].offset) return k;
    return 0;
  }
  function unravel(i, shape) {
    const index = new Array(shape.length);
    for (let k = shape.length - 1; k >= 0; k--) { index[k] = i % shape[k]; i = Math.floor(i / shape[k]); }
    return index;
  }
  function label(u) {
    const L = layers[layerOf(u)], i = u - L.offset;
    if (L.shape.length <= 1) return String(i);
    const p = unravel(i, L.shape);
    return p[0] + " (" + p.slice(1).join(", ") + ")";
  }
  function fixed(v) {
    if (!isFinite(v)) return "–";
    const s = v.toFixed(3);
    return Number(s) === 0 ? s.replace("-", "") : s;
  }
  function general(v) { return isFinite(v) ? (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : v.toFixed(3)) : "–"; }

  function stamp(started) { root.dataset.lastMs = (performance.now() - started).toFixed(1); }

  function apply() {
    const started = performance.now();
    const lk = Number(ctl.layer.value), dom = Number(ctl.dominant.value), fac = Number(ctl.factor.value);
    const thr = ctl.threshold.value === "" ? NaN : Number(ctl.threshold.value);
    const nums = (ctl.search.value.match(/\d+/g) || []).map(Number), showDead = ctl.dead.checked;
    const dominant = A.dominant, dead = A.dead, out = new Uint32Array(M);
    let n = 0;
    const chosen = lk < 0 ? layers.map((_, k) => k) : [lk];
    for (const k of chosen) {
      const L = layers[k], shape = L.shape;
      let lo = L.offset, hi = L.offset + L.count;
      if (nums.length) {
        if (nums[0] >= shape[0]) continue;
        const inner = L.count / shape[0];
        if (nums.length === 1 || shape.length <= 1) { lo = L.offset + nums[0] * inner; hi = lo + inner; }
        else {
          let flat = nums[0], ok = true;
          for (let a = 1; a < shape.length; a++) { const x = nums[a] || 0; ok = ok && x < shape[a]; flat = flat * shape[a] + x; }
          if (!ok) continue;
          lo = L.offset + flat; hi = lo + 1;
        }
      }
      for (let u = lo; u < hi; u++) {
        if (dead[u] && !showDead) continue;
        const g = dominant[u];
        if (dom >= 0 && g !== dom) continue;
        if (thr === thr) {
          const j = fac >= 0 ? fac : g;
          if (j === 255 || !(main[u * d + j] >= thr)) continue;
        }
        out[n++] = u;
      }
    }
    matches = out.slice(0, n);
    if (ctl.sort.value === "value" && n > 1) {
      const key = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        const u = matches[i], j = fac >= 0 ? fac : dominant[u], v = j === 255 ? NaN : main[u * d + j];
        key[i] = v === v ? v : -Infinity;
      }
      const order = new Uint32Array(n);
      for (let i = 0; i < n; i++) order[i] = i;
      order.sort((a, b) => (key[b] - key[a]) || (a - b));
      const sorted = new Uint32Array(n);
      for (let i = 0; i < n; i++) sorted[i] = matches[order[i]];
      matches = sorted;
    }
    count.dataset.count = String(n);
    count.textContent = n + " of " + M + " units" + (n ? "" : " — no unit matches these filters");
    list.scrollTop = 0;
    render();
    stamp(started);
  }

  function render() {
    spacer.style.height = (matches.length * ROW) + "px";
    const first = Math.max(0, Math.floor(list.scrollTop / ROW) - 2);
    const last = Math.min(matches.length, first + Math.ceil(list.clientHeight / ROW) + 5);
    for (const row of Array.from(list.getElementsByClassName("ex-row"))) row.remove();
    const fac = Number(ctl.factor.value), fragment = document.createDocumentFragment();
    for (let i = first; i < last; i++) {
      const u = matches[i], g = A.dominant[u], j = fac >= 0 ? fac : g, row = document.createElement("div");
      row.className = "ex-row" + (u === selected ? " sel" : "");
      row.style.top = (i * ROW) + "px";
      row.dataset.unit = String(u);
      const L = layers[layerOf(u)];
      const factor = g === 255 ? "dead" : esc(meta.players[g]);
      const colour = g === 255 ? "#000" : meta.colours[g];
      row.innerHTML = '<span class="l">' + esc(L.name) + '</span><span class="u">' + esc(label(u)) +
        '</span><span class="f"><span class="ex-sw" style="background:' + colour + '"></span>' + factor +
        '</span><span class="v">' + (j === 255 ? "–" : fixed(main[u * d + j])) + "</span>";
      fragment.appendChild(row);
    }
    list.appendChild(fragment);
  }

  function bar(est, low, high, lo, hi, colour) {
    const W = 170, H = 14, x = (v) => Math.max(0, Math.min(W, (v - lo) / (hi - lo) * W));
    let s = '<svg class="ex-bar" width="' + W + '" height="' + H + '" viewBox="0 0 ' + W + " " + H + '">';
    s += '<line x1="' + x(0) + '" x2="' + x(0) + '" y1="0" y2="' + H + '" stroke="#666" stroke-width="0.8"/>';
    s += '<line x1="' + x(1) + '" x2="' + x(1) + '" y1="0" y2="' + H + '" stroke="#aaa" stroke-dasharray="2,2"/>';
    if (isFinite(est)) {
      const a = Math.min(x(0), x(est)), b = Math.max(x(0), x(est));
      s += '<rect x="' + a + '" y="3" width="' + Math.max(b - a, 0.8) + '" height="8" fill="' + colour + '"/>';
    }
    if (isFinite(low) && isFinite(high)) {
      s += '<line class="ex-ci" x1="' + x(low) + '" x2="' + x(high) + '" y1="7" y2="7" stroke="#000" stroke-width="1.2"/>';
      for (const v of [low, high]) s += '<line x1="' + x(v) + '" x2="' + x(v) + '" y1="3.5" y2="10.5" stroke="#000"/>';
    }
    return s + "</svg>";
  }

  function select(u) {
    const started = performance.now();
    selected = u;
    const L = layers[layerOf(u)], i = u - L.offset, g = A.dominant[u];
    let h = '<h3 id="ex-title" data-layer="' + esc(L.name) + '" data-unit="' + esc(label(u)) + '">' + esc(L.name) +
      ", unit " + esc(label(u)) + "</h3><p>activation variance " + general(A.variance[u]) +
      (A.dead[u] ? ' · <b>dead</b> (zero variance: no index)' : "") +
      (g !== 255 ? ' · dominant factor <span class="ex-sw" style="background:' + meta.colours[g] + '"></span>' +
        esc(meta.players[g]) : "") + "</p>";
    let lo = 0, hi = 1;
    const m = meta.main, hasCi = meta.intervals.indexOf(m) >= 0;
    for (let j = 0; j < d; j++) {
      for (const v of [main[u * d + j], hasCi ? A[m + "_low"][u * d + j] : NaN, hasCi ? A[m + "_high"][u * d + j] : NaN])
        if (isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    }
    lo = Math.max(lo - 0.05, -1); hi = Math.min(hi + 0.05, 2);
    h += '<table class="ex-table"><thead><tr><th>factor</th>';
    for (const q of meta.quantities) h += "<th>" + esc(meta.labels[q]) + (meta.intervals.indexOf(q) >= 0 ? " [" +
      Math.round(meta.confidence * 100) + " % interval]" : "") + "</th>";
    h += "<th>" + esc(meta.labels[m]) + " (bar) and interval</th></tr></thead><tbody>";
    for (let j = 0; j < d; j++) {
      h += '<tr data-factor="' + esc(meta.players[j]) + '"><td><span class="ex-sw" style="background:' + meta.colours[j] +
        '"></span>' + esc(meta.players[j]) + "</td>";
      for (const q of meta.quantities) {
        const e = A[q][u * d + j], ci = meta.intervals.indexOf(q) >= 0;
        const text = fixed(e) + (ci ? " [" + fixed(A[q + "_low"][u * d + j]) + ", " + fixed(A[q + "_high"][u * d + j]) + "]" : "");
        h += '<td class="num" data-quantity="' + q + '"' + (e > 1 ? ' title="above 1: sampling noise around a share near 1"' : "") +
          ">" + (e > 1 ? '<span class="ex-over">' + text + " &gt; 1</span>" : text) + "</td>";
      }
      h += "<td>" + bar(main[u * d + j], hasCi ? A[m + "_low"][u * d + j] : NaN, hasCi ? A[m + "_high"][u * d + j] : NaN,
                        lo, hi, meta.colours[j]) + "</td></tr>";
    }
    h += "</tbody></table>";
    if (L.shape.length === 3) {
      h += "<p>Channel " + unravel(i, L.shape)[0] + ": " + esc(meta.labels[m]) + " of every position, per factor " +
        "(the selected position outlined; pink &lt; 0, red &gt; 1, grey dead).</p><div class=\"ex-maps\">";
      for (let j = 0; j < d; j++) h += '<figure><canvas class="ex-map" data-factor="' + esc(meta.players[j]) +
        '" style="border-color:' + meta.colours[j] + '"></canvas><figcaption>' + esc(meta.players[j]) + "</figcaption></figure>";
      h += "</div>";
    }
    detail.innerHTML = h;
    if (L.shape.length === 3) maps(L, i);
    render();
    stamp(started);
  }

  function colourOf(v, dead) {
    if (dead || !(v === v)) return meta.scale.dead;
    if (v < 0) return meta.scale.under;
    if (v > 1) return meta.scale.over;
    return meta.scale.viridis[Math.min(63, Math.floor(v * 64))];
  }
  function rgb(hex) { return [1, 3, 5].map((k) => parseInt(hex.slice(k, k + 2), 16)); }

  function maps(L, i) {
    const [C, H, W] = L.shape, [c, y, x] = unravel(i, L.shape), base = L.offset + c * H * W;
    const scale = Math.max(1, Math.ceil(112 / Math.max(H, W)));
    const canvases = detail.getElementsByClassName("ex-map");
    for (let j = 0; j < d; j++) {
      const canvas = canvases[j];
      canvas.width = W * scale; canvas.height = H * scale;
      const small = document.createElement("canvas");
      small.width = W; small.height = H;
      const sctx = small.getContext("2d"), image = sctx.createImageData(W, H);
      for (let p = 0; p < H * W; p++) {
        const u = base + p, [r, g, b] = rgb(colourOf(main[u * d + j], A.dead[u]));
        image.data[4 * p] = r; image.data[4 * p + 1] = g; image.data[4 * p + 2] = b; image.data[4 * p + 3] = 255;
      }
      sctx.putImageData(image, 0, 0);
      const ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(small, 0, 0, W * scale, H * scale);
      ctx.lineWidth = Math.max(1, scale / 3);
      ctx.strokeStyle = "#ffffff";
      ctx.strokeRect(x * scale, y * scale, scale, scale);
    }
  }

  for (const c of Object.values(ctl)) c.addEventListener(c.type === "search" || c.type === "number" ? "input" : "change", apply);
  list.addEventListener("scroll", () => requestAnimationFrame(render));
  list.addEventListener("click", (event) => {
    const row = event.target.closest(".ex-row");
    if (row) select(Number(row.dataset.unit));
  });
  list.addEventListener("keydown", (event) => {  // arrow keys walk the filtered list
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
    event.preventDefault();
    if (!matches.length) return;
    let i = matches.indexOf(selected);
    i = i < 0 ? 0 : Math.max(0, Math.min(matches.length - 1, i + (event.key === "ArrowDown" ? 1 : -1)));
    const top = i * ROW;
    if (top < list.scrollTop) list.scrollTop = top;
    else if (top + ROW > list.scrollTop + list.clientHeight) list.scrollTop = top + ROW - list.clientHeight;
    select(matches[i]);
  });
  apply();
  root.dataset.ready = "1";
})();
"""
