// Small behaviours every page shares. No inline scripts or on* attributes anywhere (the
// CSP allows script-src 'self' only): pages opt in with data- attributes.
(function () {
  "use strict";

  // <form data-confirm="Really?">: ask before submitting.
  document.addEventListener("submit", function (evt) {
    var form = evt.target;
    var submitter = evt.submitter;
    var question = (submitter && submitter.dataset.confirm) || form.dataset.confirm;
    if (question && !window.confirm(question)) {
      evt.preventDefault();
    }
  });

  // Pollers ([data-poll]) skip their turn while the tab is hidden: nobody is looking.
  document.addEventListener("htmx:beforeRequest", function (evt) {
    if (document.hidden && evt.detail.elt.closest("[data-poll]")) {
      evt.preventDefault();
    }
  });

  // A form with data-swap-errors shows its 4xx/5xx answers too (htmx swaps only 2xx by
  // default): those answers are the error messages the person needs to read.
  document.addEventListener("htmx:beforeSwap", function (evt) {
    // The event fires on the target; the requesting element is in requestConfig.
    var source = (evt.detail.requestConfig && evt.detail.requestConfig.elt) || evt.detail.elt;
    if (evt.detail.xhr.status >= 400 && source && source.closest("[data-swap-errors]")) {
      evt.detail.shouldSwap = true;
      evt.detail.isError = false;
    }
  });

  // <button data-copy="ID">: copy the text of #ID (the new API token).
  document.addEventListener("click", function (evt) {
    var button = evt.target.closest("[data-copy]");
    if (!button) return;
    var source = document.getElementById(button.dataset.copy);
    if (!source || !navigator.clipboard) return;
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      button.textContent = "Copied";
    });
  });
})();
