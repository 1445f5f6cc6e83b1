// Draws every Plotly figure the server put on the page, and keeps live parts of pages fresh.
//
// A chart is <div class="chart" data-figure="ID"></div> plus {{ figure|json_script:"ID" }}.
// Figures are built by pure Python functions (frontend/charts.py); this file only draws them,
// so pages need no inline script (the CSP forbids it). Plotly itself comes from the plotly
// package's own bundle, served locally.
//
// A live part is any element with data-live-url (and data-live-interval, ms): its URL answers
// the element's fresh HTML (an htmx partial), which replaces it. Polling stops while the tab
// is hidden and resumes at once when it shows again; errors back off up to five minutes. A
// replacement without data-live-url ends polling (e.g. a rollout that finished).
//
// A part with data-live-follows="ID" is also refreshed at once when part #ID comes back with
// another data-live-signature (the live version or the rollout changed): the version table,
// the drift panels and the roll-out list then follow a rollout without waiting for their own
// interval. data-live-interval="off" makes a part follow only, never poll by itself.
(function () {
  "use strict";
  var MAX_BACKOFF_MS = 300000;

  function draw(root) {
    if (!window.Plotly) return;
    var scope = root && root.querySelectorAll ? root : document;
    var charts = Array.prototype.slice.call(scope.querySelectorAll("[data-figure]"));
    if (scope.matches && scope.matches("[data-figure]")) charts.push(scope);
    charts.forEach(function (el) {
      var source = document.getElementById(el.dataset.figure);
      if (!source) return;
      var fig = JSON.parse(source.textContent);
      window.Plotly.react(el, fig.data || [], fig.layout || {}, Object.assign({ responsive: true, displaylogo: false }, fig.config || {}));
      el.dataset.drawn = "true";
    });
  }

  var timers = new WeakMap();
  var failures = new WeakMap();

  function followsOnly(el) {
    return el.dataset.liveInterval === "off";
  }

  function intervalOf(el) {
    var ms = parseInt(el.dataset.liveInterval || "30000", 10);
    return isNaN(ms) || ms < 500 ? 30000 : ms;
  }

  function schedule(el, delay) {
    clearTimeout(timers.get(el));
    timers.set(el, setTimeout(function () { refresh(el); }, delay));
  }

  function replace(el, html) {
    var holder = document.createElement("template");
    holder.innerHTML = html.trim();
    var fresh = holder.content.firstElementChild;
    // Anything but the same part again (a login page after the session ended, an error
    // page) is an error, never swapped into the page.
    if (!fresh || fresh.id !== el.id) throw new Error("unexpected answer for #" + el.id);
    el.replaceWith(fresh);
    if (window.htmx) window.htmx.process(fresh);
    draw(fresh);
    return fresh;
  }

  function refresh(el) {
    if (!el.isConnected) return;
    if (document.hidden) { el.dataset.livePaused = "true"; return; }
    el.dataset.liveLoading = "true";
    // redirect "manual": a redirect (to the login page) is a failure to back off from.
    fetch(el.dataset.liveUrl, { headers: { "HX-Request": "true" }, credentials: "same-origin", redirect: "manual" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        var before = el.dataset.liveSignature;
        var fresh = replace(el, html);
        failures.delete(fresh);
        if (fresh.dataset.liveUrl) start(fresh);
        if (before !== undefined && before !== fresh.dataset.liveSignature) {
          document.querySelectorAll('[data-live-follows="' + fresh.id + '"]').forEach(refresh);
        }
      })
      .catch(function () {
        var n = (failures.get(el) || 0) + 1;
        failures.set(el, n);
        delete el.dataset.liveLoading;
        schedule(el, Math.min(MAX_BACKOFF_MS, intervalOf(el) * Math.pow(2, n)));
      });
  }

  function start(el) {
    if (timers.has(el) || followsOnly(el)) return;
    schedule(el, intervalOf(el));
  }

  function startAll(root) {
    var scope = root && root.querySelectorAll ? root : document;
    if (scope.matches && scope.matches("[data-live-url]")) start(scope);
    scope.querySelectorAll("[data-live-url]").forEach(start);
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) return;
    document.querySelectorAll("[data-live-url][data-live-paused]").forEach(function (el) {
      delete el.dataset.livePaused;
      refresh(el);
    });
  });
  document.addEventListener("DOMContentLoaded", function () { draw(document); startAll(document); });
  document.addEventListener("htmx:afterSwap", function (evt) { draw(evt.target); startAll(evt.target); });
  window.modelyardDrawCharts = draw;
})();
