// Make the ipywidgets embed manager work offline and with MathJax 3.
//
// Loaded on pages with stored widget state, after require.js and before embed-amd.js
// (see `nb_ipywidgets_js` in _config.yml).
(function () {
  // 1. Local assets. embed-amd.js looks up its own fonts through
  //    `__jupyter_widgets_assets_path__` (otherwise webpack's public path, a CDN) and resolves its
  //    modules through requirejs, so both are pointed at our vendored copy. Paths come from this
  //    script's own URL, so pages at any depth (book/en/..., book/ko/...) work.
  var here = document.currentScript && document.currentScript.src;
  if (here) {
    var dist = new URL("vendor/html-manager/dist/", here).href;
    window.__jupyter_widgets_assets_path__ = dist;
    if (typeof window.require !== "undefined" && window.require.config) {
      window.require.config({
        paths: {
          "@jupyter-widgets/html-manager/dist": dist.replace(/\/$/, ""),
          // third-party widget modules known to appear in stored chapter outputs
          "ipyevents": new URL("ipyevents-stub", here).href,
        },
      });
    }
  }

  // 2. MathJax 2 API. The widgets typeset their labels with `MathJax.Hub.Queue(["Typeset",
  //    MathJax.Hub, element])` whenever `window.MathJax` exists; the book loads MathJax 3, which
  //    has no `Hub`, so every widget failed to render ("reading 'Queue'"). We give whatever object
  //    is (or later becomes) `window.MathJax` a hidden `Hub` whose Queue forwards to MathJax 3's
  //    `typesetPromise`. Hidden (non-enumerable) so MathJax 3 never reads it as configuration.
  var hub = {
    Queue: function () {
      for (var i = 0; i < arguments.length; i++) {
        var job = arguments[i];
        if (!Array.isArray(job) || job[0] !== "Typeset") { continue; }
        var element = job[2];
        var mj = window.MathJax;
        if (!mj || typeof mj.typesetPromise !== "function") { continue; }  // startup typesets the page
        var run = function () { return mj.typesetPromise(element ? [element] : undefined); };
        (mj.startup && mj.startup.promise ? mj.startup.promise.then(run) : run()).catch(function (e) {
          console.warn("MathJax could not typeset a widget:", e);
        });
      }
    },
  };
  function withHub(mj) {
    if (mj && typeof mj === "object" && !("Hub" in mj)) {
      Object.defineProperty(mj, "Hub", { value: hub, enumerable: false, configurable: true });
    }
    return mj;
  }
  var current = withHub(window.MathJax);
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    enumerable: true,
    get: function () { return current; },
    set: function (value) { current = withHub(value); },
  });
})();
