// learnloop review: keyboard shortcuts, batch selection and a live diff. No framework, no build.
(function () {
  "use strict";

  function typing(el) {
    return el && (el.tagName === "TEXTAREA" || el.tagName === "INPUT" || el.tagName === "SELECT" ||
                  el.isContentEditable);
  }

  function toggleHelp() {
    var help = document.getElementById("help");
    if (help) help.hidden = !help.hidden;
  }

  // ---- word diff (same tokenisation as service/diffs.py) --------------------------------------
  function tokens(s) { return s.match(/\s+|[^\s]+/g) || []; }
  function esc(s) {
    return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }
  function diffHtml(a, b) {
    var x = tokens(a), y = tokens(b), n = x.length, m = y.length;
    if (n * m > 4000000) return null; // too big to diff on every keystroke: the server diff stays
    var L = new Array(n + 1), i, j;
    for (i = 0; i <= n; i++) L[i] = new Uint32Array(m + 1);
    for (i = n - 1; i >= 0; i--)
      for (j = m - 1; j >= 0; j--)
        L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
    var ops = [];
    i = 0; j = 0;
    while (i < n && j < m) {
      if (x[i] === y[j]) { ops.push(["=", x[i]]); i++; j++; }
      else if (L[i + 1][j] >= L[i][j + 1]) { ops.push(["-", x[i++]]); }
      else { ops.push(["+", y[j++]]); }
    }
    while (i < n) ops.push(["-", x[i++]]);
    while (j < m) ops.push(["+", y[j++]]);
    // same hunks as service/diffs.py merge_changes: whitespace between changes joins them
    var out = [], del = "", ins = "";
    function flush() {
      if (del) out.push('<del class="d-del">' + esc(del) + "</del>");
      if (ins) out.push('<ins class="d-ins">' + esc(ins) + "</ins>");
      del = ""; ins = "";
    }
    for (var k = 0; k < ops.length; k++) {
      var op = ops[k][0], t = ops[k][1];
      if (op === "=") {
        if ((del || ins) && k + 1 < ops.length && ops[k + 1][0] !== "=" && /^\s+$/.test(t)) {
          del += t; ins += t; continue;
        }
        flush(); out.push(esc(t));
      } else if (op === "-") del += t; else ins += t;
    }
    flush();
    return out.join("");
  }

  function setupItemPage() {
    var form = document.getElementById("decide-form");
    if (!form) return;
    var area = document.getElementById("final_response");
    var diff = document.getElementById("diff");
    var orig = document.getElementById("original-text");
    if (area && diff && orig && !area.readOnly) {
      var original = JSON.parse(orig.textContent), timer = null;
      area.addEventListener("input", function () {
        clearTimeout(timer);
        timer = setTimeout(function () {
          var html = diffHtml(original, area.value);
          if (html !== null) diff.innerHTML = html;
        }, 150);
      });
      area.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
          ev.preventDefault();
          var edit = form.querySelector('button[value="edit"]');
          if (edit) edit.click();
        }
      });
    }
    document.addEventListener("keydown", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
      if (typing(document.activeElement)) {
        if (ev.key === "Escape") document.activeElement.blur();
        return;
      }
      var btn = null;
      if (ev.key === "a") btn = form.querySelector('button[data-key="a"]');
      else if (ev.key === "r") btn = form.querySelector('button[data-key="r"]');
      else if (ev.key === "e" && area && !area.readOnly) { ev.preventDefault(); area.focus(); return; }
      else if (ev.key === "n") { var note = document.getElementById("note"); if (note) { ev.preventDefault(); note.focus(); } return; }
      else if (ev.key === "j" || ev.key === "k") {
        var link = document.querySelector(ev.key === "j" ? 'a[data-nav="next"]' : 'a[data-nav="prev"]');
        if (link) window.location.href = link.href;
        return;
      }
      else if (ev.key === "?") { toggleHelp(); return; }
      if (btn) { ev.preventDefault(); btn.click(); }
    });
  }

  function setupQueuePage() {
    var table = document.querySelector("table.queue");
    var counter = document.querySelector("[data-selected-count]");
    // disabled boxes ("no error found" items, decided one by one) are never selected
    var boxes = Array.prototype.slice.call(document.querySelectorAll('input[name="selected"]:not(:disabled)'));
    function count() {
      if (counter) counter.textContent = boxes.filter(function (b) { return b.checked; }).length + " selected";
    }
    boxes.forEach(function (b) { b.addEventListener("change", count); });
    var all = document.querySelector("[data-select-all]");
    if (all) all.addEventListener("change", function () {
      boxes.forEach(function (b) { b.checked = all.checked; }); count();
    });
    if (!table) return;
    var rows = Array.prototype.slice.call(table.querySelectorAll("tbody tr")), cur = -1;
    function move(d) {
      if (!rows.length) return;
      if (cur >= 0) rows[cur].classList.remove("cursor");
      cur = Math.max(0, Math.min(rows.length - 1, cur + d));
      rows[cur].classList.add("cursor");
      rows[cur].scrollIntoView({ block: "nearest" });
    }
    document.addEventListener("keydown", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
      if (typing(document.activeElement)) {
        if (ev.key === "Escape") document.activeElement.blur();
        return;
      }
      if (ev.key === "j") move(1);
      else if (ev.key === "k") move(-1);
      else if (ev.key === "x" && cur >= 0) {
        var b = rows[cur].querySelector('input[name="selected"]:not(:disabled)');
        if (b) { b.checked = !b.checked; count(); }
      }
      else if ((ev.key === "o" || ev.key === "Enter") && cur >= 0) window.location.href = rows[cur].dataset.href;
      else if (ev.key === "?") toggleHelp();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-help-toggle]"), function (b) {
      b.addEventListener("click", toggleHelp);
    });
    setupItemPage();
    setupQueuePage();
    if (!document.getElementById("decide-form") && !document.querySelector("table.queue")) {
      document.addEventListener("keydown", function (ev) {
        if (ev.key === "?" && !typing(document.activeElement)) toggleHelp();
      });
    }
  });
})();
