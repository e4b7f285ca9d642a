// The connection table: the rows arrive as columns in one JSON blob; only the
// page on screen becomes DOM, so 100,000 connections stay responsive.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("data").textContent);
  const S = data.strings;
  const C = data.cols;
  const N = C.stream.length;
  const PAGE = data.page;
  const multi = new Set(C.cap).size > 1;

  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
  const ep = (h, p) => (S[h].includes(":") ? "[" + S[h] + "]:" : S[h] + ":") + p;
  const clock = (i) => new Date(data.base_ms + C.t[i]).toISOString().slice(11, 23);
  const dur = (ms) => (ms === null ? "-" : ms < 1000 ? ms.toFixed(1) + " ms"
    : ms < 120000 ? (ms / 1000).toFixed(2) + " s" : (ms / 60000).toFixed(1) + " min");
  const filterOf = (i) => "tcp.stream eq " + C.stream[i];
  const str = (col) => (i) => S[C[col][i]];

  // val: what a column sorts by; show: its cell, as HTML.
  const columns = [
    { label: "stream", num: true, val: (i) => C.stream[i], show: (i) => C.stream[i] },
    { label: "Wireshark filter", nosort: true,
      show: (i) => "<code>" + filterOf(i) + '</code> <button type="button" class="copy" data-copy="' +
        filterOf(i) + '">copy</button>' },
    multi && { label: "capture", val: str("cap"), show: (i) => esc(S[C.cap[i]]) },
    { label: "start (UTC)", val: (i) => C.t[i], show: clock },
    { label: "client", val: (i) => S[C.ch[i]] + ":" + C.cp[i], show: (i) => esc(ep(C.ch[i], C.cp[i])) },
    { label: "server", val: (i) => S[C.sh[i]] + ":" + C.sp[i], show: (i) => esc(ep(C.sh[i], C.sp[i])) },
    { label: "close type", val: str("type"),
      show: (i) => '<span class="ct ct-' + S[C.type[i]] + '">' + S[C.type[i]] + "</span>" },
    { label: "closer", val: str("closer"), show: (i) => S[C.closer[i]] || "-" },
    { label: "RST", val: (i) => S[C.rby[i]] + S[C.rph[i]],
      show: (i) => (S[C.rby[i]] ? S[C.rby[i]] + (S[C.rph[i]] ? " (" + S[C.rph[i]] + ")" : "") : "-") },
    { label: "TIME_WAIT", val: str("tw"), show: (i) => S[C.tw[i]] || "-" },
    { label: "duration", num: true, val: (i) => C.dur[i], show: (i) => dur(C.dur[i]) },
    { label: "close_wait", num: true, val: (i) => (C.cw[i] === null ? -1 : C.cw[i]),
      show: (i) => dur(C.cw[i]) + (C.stuck[i] ? ' <span class="stuck">stuck</span>' : "") },
    { label: "packets", num: true, val: (i) => C.pk[i], show: (i) => C.pk[i] },
    { label: "bytes c / s", num: true, val: (i) => C.bc[i] + C.bs[i],
      show: (i) => C.bc[i] + " / " + C.bs[i] },
    { label: "frames", num: true, val: (i) => C.ff[i], show: (i) => C.ff[i] + "–" + C.lf[i] },
    { label: "notes", val: str("notes"), show: (i) => esc(S[C.notes[i]]) },
  ].filter(Boolean);

  const $ = (id) => document.getElementById(id);
  const table = $("conns");
  const head = table.tHead.rows[0];
  const body = table.tBodies[0];
  let order = Int32Array.from({ length: N }, (_, i) => i);
  let view = order;
  let page = 0;
  let sortCol = 0;
  let sortDir = 1;
  let text = null; // the searchable text of each row, built on the first search

  function searchText() {
    if (text === null) {
      text = new Array(N);
      for (let i = 0; i < N; i++) {
        text[i] = [C.stream[i], S[C.cap[i]], ep(C.ch[i], C.cp[i]), ep(C.sh[i], C.sp[i]),
          S[C.type[i]], S[C.rby[i]] && "rst " + S[C.rby[i]], S[C.rph[i]],
          S[C.tw[i]] && "time_wait", C.stuck[i] ? "stuck" : "", S[C.notes[i]]].join(" ").toLowerCase();
      }
    }
    return text;
  }

  function apply() {
    const words = $("q").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const type = $("type").value;
    const stuck = $("stuck").checked;
    const tx = words.length ? searchText() : null;
    const out = new Int32Array(N);
    let n = 0;
    for (let k = 0; k < N; k++) {
      const i = order[k];
      if (type && S[C.type[i]] !== type) continue;
      if (stuck && !C.stuck[i]) continue;
      if (tx && !words.every((w) => tx[i].includes(w))) continue;
      out[n++] = i;
    }
    view = out.subarray(0, n);
    page = 0;
    draw();
  }

  function sortBy(col) {
    sortDir = col === sortCol ? -sortDir : 1;
    sortCol = col;
    const val = columns[col].val;
    const keys = new Array(N);
    for (let i = 0; i < N; i++) keys[i] = val(i);
    const dir = sortDir;
    order = Int32Array.from(order).sort((a, b) =>
      keys[a] < keys[b] ? -dir : keys[a] > keys[b] ? dir : a - b);
    apply();
  }

  function draw() {
    const pages = Math.max(1, Math.ceil(view.length / PAGE));
    page = Math.min(page, pages - 1);
    const rows = [];
    const end = Math.min(view.length, (page + 1) * PAGE);
    for (let k = page * PAGE; k < end; k++) {
      const i = view[k];
      rows.push("<tr>" + columns.map((c) => (c.num ? '<td class="num">' : "<td>") + c.show(i) + "</td>").join("") + "</tr>");
    }
    body.innerHTML = rows.join("");
    $("count").textContent = view.length.toLocaleString("en") + " of " + N.toLocaleString("en") + " shown";
    $("pageinfo").textContent = "page " + (page + 1) + " of " + pages;
    $("prev").disabled = page === 0;
    $("next").disabled = page >= pages - 1;
    for (let c = 0; c < head.cells.length; c++) {
      if (!columns[c].nosort) {
        head.cells[c].setAttribute("aria-sort", c === sortCol ? (sortDir > 0 ? "ascending" : "descending") : "none");
      }
    }
  }

  head.innerHTML = columns.map((c) => '<th scope="col" class="' + (c.num ? "num" : "") + (c.nosort ? " nosort" : "") +
    '">' + esc(c.label) + "</th>").join("");
  for (let c = 0; c < head.cells.length; c++) {
    if (!columns[c].nosort) head.cells[c].addEventListener("click", () => sortBy(c));
  }
  let timer = 0;
  $("q").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(apply, 120); });
  $("type").addEventListener("change", apply);
  $("stuck").addEventListener("change", apply);
  $("prev").addEventListener("click", () => { page--; draw(); });
  $("next").addEventListener("click", () => { page++; draw(); });

  function copied(button, ok) {
    button.textContent = ok ? "copied" : "select it";
    setTimeout(() => { button.textContent = "copy"; }, 1200);
  }
  function fallbackCopy(button, value) {
    const area = document.createElement("textarea");
    area.value = value;
    document.body.appendChild(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    area.remove();
    copied(button, ok);
  }
  document.addEventListener("click", (ev) => {
    const button = ev.target.closest("button.copy");
    if (!button) return;
    const value = button.dataset.copy;
    // A page opened from a file may not be allowed the asynchronous clipboard.
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(value).then(() => copied(button, true), () => fallbackCopy(button, value));
    } else {
      fallbackCopy(button, value);
    }
  });
  apply();
})();
