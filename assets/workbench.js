/*
 * Workbench (dashboard/panels/workbench.py, gallery.py): the ways of making a selection that need
 * no server to decide the spec. A confusion cell carries its spec in customdata; a metrics class
 * button and the quality buttons name theirs; a lasso or box in the map gives rows, written as a
 * compact `rows=` term. The server resolves every spec to rows (pipelines/selection.py), so the
 * grammar's parser lives in Python only; the one thing written here is the rows term.
 */
(function () {
  "use strict";

  var ls = window.layerscope;
  var dc = window.dash_clientside;

  // The selection store patched to `spec`. Its rows are requested now, not after the spec has
  // gone through the selection stores (see ls.prefetchSelection in assets/gallery.js), and the
  // patch reaches Dash once the map shows them: Dash's own work on a new selection (every panel
  // that follows it) holds the page's main thread for ~200 ms on 2 cores, and the map's
  // highlight waited behind it although the rows were in 60 ms after the click
  // (benchmarks/README.md, "Workbench in Chromium"). A failed request still sets the selection:
  // resolveSelection then reports why.
  function withSel(spec, selection) {
    var patch = new dc.Patch().assign(["sel"], spec).build();
    if (!selection || !selection.run) {
      return patch;
    }
    var sent = function () { return patch; };
    return ls.prefetchSelection(selection.run, spec).then(sent, sent);
  }

  function triggeredId() {
    var triggered = dc.callback_context && dc.callback_context.triggered;
    if (!triggered || !triggered.length || !triggered[0].prop_id) {
      return null;
    }
    var id = triggered[0].prop_id.split(".")[0];
    try {
      return JSON.parse(id);
    } catch (e) {
      return id;
    }
  }

  // Ascending rows -> "rows=1-5,9": runs of consecutive rows as ranges keep a lasso of a
  // cluster short enough for a link.
  function rowsTerm(rows) {
    var sorted = Array.from(new Set(rows)).sort(function (a, b) { return a - b; });
    var parts = [];
    for (var i = 0; i < sorted.length; i++) {
      var start = sorted[i];
      while (i + 1 < sorted.length && sorted[i + 1] === sorted[i] + 1) {
        i++;
      }
      parts.push(start === sorted[i] ? String(start) : start + "-" + sorted[i]);
    }
    return "rows=" + parts.join(",");
  }
  ls.rowsTerm = rowsTerm;

  ls.define("confusionToSelection", function (clickData, selection) {
    var point = clickData && clickData.points && clickData.points[0];
    var spec = point && point.customdata;
    if (typeof spec !== "string" || !spec) {
      return ls.noUpdate();
    }
    return withSel(spec, selection);
  });

  ls.define("classToSelection", function (clicks, selection) {
    var id = triggeredId();
    if (!id || typeof id !== "object" || !(clicks || []).some(function (n) { return n; })) {
      return ls.noUpdate();
    }
    return withSel("true=" + id.cls, selection);
  });

  ls.define("qualityToSelection", function (issues, duplicates, outliers, corrected, threshold, selection) {
    var IDS = ls.ids;
    var specs = {};
    specs[IDS.QUALITY_SHOW_ISSUES] = "issues";
    specs[IDS.QUALITY_SHOW_DUPLICATES] = "dup>=" + Number(threshold || ls.constants.workbench.duplicateThreshold);
    specs[IDS.QUALITY_SHOW_OUTLIERS] = "outliers=" + ls.constants.workbench.outliers;
    specs[IDS.QUALITY_SHOW_CORRECTED] = "corrected";
    var id = triggeredId();
    return id in specs ? withSel(specs[id], selection) : ls.noUpdate();
  });

  // A lasso or box in the map: its points' rows (customdata), uploads' stars left out.
  ls.define("lassoToSelection", function (selectedData, selection) {
    if (!selectedData || !selectedData.points) {
      return ls.noUpdate();
    }
    var rows = [];
    selectedData.points.forEach(function (point) {
      if (ls.isNumber(point.customdata)) {
        rows.push(point.customdata);
      }
    });
    if (!rows.length) {
      return ls.noUpdate();
    }
    return withSel(rowsTerm(rows), selection);
  });

  ls.define("clearSelection", function () {
    return withSel("");
  });
})();
