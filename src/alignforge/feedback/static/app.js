// alignforge feedback: keyboard shortcuts and double-submit protection for the task pages.
// Everything here is a convenience: the forms work without JavaScript, and the server's
// idempotency key is what really stops a double submission from storing two labels.
(function () {
  "use strict";

  function typing(el) {
    return el && (el.tagName === "INPUT" && !/^(radio|checkbox)$/.test(el.type) ||
                  el.tagName === "TEXTAREA" || el.tagName === "SELECT");
  }

  document.addEventListener("DOMContentLoaded", function () {
    // Disable submit buttons once a form is sent (a double click sends one request).
    document.querySelectorAll("form").forEach(function (form) {
      form.addEventListener("submit", function () {
        setTimeout(function () {
          form.querySelectorAll("button[type=submit]").forEach(function (b) { b.disabled = true; });
        }, 0);
      });
    });

    var form = document.getElementById("label-form");
    if (!form) return;
    var task = form.dataset.task;
    var k = parseInt(form.dataset.k, 10);
    var order = [];  // ranking: response indices pressed so far, best first

    function setRanks() {
      for (var i = 0; i < k; i++) {
        var pos = order.indexOf(i);
        document.getElementById("rank-" + i).value = pos >= 0 ? String(pos + 1) : "";
      }
    }

    document.addEventListener("keydown", function (ev) {
      var el = document.activeElement;
      if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(el)) return;
      if (ev.key === "Enter" && el && (el.tagName === "A" || el.tagName === "BUTTON")) return;  // their own Enter
      var key = ev.key.toLowerCase();
      if (key === "enter") {
        ev.preventDefault();
        if (form.reportValidity()) form.requestSubmit();
        return;
      }
      if (task === "ranking") {
        if (key === "0" || key === "backspace") { order = []; setRanks(); ev.preventDefault(); return; }
        var n = parseInt(key, 10);
        if (n >= 1 && n <= k && order.indexOf(n - 1) < 0) { order.push(n - 1); setRanks(); ev.preventDefault(); }
        return;
      }
      var target = form.querySelector('input[data-key="' + key + '"]');
      if (!target) return;
      ev.preventDefault();
      if (target.type === "checkbox") target.checked = !target.checked; else target.checked = true;
    });
  });
})();
