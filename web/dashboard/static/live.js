// Live dashboard: listen on the farm's own /ws (every team's events for admins, the team's
// otherwise) and, when something happens, re-read this page and swap in its main section.
// A prompt starting or ending re-reads at once (or right after a re-read in flight); busier
// events (status, node and step changes) are coalesced to one re-read every 300 ms. Forms being
// typed in are left alone, and ticked boxes stay ticked.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var dot = document.getElementById("live");
  if (!main) return;
  var inFlight = false, again = false, timer = null, last = 0, retry = 500;
  var now = {execution_start: 1, execution_success: 1, execution_error: 1, execution_interrupted: 1};
  var soon = {status: 1, executing: 1, progress: 1};

  function typing() {
    var active = document.activeElement;
    return active && main.contains(active) && (active.tagName === "INPUT" || active.tagName === "SELECT");
  }

  function reread() {
    if (inFlight) { again = true; return; }
    if (typing()) { schedule(1000); return; }
    inFlight = true; last = Date.now();
    fetch(location.href, {credentials: "same-origin", headers: {"X-Dashboard-Refresh": "1"}})
      .then(function (answer) { return answer.ok ? answer.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("main");
        if (!next) return;
        var ticked = Array.prototype.map.call(main.querySelectorAll("input[type=checkbox]:checked"),
                                              function (box) { return box.value; });
        main.innerHTML = next.innerHTML;
        ticked.forEach(function (value) {
          var box = main.querySelector("input[type=checkbox][value='" + value + "']");
          if (box) box.checked = true;
        });
        document.dispatchEvent(new CustomEvent("farm:refreshed"));
      })
      .catch(function () {})
      .then(function () { inFlight = false; if (again) { again = false; reread(); } });
  }

  function schedule(delay) {
    if (timer === null) timer = setTimeout(function () { timer = null; reread(); }, delay);
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    var everything = document.body.getAttribute("data-live") === "all" ? "&subscribe=all" : "";
    var socket = new WebSocket(scheme + "//" + location.host + "/ws?clientId=dashboard-" +
                               Math.random().toString(36).slice(2) + everything);
    socket.onopen = function () { retry = 500; if (dot) dot.classList.add("on"); };
    socket.onmessage = function (event) {
      if (typeof event.data !== "string") return;
      var type;
      try { type = JSON.parse(event.data).type; } catch (e) { return; }
      if (now[type]) reread();
      else if (soon[type]) schedule(Math.max(0, 300 - (Date.now() - last)));
    };
    socket.onclose = function () {
      if (dot) dot.classList.remove("on");
      setTimeout(connect, retry); retry = Math.min(retry * 2, 10000);
    };
  }
  connect();
})();
