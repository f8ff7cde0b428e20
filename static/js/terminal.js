// The browser terminal: xterm.js <-> /ws/containers/<id>/(exec|attach), binary frames both ways,
// JSON text frames for control (resize, session, exit). The exec session id is kept in
// sessionStorage so a reload or a reopened tab rejoins the same shell.
(function () {
  "use strict";
  var box = document.getElementById("terminal");
  if (!box) return;
  var status = document.getElementById("term-status");
  var params = new URLSearchParams(location.search);
  var mode = box.dataset.mode;
  var storeKey = "berth-exec-" + box.dataset.container + "-" + (params.get("cmd") || "");
  var term = new Terminal({ cursorBlink: true, scrollback: 5000, fontSize: 14 });
  var fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  window.berthTerminal = term;  // for tests and the console

  var query = new URLSearchParams({ rows: term.rows, cols: term.cols });
  ["cmd", "user", "workdir", "readonly"].forEach(function (k) { if (params.get(k)) query.set(k, params.get(k)); });
  if (mode === "exec" && sessionStorage.getItem(storeKey)) query.set("session", sessionStorage.getItem(storeKey));
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";
  var ws = new WebSocket(scheme + location.host + "/ws/containers/" + box.dataset.container + "/" + mode + "?" + query);
  ws.binaryType = "arraybuffer";
  var encoder = new TextEncoder();

  function setStatus(text, cls) { status.textContent = text; status.className = "badge " + cls; }

  ws.onopen = function () { setStatus("connected", "ok"); term.focus(); };
  // Flow control: tell the server how much xterm has rendered, every 64 KiB; it keeps at most 1 MiB
  // in flight, so a flood never freezes the page nor piles up in the server.
  var rendered = 0, reported = 0;
  ws.onmessage = function (msg) {
    if (typeof msg.data !== "string") {
      // xterm decodes UTF-8 itself and keeps a character split across two frames whole.
      var chunk = new Uint8Array(msg.data);
      term.write(chunk, function () {
        rendered += chunk.length;
        if (rendered - reported >= 65536 && ws.readyState === WebSocket.OPEN) {
          reported = rendered;
          ws.send(JSON.stringify({ type: "ack", bytes: rendered }));
        }
      });
      return;
    }
    var e = JSON.parse(msg.data);
    if (e.type === "session" && e.kind === "exec") sessionStorage.setItem(storeKey, e.id);
    if (e.type === "exit") { sessionStorage.removeItem(storeKey); setStatus("exited (" + e.code + ")", "cancelled"); }
    if (e.type === "detached") setStatus("detached", "cancelled");
    if (e.type === "error") { term.write("\r\n" + e.message + "\r\n"); setStatus("error", "bad"); }
  };
  ws.onclose = function () { if (status.textContent === "connected") setStatus("disconnected", "bad"); };

  // Keystrokes and pastes: UTF-8, in frames of at most 32 KiB so a 1 MB paste never blocks the page.
  term.onData(function (data) {
    if (ws.readyState !== WebSocket.OPEN) return;
    var bytes = encoder.encode(data);
    for (var i = 0; i < bytes.length; i += 32768) ws.send(bytes.subarray(i, i + 32768));
  });
  var resizeTimer = null;
  term.onResize(function (size) {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "resize", rows: size.rows, cols: size.cols }));
    }, 60);
  });
  window.addEventListener("resize", function () { fit.fit(); });
})();
