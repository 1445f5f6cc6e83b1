// Draws every Plotly figure the server put on the page. A chart is
//   <div class="chart" data-figure="ID"></div> plus {{ figure|json_script:"ID" }}
// Figures are built by pure Python functions (frontend/charts.py); this file only draws them,
// so pages need no inline script (the CSP forbids it). Plotly itself comes from the plotly
// package's own bundle, served locally.
(function () {
  "use strict";
  function draw(root) {
    if (!window.Plotly) return;
    root.querySelectorAll("[data-figure]").forEach(function (el) {
      var source = document.getElementById(el.dataset.figure);
      if (!source) return;
      var fig = JSON.parse(source.textContent);
      window.Plotly.react(el, fig.data || [], fig.layout || {}, Object.assign({ responsive: true, displaylogo: false }, fig.config || {}));
    });
  }
  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:afterSwap", function (evt) { draw(evt.target); });
  window.modelyardDrawCharts = draw;
})();
