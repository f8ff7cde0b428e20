// The job page: appends each new event of the job to its log, live, over /ws/jobs/<pk>.
(function () {
  "use strict";
  var log = document.getElementById("job-log");
  if (!log) return;
  var status = document.getElementById("job-status");
  var progress = document.getElementById("job-progress");
  var bars = {};
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";
  var ws = new WebSocket(scheme + location.host + "/ws/jobs/" + log.dataset.job);

  function showProgress(e) {
    if (!e.id || !e.total) return;
    var row = bars[e.id];
    if (!row) {
      row = document.createElement("div");
      row.className = "row";
      row.innerHTML = "<code></code><progress max='1' value='0'></progress><span></span>";
      row.firstChild.textContent = e.id;
      progress.appendChild(row);
      bars[e.id] = row;
    }
    row.children[1].max = e.total;
    row.children[1].value = e.current || 0;
    row.children[2].textContent = e.status || "";
  }

  ws.onmessage = function (msg) {
    var e = JSON.parse(msg.data);
    if (e.type === "job.progress") { showProgress(e); return; }
    if (e.type === "job.state") {
      status.textContent = e.status;
      status.className = "badge " + e.status;
    }
    var line = new Date().toTimeString().slice(0, 8) + " " + (e.message || e.status || "") + (e.id ? " [" + e.id + "]" : "") + "\n";
    log.appendChild(document.createTextNode(line));
    log.scrollTop = log.scrollHeight;
  };
})();
