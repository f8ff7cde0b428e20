// The build page: a folder chosen with the folder picker is packed into a tar here, in the browser,
// and sent as the context file (the server never sees loose files).
(function () {
  "use strict";
  var folder = document.getElementById("context-folder");
  var form = document.getElementById("build-form");
  if (!folder || !form) return;

  function header(name, size, mtime) {
    var block = new Uint8Array(512), enc = new TextEncoder();
    function put(str, offset, length) { block.set(enc.encode(str).subarray(0, length), offset); }
    function octal(num, length) { return num.toString(8).padStart(length - 1, "0") + "\0"; }
    var prefix = "";
    if (name.length > 100) { var cut = name.lastIndexOf("/", 155); prefix = name.slice(0, cut); name = name.slice(cut + 1); }
    put(name, 0, 100); put(octal(0o644, 8), 100, 8); put(octal(0, 8), 108, 8); put(octal(0, 8), 116, 8);
    put(octal(size, 12), 124, 12); put(octal(mtime, 12), 136, 12); put("        ", 148, 8); put("0", 156, 1);
    put("ustar\0", 257, 6); put("00", 263, 2); put(prefix, 345, 155);
    var sum = 0; for (var i = 0; i < 512; i++) sum += block[i];
    put(octal(sum, 7) + " ", 148, 8);
    return block;
  }

  form.addEventListener("submit", function (event) {
    if (!folder.files.length) return;
    event.preventDefault();
    var files = Array.prototype.slice.call(folder.files);
    Promise.all(files.map(function (f) { return f.arrayBuffer(); })).then(function (contents) {
      var parts = [];
      files.forEach(function (f, i) {
        // Drop the folder's own name: the context is its content.
        var name = f.webkitRelativePath.split("/").slice(1).join("/");
        var data = new Uint8Array(contents[i]);
        parts.push(header(name, data.length, Math.floor(f.lastModified / 1000)), data);
        var pad = (512 - data.length % 512) % 512;
        if (pad) parts.push(new Uint8Array(pad));
      });
      parts.push(new Uint8Array(1024));
      var body = new FormData(form);
      body.delete("context");
      body.append("context", new Blob(parts, { type: "application/x-tar" }), "context.tar");
      return fetch(form.action || location.href, { method: "POST", body: body, credentials: "same-origin" });
    }).then(function (response) { location.href = response.url; });
  });
})();
