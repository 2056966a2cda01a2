// The overview's charts (uPlot, served by the farm from static/vendor): the last hour's images per
// minute and queue wait p50 / p95, drawn from the JSON the page carries, again after each live
// re-read of the page.
(function () {
  "use strict";
  var charts = [];

  function draw() {
    var source = document.getElementById("series");
    if (!source || typeof uPlot === "undefined") return;
    var series = JSON.parse(source.textContent);
    charts.forEach(function (chart) { chart.destroy(); });
    charts = [];
    var width = Math.max(320, Math.min(640, (document.getElementById("main").clientWidth - 40) / 2));
    var images = document.getElementById("chart-images");
    var wait = document.getElementById("chart-wait");
    if (images) {
      charts.push(new uPlot({title: "Images per minute", width: width, height: 200,
        series: [{}, {label: "images", stroke: "#4caf50", fill: "rgba(76,175,80,.15)"}]},
        [series.minutes, series.images], images));
    }
    if (wait) {
      charts.push(new uPlot({title: "Queue wait (s)", width: width, height: 200,
        series: [{}, {label: "p50", stroke: "#4a7bd0", spanGaps: true}, {label: "p95", stroke: "#e53935", spanGaps: true}]},
        [series.wait_at, series.wait_p50, series.wait_p95], wait));
    }
  }
  draw();
  document.addEventListener("farm:refreshed", draw);
})();
