// The HTML report's only script: expand/collapse, filter, hide suppressed, open deep links.
// It must never fetch anything (the page's CSP forbids it anyway) and never write untrusted text as HTML.
(function () {
  "use strict";
  var endpoints = Array.prototype.slice.call(document.querySelectorAll("details.endpoint"));
  function setAll(open) {
    document.querySelectorAll("details").forEach(function (d) { d.open = open; });
  }
  document.getElementById("expand-all").addEventListener("click", function () { setAll(true); });
  document.getElementById("collapse-all").addEventListener("click", function () { setAll(false); });
  document.getElementById("filter").addEventListener("input", function (event) {
    var needle = event.target.value.toLowerCase();
    endpoints.forEach(function (d) {
      d.hidden = needle !== "" && d.getAttribute("data-endpoint").toLowerCase().indexOf(needle) === -1;
    });
  });
  document.getElementById("hide-suppressed").addEventListener("change", function (event) {
    document.body.classList.toggle("hide-suppressed", event.target.checked);
  });
  function openTarget() {
    var id = decodeURIComponent(window.location.hash.slice(1));
    var node = id ? document.getElementById(id) : null;
    while (node) {
      if (node.tagName === "DETAILS") { node.open = true; }
      node = node.parentElement;
    }
  }
  window.addEventListener("hashchange", openTarget);
  openTarget();
})();
