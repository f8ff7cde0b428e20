// The job page: appends each new event of the job to its log, live, over /ws/jobs/<pk>, with a
// progress bar per layer; when the job ends the page reloads to show its result.
(function () {
  "use strict";
  var log = document.getElementById("job-log");
  if (!log) return;
  var status = document.getElementById("job-status");
  var progress = document.getElementById("job-progress");
  var bars = {};
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";
  var lastSeq = parseInt(log.dataset.after || "0", 10);
  var ended = ["succeeded", "failed", "cancelled"];
  var ws = new WebSocket(scheme + location.host + "/ws/jobs/" + log.dataset.job + "?after=" + lastSeq);

  function showProgress(e) {
    var row = bars[e.id];
    if (!row) {
      row = document.createElement("div");
      row.className = "row";
      row.dataset.layer = e.id;
      row.innerHTML = "<code></code><progress max='1' value='0'></progress><span></span>";
      row.firstChild.textContent = e.id;
      progress.appendChild(row);
      bars[e.id] = row;
    }
    var now = Date.now(), current = e.current || 0;
    if (row.lastTime && now > row.lastTime) {
      // Bytes per second, smoothed over the last updates.
      var rate = (current - row.lastBytes) * 1000 / (now - row.lastTime);
      row.rate = row.rate ? 0.7 * row.rate + 0.3 * rate : rate;
    }
    row.lastTime = now; row.lastBytes = current;
    row.children[1].max = e.total;
    row.children[1].value = current;
    var speed = row.rate ? " " + (row.rate / 1e6).toFixed(1) + " MB/s" : "";
    row.children[2].textContent = (e.status || "") + " " + (e.progress || "").replace(/^\[[^\]]*\]\s*/, "") + speed;
  }

  ws.onmessage = function (msg) {
    var e = JSON.parse(msg.data);
    if (e.type === "job.progress") { showProgress(e); return; }
    if (e.type === "job.state") {
      status.textContent = e.status.charAt(0).toUpperCase() + e.status.slice(1);
      status.className = "badge " + e.status;
      // Reload once to show the result, unless the page already shows the ended job.
      if (ended.indexOf(e.status) >= 0 && ended.indexOf(log.dataset.status) < 0) setTimeout(function () { location.reload(); }, 300);
      return;
    }
    if (e.seq) { if (e.seq <= lastSeq) return; lastSeq = e.seq; }
    var text = e.error || e.message || e.status || "";
    var line = new Date().toTimeString().slice(0, 8) + " " + text + (e.id ? " [" + e.id + "]" : "") + "\n";
    log.appendChild(document.createTextNode(line));
    log.scrollTop = log.scrollHeight;
  };
})();
