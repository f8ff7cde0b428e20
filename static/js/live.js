// Berth's live updates: one websocket per page to /ws/events. Pages listen for its messages with
//   document.addEventListener("berth:event", e => ... e.detail ...)
// The socket reconnects with backoff; the dot in the top bar and the dashboard show its state.
(function () {
  "use strict";
  var delay = 500;
  // A page that reloads itself on live events must not do it under a form being submitted: the
  // reload would cancel the submission's navigation.
  document.addEventListener("submit", function () { window.berthBusy = true; }, true);
  var dot = document.getElementById("ws-status");

  function setHealth(part, ok, detail) {
    var cell = document.querySelector('[data-health="' + part + '"]');
    if (!cell) return;
    cell.innerHTML = "";
    var badge = document.createElement("span");
    badge.className = "badge " + (ok ? "ok" : "bad");
    badge.textContent = ok ? "ok" : "down";
    cell.appendChild(badge);
    if (detail) {
      var small = document.createElement("small");
      small.textContent = " " + detail;
      cell.appendChild(small);
    }
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(scheme + location.host + "/ws/events");
    ws.onopen = function () {
      delay = 500;
      if (dot) { dot.className = "dot ok"; dot.title = "live updates connected"; }
      setHealth("websocket", true, "connected");
    };
    ws.onmessage = function (msg) {
      var event = JSON.parse(msg.data);
      if (event.type === "health") {
        setHealth("redis", event.health.redis.ok, event.health.redis.detail);
        setHealth("worker", event.health.worker.ok, event.health.worker.detail);
      }
      document.dispatchEvent(new CustomEvent("berth:event", { detail: event }));
    };
    ws.onclose = function () {
      if (dot) { dot.className = "dot bad"; dot.title = "live updates disconnected, reconnecting"; }
      setHealth("websocket", false, "disconnected, reconnecting");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }
  connect();
})();
