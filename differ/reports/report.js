// The HTML report's only script: expand/collapse, filter, hide suppressed, open deep links, and
// scroll long bodies to their first highlighted change.
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
  // A long body scrolls inside its box; bring its first highlighted change into view when a
  // signature opens, so the reviewer does not hunt for it.
  function revealChanges(details) {
    details.querySelectorAll("pre.body").forEach(function (pre) {
      var mark = pre.querySelector("mark");
      if (mark && pre.scrollHeight > pre.clientHeight) {
        pre.scrollTop = Math.max(0, mark.offsetTop - 24);
      }
    });
  }
  document.querySelectorAll("details.signature").forEach(function (d) {
    d.addEventListener("toggle", function () { if (d.open) { revealChanges(d); } });
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
