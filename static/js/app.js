// Breakwater's one script: redraw Plotly charts when htmx swaps content in, show errors that
// htmx would otherwise swallow, keep focus where a keyboard user expects it, and copy commands.
(function () {
  function drawChart(el) {
    var source = document.getElementById(el.dataset.chart);
    if (!source) return;
    var fig = JSON.parse(source.textContent);
    el.dataset.drawn = "1";
    window.Plotly.react(el, fig.data, fig.layout || {}, Object.assign({ responsive: true, displaylogo: false }, fig.config || {}));
  }

  // Drawing six charts at once holds the page for a second: the first chart of a panel, and any
  // chart already drawn (a refresh redraws it in place), draw now; the rest as they come near the
  // viewport.
  var observer = "IntersectionObserver" in window ? new IntersectionObserver(function (entries) {
    entries.forEach(function (entry) {
      if (!entry.isIntersecting) return;
      observer.unobserve(entry.target);
      if (window.Plotly) drawChart(entry.target);
    });
  }, { rootMargin: "200px 0px" }) : null;

  function drawCharts(root) {
    if (!window.Plotly || !root.querySelectorAll) return;
    root.querySelectorAll("[data-chart]").forEach(function (el, index) {
      if (!observer || index === 0 || el.dataset.drawn) drawChart(el);
      else observer.observe(el);
    });
  }

  var toastTimer = null;
  function toast(message) {
    var el = document.getElementById("toast");
    if (!el) return;
    el.textContent = message;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { el.hidden = true; }, 8000);
  }

  function messageFrom(xhr) {
    // Error pages carry their message in the first paragraph of the main card.
    try {
      var doc = new DOMParser().parseFromString(xhr.responseText || "", "text/html");
      var p = doc.querySelector("main .card p, main p");
      if (p && p.textContent.trim()) return p.textContent.trim();
    } catch (e) { /* fall through */ }
    return "The server answered " + xhr.status + ".";
  }

  document.addEventListener("DOMContentLoaded", function () { drawCharts(document); });
  document.addEventListener("breakwater:plotly-ready", function () { drawCharts(document); });
  document.addEventListener("htmx:afterSettle", function (evt) { drawCharts(evt.target); });
  document.addEventListener("htmx:responseError", function (evt) {
    var xhr = evt.detail.xhr;
    if (xhr.status === 403) toast("Not allowed: " + messageFrom(xhr));
    else if (xhr.status === 404) toast("Not found: " + messageFrom(xhr));
    else toast("Something went wrong (" + xhr.status + "). Nothing was changed by this click; try again.");
  });
  document.addEventListener("htmx:sendError", function () { toast("The server cannot be reached. Check your connection and try again."); });
  // A page swapped into <main> by navigation moves focus there, as a full page load would.
  document.addEventListener("htmx:afterSwap", function (evt) {
    if (evt.detail.target && evt.detail.target.id === "main") {
      evt.detail.target.focus({ preventScroll: true });
      window.scrollTo(0, 0);
    }
    var autofocus = evt.detail.target && evt.detail.target.querySelector && evt.detail.target.querySelector("[data-autofocus]");
    if (autofocus) autofocus.focus();
  });
  // Confirmation inputs: the confirm button stays disabled until the exact expected text is
  // typed (the server checks it again; without JavaScript the button is simply enabled).
  function syncConfirm(input) {
    var button = document.getElementById(input.dataset.confirmFor);
    if (button) button.disabled = input.value.trim() !== input.dataset.expected;
  }
  function initConfirms(root) {
    if (root.querySelectorAll) root.querySelectorAll("[data-confirm-for]").forEach(syncConfirm);
  }
  document.addEventListener("DOMContentLoaded", function () { initConfirms(document); });
  document.addEventListener("htmx:load", function (evt) { initConfirms(evt.target); });

  // A command box marked data-copy gets a button that puts its command on the clipboard (the box
  // wraps, so the command can also be selected by hand; without JavaScript there is no button).
  // The clipboard API exists only on HTTPS and localhost pages: elsewhere there is no button.
  function addCopyButtons(root) {
    if (!navigator.clipboard || !root.querySelectorAll) return;
    root.querySelectorAll("pre.cli[data-copy]").forEach(function (box) {
      if (box.dataset.copyButton) return;
      box.dataset.copyButton = "1";
      var button = document.createElement("button");
      button.type = "button";
      button.className = "small copy";
      button.textContent = "Copy command";
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(box.textContent.trim()).then(function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = "Copy command"; }, 2000);
        }, function () { toast("The browser did not allow copying: select the command and copy it instead."); });
      });
      box.insertAdjacentElement("afterend", button);
    });
  }
  document.addEventListener("DOMContentLoaded", function () { addCopyButtons(document); });
  document.addEventListener("htmx:load", function (evt) { addCopyButtons(evt.target); });
  document.addEventListener("input", function (evt) {
    if (evt.target.dataset && evt.target.dataset.confirmFor) syncConfirm(evt.target);
  });
})();
