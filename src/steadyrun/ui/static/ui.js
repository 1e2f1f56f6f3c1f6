// Live updates through server-sent events; no framework.
(function () {
  "use strict";
  var flash = new URLSearchParams(location.search).get("msg");
  if (flash) {
    var p = document.createElement("p");
    p.className = "flash"; p.id = "flash"; p.textContent = flash;
    var main = document.querySelector("main"); main.insertBefore(p, main.firstChild);
  }
  function setBadge(el, state) {
    if (!el) return;
    el.textContent = state; el.className = "badge s-" + state;
  }
  // Redraws the parts that are not per-task cells (timeline, graph, buttons), at most
  // every two seconds, from a fresh copy of the page: no reload, no scroll jump.
  var pending = null, again = false;
  function refreshParts() {
    if (pending) { again = true; return; }
    pending = setTimeout(function () {
      fetch(location.href, {credentials: "same-origin"}).then(function (r) {
        return r.text();
      }).then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll(".refresh[id]").forEach(function (el) {
          var next = fresh.getElementById(el.id);
          if (next) el.innerHTML = next.innerHTML;
        });
      }).finally(function () {
        pending = null;
        if (again) { again = false; refreshParts(); }
      });
    }, 1000);
  }
  var table = document.getElementById("tasks");
  if (table && table.dataset.states) {
    var es = new EventSource(table.dataset.states);
    es.onmessage = function (ev) {
      var snap = JSON.parse(ev.data);
      refreshParts();
      setBadge(document.getElementById("exp-state"), snap.state);
      Object.keys(snap.tasks).forEach(function (name) {
        var row = table.querySelector('tr[data-task="' + CSS.escape(name) + '"]');
        if (!row) return;
        var t = snap.tasks[name];
        setBadge(row.querySelector(".state .badge"), t.state);
        row.querySelector(".attempts").textContent = t.attempts;
        row.querySelector(".kind").textContent = t.kind;
        row.querySelector(".duration").textContent = t.duration;
        row.querySelector(".host").textContent = t.host;
        if (["pending", "running", "retrying"].indexOf(t.state) < 0) {
          var act = row.querySelector(".act"); if (act) act.textContent = "";
        }
      });
    };
    es.addEventListener("end", function () { es.close(); });
  }
  var log = document.getElementById("log");
  if (log && log.dataset.src) {
    var ls = new EventSource(log.dataset.src);
    var follow = function () { log.scrollTop = log.scrollHeight; };
    ls.onmessage = function (ev) { log.textContent += JSON.parse(ev.data); follow(); };
    ls.addEventListener("reset", function (ev) { log.textContent = JSON.parse(ev.data); follow(); });
    ls.addEventListener("end", function () { ls.close(); log.dataset.done = "1"; });
  }
})();
