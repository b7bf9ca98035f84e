/* robust-frontier leaderboard: sortable, filterable tables. Plain JavaScript, no dependencies.
 *
 * Every <table class="sortable">: click a header to sort by that column, click again to reverse.
 * Cells carry the value to sort by in data-sort (numbers, or lower-case text); an empty data-sort
 * (a missing value) always sorts last. The sort is stable. A URL such as
 * index.html#sort=table-cifar10-Linf-8_255:inference_flops:asc opens a table already sorted.
 * The .controls block above a table filters its rows by text (any column, plus the row's
 * data-search: paper title, venue, architecture, extra data, training method), by source, by extra
 * data and to the frontier.
 */
(function () {
  "use strict";

  function cellValue(row, col, type) {
    var cell = row.cells[col];
    var raw = cell ? cell.getAttribute("data-sort") : null;
    if (raw === null) raw = cell ? cell.textContent.trim() : "";
    if (raw === "") return null;
    if (type === "num") {
      var v = parseFloat(raw);
      return isNaN(v) ? null : v;
    }
    return raw.toLowerCase();
  }

  function sortTable(table, col, dir) {
    var th = table.tHead.rows[0].cells[col];
    var type = th.getAttribute("data-type") || "text";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var keyed = rows.map(function (r, i) { return { row: r, v: cellValue(r, col, type), i: i }; });
    var sign = dir === "desc" ? -1 : 1;
    keyed.sort(function (a, b) {
      if (a.v === null && b.v === null) return a.i - b.i;
      if (a.v === null) return 1;
      if (b.v === null) return -1;
      if (a.v < b.v) return -sign;
      if (a.v > b.v) return sign;
      return a.i - b.i;
    });
    var frag = document.createDocumentFragment();
    keyed.forEach(function (k) { frag.appendChild(k.row); });
    body.appendChild(frag);
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === "desc" ? "descending" : "ascending");
    table.setAttribute("data-sorted", th.getAttribute("data-key") + ":" + dir);
  }

  function columnIndex(table, key) {
    var cells = table.tHead.rows[0].cells;
    for (var i = 0; i < cells.length; i++) if (cells[i].getAttribute("data-key") === key) return i;
    return -1;
  }

  function initSorting(table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.setAttribute("tabindex", "0");
      function activate() {
        var cur = th.getAttribute("aria-sort");
        var first = th.getAttribute("data-first") || "asc";
        var dir = cur === "ascending" ? "desc" : cur === "descending" ? "asc" : first;
        sortTable(table, col, dir);
      }
      th.addEventListener("click", activate);
      th.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); activate(); }
      });
    });
  }

  function initFilter(controls) {
    var table = document.getElementById(controls.getAttribute("data-table"));
    if (!table) return;
    var text = controls.querySelector(".filter-text");
    var source = controls.querySelector(".filter-source");
    var front = controls.querySelector(".filter-frontier");
    var extra = controls.querySelector(".filter-extra");
    var count = controls.querySelector(".count");
    function haystack(r) {
      return (r.textContent + " " + (r.getAttribute("data-search") || "")).toLowerCase();
    }
    function apply() {
      var q = (text.value || "").trim().toLowerCase();
      var src = source.value;
      var ex = extra ? extra.value : "";
      var onlyFront = front.checked;
      var shown = 0, rows = table.tBodies[0].rows;
      for (var i = 0; i < rows.length; i++) {
        var r = rows[i];
        var tags = (r.getAttribute("data-extra") || "").split(" ");
        var ok = (!q || haystack(r).indexOf(q) !== -1) &&
                 (!src || r.getAttribute("data-source") === src) &&
                 (!ex || tags.indexOf(ex) !== -1) &&
                 (!onlyFront || r.getAttribute("data-frontier") === "1");
        r.hidden = !ok;
        if (ok) shown++;
      }
      count.textContent = shown + " of " + rows.length + " shown";
    }
    text.addEventListener("input", apply);
    source.addEventListener("change", apply);
    front.addEventListener("change", apply);
    if (extra) extra.addEventListener("change", apply);
    apply();
  }

  function applyHash() {
    var m = /(?:^#|&)sort=([^:&]+):([^:&]+):(asc|desc)/.exec(window.location.hash || "");
    if (!m) return;
    var table = document.getElementById(decodeURIComponent(m[1]));
    if (!table || !table.tHead) return;
    var col = columnIndex(table, decodeURIComponent(m[2]));
    if (col >= 0) sortTable(table, col, m[3]);
  }

  function init() {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), initSorting);
    Array.prototype.forEach.call(document.querySelectorAll(".controls[data-table]"), initFilter);
    applyHash();
    document.body.setAttribute("data-ready", "1");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
