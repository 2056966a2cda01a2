// Live dashboard: listen on the farm's own /ws (every team's events for admins, the team's
// otherwise) and, when something happens, re-read this page and swap in its main section.
// Re-reads are coalesced (at most one in flight, one every 300 ms), so a burst of progress
// events costs one request; forms being typed in are left alone.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var dot = document.getElementById("live");
  if (!main) return;
  var pending = false, inFlight = false, last = 0, retry = 500;
  var changing = {status: 1, execution_start: 1, execution_success: 1, execution_error: 1,
                  execution_interrupted: 1, execution_cached: 1, executing: 1};

  function refresh() {
    if (inFlight) { pending = true; return; }
    var wait = 300 - (Date.now() - last);
    if (wait > 0) { if (!pending) { pending = true; setTimeout(function () { pending = false; refresh(); }, wait); } return; }
    var active = document.activeElement;
    if (active && main.contains(active) && (active.tagName === "INPUT" || active.tagName === "SELECT")) {
      setTimeout(refresh, 1000); return;
    }
    inFlight = true; last = Date.now();
    fetch(location.href, {credentials: "same-origin", headers: {"X-Dashboard-Refresh": "1"}})
      .then(function (answer) { return answer.ok ? answer.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("main");
        if (next) {
          var checked = Array.prototype.map.call(main.querySelectorAll("input[type=checkbox]:checked"),
                                                 function (box) { return box.value; });
          main.innerHTML = next.innerHTML;
          checked.forEach(function (value) {
            var box = main.querySelector("input[type=checkbox][value='" + value + "']");
            if (box) box.checked = true;
          });
          document.dispatchEvent(new CustomEvent("farm:refreshed"));
        }
      })
      .catch(function () {})
      .then(function () { inFlight = false; if (pending) { pending = false; refresh(); } });
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    var everything = document.body.getAttribute("data-live") === "all" ? "&subscribe=all" : "";
    var socket = new WebSocket(scheme + "//" + location.host + "/ws?clientId=dashboard-" +
                               Math.random().toString(36).slice(2) + everything);
    socket.onopen = function () { retry = 500; if (dot) dot.classList.add("on"); };
    socket.onmessage = function (event) {
      if (typeof event.data !== "string") return;
      try { if (changing[JSON.parse(event.data).type]) refresh(); } catch (e) { /* not ours */ }
    };
    socket.onclose = function () {
      if (dot) dot.classList.remove("on");
      setTimeout(connect, retry); retry = Math.min(retry * 2, 10000);
    };
  }
  connect();
})();
