// Troupe dashboard live parts: one EventSource on /api/v1/stream. Each
// `fleet` event carries the overview counts and every node's status; the
// elements marked data-count, data-node-status, data-node-run and
// data-node-checkin are updated in place, without a reload.
(function () {
  "use strict";
  if (!window.EventSource) return;
  var body = document.body;
  function get(obj, path) {
    var parts = path.split(".");
    // Names may hold dots (environments, roles): try the longest keys first.
    for (var i = 0; i < parts.length && obj !== undefined && obj !== null; i++) {
      var found = false;
      for (var j = parts.length; j > i; j--) {
        var key = parts.slice(i, j).join(".");
        if (Object.prototype.hasOwnProperty.call(obj, key)) {
          obj = obj[key]; i = j - 1; found = true; break;
        }
      }
      if (!found) return undefined;
    }
    return obj;
  }
  function each(sel, fn) { Array.prototype.forEach.call(document.querySelectorAll(sel), fn); }
  // A release's log table: when the stream says it has more records,
  // fetch them from the API and append the new rows.
  function refreshLog(table, deploys) {
    var id = table.getAttribute("data-deploy-log");
    var r = deploys[id];
    if (!r) return;
    if (table.getAttribute("data-seen") === JSON.stringify(r)) return;
    table.setAttribute("data-seen", JSON.stringify(r));
    fetch("/api/v1/deploys/" + encodeURIComponent(id)).then(function (res) {
      return res.ok ? res.json() : null;
    }).then(function (log) {
      if (!log) return;
      var have = Number(table.getAttribute("data-steps"));
      var tbody = table.tBodies[0];
      var ended = document.querySelector("[data-deploy-ended]");
      if (ended && log.ended) ended.textContent = log.ended;
      for (var i = have; i < log.entries.length; i++) {
        var e = log.entries[i], x = e.record, tr = document.createElement("tr");
        tr.className = "rec-" + x.record + (x.result && x.result !== "ok" ? " res-failed" : "");
        var detail = [x.step ? x.step + (x.attempt > 1 ? " (attempt " + x.attempt + ")" : "") + ": " + (x.result || "") +
                      (typeof x.duration_ms === "number" ? ", " + x.duration_ms + " ms" : "") : "", x.message, x.error,
                      x.reason, x.status, x.failed && x.failed.length ? "failed: " + x.failed.join(", ") : ""]
          .filter(function (s) { return s; }).join(" ");
        [e.seq, x.time || x.started || e.received, x.record, x.host || "",
         (x.package || "") + (x.version ? " " + x.version : ""), detail].forEach(function (v) {
          var td = document.createElement("td");
          td.textContent = v;
          tr.appendChild(td);
        });
        tbody.appendChild(tr);
      }
      table.setAttribute("data-steps", String(Math.max(have, log.entries.length)));
    });
  }
  var es = new EventSource("/api/v1/stream");
  es.onopen = function () { body.setAttribute("data-live", "connected"); };
  es.onerror = function () { body.setAttribute("data-live", "reconnecting"); };
  es.addEventListener("fleet", function (ev) {
    var d;
    try { d = JSON.parse(ev.data); } catch (e) { return; }
    each("[data-count]", function (el) {
      var v = get(d.overview, el.getAttribute("data-count"));
      if (v !== undefined && String(v) !== el.textContent) el.textContent = v;
    });
    each("[data-node-status]", function (el) {
      var n = d.nodes[el.getAttribute("data-node-status")];
      if (!n || el.textContent === n.status) return;
      el.textContent = n.status;
      el.className = "status " + n.status;
    });
    each("[data-node-run]", function (el) {
      var n = d.nodes[el.getAttribute("data-node-run")];
      if (!n || !n.run_id || n.run_id === el.getAttribute("data-initial")) return;
      el.textContent = "Last run: " + n.run_id + " (" + n.status + ", new since this page loaded: reload for its details)";
    });
    each("[data-node-checkin]", function (el) {
      var n = d.nodes[el.getAttribute("data-node-checkin")];
      if (n) el.textContent = n.last_checkin;
    });
    var deploys = d.deploys || {};
    each("[data-deploy-status]", function (el) {
      var r = deploys[el.getAttribute("data-deploy-status")];
      if (!r || el.textContent === r.status) return;
      el.textContent = r.status;
      el.className = "status " + r.status;
    });
    each("[data-deploy-completed]", function (el) {
      var r = deploys[el.getAttribute("data-deploy-completed")];
      if (r) el.textContent = r.completed;
    });
    each("[data-deploy-failed]", function (el) {
      var r = deploys[el.getAttribute("data-deploy-failed")];
      if (r) el.textContent = r.failed_hosts;
    });
    each("[data-deploy-progress]", function (el) {
      var r = deploys[el.getAttribute("data-deploy-progress")];
      if (r) { el.max = r.planned || 1; el.value = r.completed; }
    });
    each("[data-deploy-log]", function (table) { refreshLog(table, deploys); });
    body.setAttribute("data-live-updates", String(Number(body.getAttribute("data-live-updates") || 0) + 1));
  });
})();
