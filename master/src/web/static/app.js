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
    body.setAttribute("data-live-updates", String(Number(body.getAttribute("data-live-updates") || 0) + 1));
  });
})();
