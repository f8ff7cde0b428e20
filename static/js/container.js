// The container page: live logs, live stats charts, and a reload when this container's state changes.
(function () {
  "use strict";
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";

  var header = document.getElementById("container-header");
  document.addEventListener("berth:event", function (e) {
    if (!header || e.detail.type !== "container.state" || e.detail.id !== header.dataset.container) return;
    if (window.berthBusy) return;  // a form of this page is being submitted: its answer comes next
    if (e.detail.state === "removed") { location.href = "/containers/"; return; }
    var badge = document.getElementById("state");
    badge.textContent = e.detail.state + (e.detail.state === "exited" ? " (" + e.detail.exit_code + ")" : "");
    badge.className = "badge " + e.detail.state;
    // The actions depend on the state; the live tabs keep their stream instead of reloading.
    if (!document.getElementById("logs") && !document.getElementById("stats")) location.reload();
  });

  var logs = document.getElementById("logs");
  if (logs) {
    var ws = new WebSocket(scheme + location.host + "/ws/containers/" + logs.dataset.container + "/logs");
    ws.onmessage = function (msg) {
      var e = JSON.parse(msg.data);
      if (e.type === "log") {
        var span = document.createElement("span");
        if (e.stream === "stderr" || e.stream === "error") span.className = "error";
        span.textContent = e.text;
        logs.appendChild(span);
        // Keep the page light: at most 5000 lines in the view.
        while (logs.childNodes.length > 5000) logs.removeChild(logs.firstChild);
        logs.scrollTop = logs.scrollHeight;
      } else if (e.type === "log.end") {
        logs.dataset.ended = "1";
      }
    };
  }

  var stats = document.getElementById("stats");
  if (stats) {
    var cpu = [], mem = [], previous = null;
    function draw(canvas, values, max) {
      var ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      ctx.strokeStyle = "#1f6feb"; ctx.beginPath();
      values.forEach(function (v, i) {
        var x = canvas.width * i / 59, y = canvas.height - canvas.height * Math.min(v / (max || 1), 1);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
    var sws = new WebSocket(scheme + location.host + "/ws/containers/" + stats.dataset.container + "/stats");
    sws.onmessage = function (msg) {
      var e = JSON.parse(msg.data);
      if (e.type !== "stats") return;
      var s = e.stats, percent = 0;
      if (previous) {
        var dc = s.cpu_stats.cpu_usage.total_usage - previous.cpu_stats.cpu_usage.total_usage;
        var ds = (s.cpu_stats.system_cpu_usage || 0) - (previous.cpu_stats.system_cpu_usage || 0);
        percent = ds > 0 ? dc / ds * (s.cpu_stats.online_cpus || 1) * 100 : 0;
      }
      previous = s;
      var usage = (s.memory_stats && s.memory_stats.usage) || 0;
      cpu.push(percent); mem.push(usage);
      if (cpu.length > 60) { cpu.shift(); mem.shift(); }
      document.getElementById("cpu-value").textContent = percent.toFixed(1) + " %";
      document.getElementById("mem-value").textContent = (usage / 1048576).toFixed(1) + " MiB";
      document.getElementById("pids-value").textContent = (s.pids_stats && s.pids_stats.current) || 0;
      draw(document.getElementById("cpu-chart"), cpu, 100);
      draw(document.getElementById("mem-chart"), mem, Math.max.apply(null, mem) * 1.2);
    };
  }
})();
