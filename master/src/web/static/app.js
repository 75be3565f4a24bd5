// Troupe dashboard live parts: one EventSource on /api/v1/stream. Each
// `fleet` event carries the overview counts and every node's status; the
// elements marked data-count, data-node-status, data-node-run and
// data-node-checkin are updated in place, without a reload. Its
// `last_event` (the newest fleet event's number) brings the overview's
// "Recent events" table (data-fleet-events) up to date from
// /api/v1/fleet-events?since=N.
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
  // The recent fleet events table: rows newest first, at most N.
  function refreshEvents(table, last) {
    if (last === undefined || last === null) return;
    var have = Number(table.getAttribute("data-last-seq") || 0);
    if (last === have || table.getAttribute("data-fetching") === "yes") return;
    // A smaller number than shown: the master restarted, its events count from 1.
    var since = last > have ? have : 0;
    table.setAttribute("data-fetching", "yes");
    var keep = Number(table.getAttribute("data-fleet-events")) || 15;
    fetch("/api/v1/fleet-events?since=" + since + "&limit=" + keep).then(function (res) {
      return res.ok ? res.json() : null;
    }).then(function (r) {
      table.setAttribute("data-fetching", "no");
      if (!r || !r.events) return;
      var tbody = table.tBodies[0];
      var top = since;
      each("#" + table.id + " tr.none", function (tr) { tr.parentNode.removeChild(tr); });
      for (var i = r.events.length - 1; i >= 0; i--) {
        var e = r.events[i], tr = document.createElement("tr");
        var when = document.createElement("td"); when.textContent = e.time; tr.appendChild(when);
        var kind = document.createElement("td"), span = document.createElement("span");
        span.className = "status " + e.kind; span.textContent = e.kind;
        kind.appendChild(span); tr.appendChild(kind);
        var what = document.createElement("td");
        [["node", "/nodes/"], ["release", "/deploys/"]].forEach(function (p) {
          if (!e[p[0]]) return;
          var a = document.createElement("a");
          a.href = p[1] + encodeURIComponent(e[p[0]]); a.textContent = e[p[0]];
          what.appendChild(a); what.appendChild(document.createTextNode(": "));
        });
        what.appendChild(document.createTextNode(e.text));
        tr.appendChild(what);
        tr.setAttribute("data-seq", e.seq);
        tr.className = "live";
        tbody.insertBefore(tr, tbody.firstChild);
        if (e.seq > top) top = e.seq;
      }
      while (tbody.rows.length > keep) tbody.deleteRow(tbody.rows.length - 1);
      table.setAttribute("data-last-seq", String(top));
    }, function () { table.setAttribute("data-fetching", "no"); });
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
    each("[data-fleet-events]", function (table) { refreshEvents(table, d.last_event); });
    body.setAttribute("data-live-updates", String(Number(body.getAttribute("data-live-updates") || 0) + 1));
  });
})();
