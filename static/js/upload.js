// Upload forms (import, load) show the upload's progress, then follow the server's redirect
// (the job page, where the import or load itself is followed live).
(function () {
  "use strict";
  document.querySelectorAll("#import-form, #load-form").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.XMLHttpRequest) return;
      event.preventDefault();
      window.berthBusy = true;  // the list page must not reload itself under the upload
      var bar = form.querySelector("progress") || form.appendChild(document.createElement("progress"));
      bar.max = 1; bar.value = 0; bar.className = "upload-progress";
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.upload.onprogress = function (e) { if (e.lengthComputable) { bar.max = e.total; bar.value = e.loaded; } };
      xhr.onload = function () { location.href = xhr.responseURL; };
      xhr.onerror = function () { bar.replaceWith(document.createTextNode("upload failed")); };
      xhr.send(new FormData(form));
    });
  });
})();
