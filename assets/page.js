/*
 * Page-wide clientside callbacks (dashboard/layout.py): the one selection store split into the
 * small keys the server callbacks listen to, each emitted only when it changed (so a hover never
 * triggers server work), and the view mirrored into the URL so any view can be shared as a link.
 */
(function () {
  "use strict";

  var ls = window.layerscope;

  // The small keys of one selection: what each group of server callbacks listens to.
  ls.selectionKeys = function (selection) {
    var s = selection || {};
    var run = s.run || null;
    return {
      viewKey: {
        run: run, layer: s.layer || null, subset: s.subset === undefined ? null : s.subset,
        method: s.method || null, perplexity: s.method === "pca" ? null : (s.perplexity || null),
        color: s.color || null,
      },
      layerKey: { run: run, layer: s.layer || null },
      sampleKey: {
        run: run, layer: s.layer || null, pinned: ls.isNumber(s.pinned) ? s.pinned : null,
        upload: typeof s.upload === "string" ? s.upload : null,
      },
      runKey: run,
      selKey: { run: run, sel: typeof s.sel === "string" ? s.sel : "" },
    };
  };

  ls.define("splitSelection", function (selection, viewKey, layerKey, sampleKey, runKey, selKey) {
    var keys = ls.selectionKeys(selection);
    var current = { viewKey: viewKey, layerKey: layerKey, sampleKey: sampleKey, runKey: runKey, selKey: selKey };
    var out = {};
    Object.keys(keys).forEach(function (name) {
      if (!ls.same(keys[name], current[name])) { out[name] = keys[name]; }
    });
    return out;
  });

  // The run version split into one store per aspect of the run (ids.RUN_ASPECT_VERSIONS), each
  // written only when its aspect changed: a new map redraws the map, not every panel. The page's
  // setup writes the stores first (dashboard/state.py aspect_versions, the same split), so the
  // first poll of a run being built redraws nothing the setup just drew.
  ls.define("runAspects", function (version) {
    var before = Array.prototype.slice.call(arguments, 1);
    var out = {};
    if (!version) {
      return out;
    }
    ls.constants.runAspects.forEach(function (aspect, i) {
      // A run deleted meanwhile has only its stamp, which says so: every aspect changed.
      var contents = version.contents ? version.contents[aspect] : String(version.stamp);
      var previous = before[i];
      if (!previous || previous.run !== version.run || previous.contents !== contents) {
        out[aspect] = { run: version.run, stamp: version.stamp, contents: contents, complete: version.complete };
      }
    });
    return out;
  });

  ls.define("syncUrl", function (view, sample, sel) {
    if (!view || !view.run) {
      return ls.noUpdate();
    }
    var query = new URLSearchParams();
    query.set("run", view.run);
    if (view.layer) { query.set("layer", view.layer); }
    if (view.subset !== null && view.subset !== undefined) { query.set("subset", view.subset); }
    if (view.method) { query.set("method", view.method); }
    if (view.method === "tsne" && view.perplexity) { query.set("perplexity", view.perplexity); }
    if (view.color) { query.set("color", view.color); }
    if (sample && sample.run === view.run && ls.isNumber(sample.pinned)) { query.set("row", sample.pinned); }
    if (sel && sel.run === view.run && sel.sel) { query.set("sel", sel.sel); }
    var next = "?" + query.toString();
    if (window.location.search !== next) {
      window.history.replaceState(window.history.state, "", window.location.pathname + next);
    }
    return ls.noUpdate();
  });
})();
