/*
 * LayerScope's browser side: the clientside callbacks (pure UI reactions that must not wait on
 * the server) and the keyboard shortcuts. Component ids come from dashboard/ids.py through
 * window.layerscopeIds, written into the page by dashboard/app.py.
 *
 * - splitSelection: the one selection store -> small keys, each emitted only when it changed,
 *   so a hover never triggers server work.
 * - renderEmbedding: draws the server-built figure; when only the layer changed (same trace
 *   structure, i.e. same samples in the same traces), points glide from their old positions to
 *   the new ones. Scattergl traces cannot use plotly's own transitions, so the interpolation runs
 *   here with requestAnimationFrame + Plotly.restyle, and the final figure is handed back to Dash
 *   with set_props so its state matches what is drawn.
 * - renderInspector: fills the inspector from the per-run table on hover (images by URL).
 */
(function () {
  "use strict";

  var IDS = window.layerscopeIds || {};
  var dc = (window.dash_clientside = window.dash_clientside || {});
  var ANIMATION_MS = 650;
  // At most this much of the way per frame: where frames are slow (software WebGL, a busy
  // laptop), points still visibly travel in >= 4 steps instead of jumping.
  var MAX_STEP = 0.25;
  var EXPLANATION_METHODS = ["gradcam", "guided_backprop", "guided_gradcam"];

  var state = {
    embedding: { key: null, pinned: null, latestPinned: null, token: 0, animating: false, last: null },
    inspector: { signature: null },
    layerClicks: { prev: 0, next: 0 },
  };
  // Exposed for the browser tests and for debugging from the console.
  window.layerscope = { state: state };

  function noUpdate() {
    return dc.no_update;
  }

  function same(a, b) {
    return JSON.stringify(a === undefined ? null : a) === JSON.stringify(b === undefined ? null : b);
  }

  function isNumber(value) {
    return typeof value === "number" && isFinite(value);
  }

  function graphDiv(id) {
    var outer = document.getElementById(id);
    if (!outer) {
      return null;
    }
    return outer.classList.contains("js-plotly-plot") ? outer : outer.querySelector(".js-plotly-plot");
  }

  function rowOf(eventData) {
    var point = eventData && eventData.points && eventData.points[0];
    if (!point) {
      return null;
    }
    var custom = point.customdata;
    if (isNumber(custom)) {
      return custom;
    }
    if (Array.isArray(custom) && isNumber(custom[0])) {
      return custom[0];
    }
    return null;
  }

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, function (match, name) {
      return name in values ? encodeURIComponent(String(values[name])) : match;
    });
  }

  // ---- embedding ------------------------------------------------------------------------

  function pinnedCoordinates(figure, row) {
    if (!isNumber(row)) {
      return null;
    }
    var pinnedIndex = figure.layout.meta.pinnedTrace;
    for (var i = 0; i < figure.data.length; i++) {
      if (i === pinnedIndex) {
        continue;
      }
      var trace = figure.data[i];
      var at = trace.customdata ? trace.customdata.indexOf(row) : -1;
      if (at >= 0) {
        return [trace.x[at], trace.y[at]];
      }
    }
    return null;
  }

  function withPinned(figure, row) {
    if (!figure || !figure.layout || !figure.layout.meta || figure.layout.meta.pinnedTrace === undefined) {
      return figure;
    }
    var index = figure.layout.meta.pinnedTrace;
    var at = pinnedCoordinates(figure, row);
    var data = figure.data.map(function (trace, i) {
      if (i !== index) {
        return trace;
      }
      return Object.assign({}, trace, { x: at ? [at[0]] : [], y: at ? [at[1]] : [] });
    });
    return { data: data, layout: figure.layout };
  }

  function canAnimate(gd, current, target) {
    if (!gd || !gd.data || !window.Plotly || !current || !current.layout || !target.layout) {
      return false;
    }
    if (window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches) {
      return false;
    }
    var before = current.layout.meta, after = target.layout.meta;
    if (!before || !after || before.structure !== after.structure) {
      return false;
    }
    if (gd.data.length !== target.data.length) {
      return false;
    }
    for (var i = 0; i < target.data.length; i++) {
      if (i === after.pinnedTrace) {
        continue;
      }
      if (!gd.data[i].x || gd.data[i].x.length !== target.data[i].x.length) {
        return false;
      }
    }
    return true;
  }

  function ease(s) {
    return s < 0.5 ? 4 * s * s * s : 1 - Math.pow(-2 * s + 2, 3) / 2;
  }

  function animateTo(gd, target) {
    var st = state.embedding;
    var token = ++st.token;
    var pinnedIndex = target.layout.meta.pinnedTrace;
    var indices = [], from = [], to = [];
    target.data.forEach(function (trace, i) {
      var shown = gd.data[i];
      if (i === pinnedIndex && (!shown.x || shown.x.length !== trace.x.length)) {
        return;
      }
      indices.push(i);
      from.push([Array.from(shown.x), Array.from(shown.y)]);
      to.push([trace.x, trace.y]);
    });
    st.animating = true;
    st.last = { start: performance.now(), frames: 0, end: null, samples: [] };
    if (target.layout.title) {
      window.Plotly.relayout(gd, { "title.text": target.layout.title.text });
    }
    var started = performance.now();
    var s = 0;
    function frame() {
      if (token !== st.token) {
        return;
      }
      s = Math.min(1, Math.max(0, (performance.now() - started) / ANIMATION_MS), s + MAX_STEP);
      var e = ease(s);
      var xs = [], ys = [];
      for (var k = 0; k < indices.length; k++) {
        var fx = from[k][0], fy = from[k][1], tx = to[k][0], ty = to[k][1];
        var n = tx.length, ox = new Array(n), oy = new Array(n);
        for (var j = 0; j < n; j++) {
          ox[j] = fx[j] + (tx[j] - fx[j]) * e;
          oy[j] = fy[j] + (ty[j] - fy[j]) * e;
        }
        xs.push(ox);
        ys.push(oy);
      }
      st.last.frames += 1;
      if (xs.length && xs[0].length) {
        st.last.samples.push([s, xs[0][0], ys[0][0]]);
      }
      window.Plotly.restyle(gd, { x: xs, y: ys }, indices).then(function () {
        if (token !== st.token) {
          return;
        }
        if (s < 1) {
          window.requestAnimationFrame(frame);
          return;
        }
        st.animating = false;
        st.last.end = performance.now();
        st.pinned = st.latestPinned;
        dc.set_props(IDS.EMBEDDING_GRAPH, { figure: withPinned(target, st.latestPinned) });
      });
    }
    window.requestAnimationFrame(frame);
  }

  // ---- architecture hover ring (an SVG overlay: restyling plotly on hover would redraw the
  // plot and cancel the hover label it is reacting to) ---------------------------------------

  function ringOverlay(gd) {
    var svg = gd.parentNode.querySelector("svg.ls-hover-ring");
    if (!svg) {
      svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("class", "ls-hover-ring");
      var path = document.createElementNS("http://www.w3.org/2000/svg", "polygon");
      svg.appendChild(path);
      gd.parentNode.style.position = "relative";
      gd.parentNode.appendChild(svg);
    }
    return svg;
  }

  function drawRing(gd, outline) {
    var svg = ringOverlay(gd);
    var polygon = svg.firstChild;
    if (!outline || !gd._fullLayout) {
      polygon.setAttribute("points", "");
      svg.style.display = "none";
      return;
    }
    var layout = gd._fullLayout;
    var xaxis = layout.xaxis, yaxis = layout.yaxis;
    var points = outline[0].map(function (x, i) {
      return (xaxis._offset + xaxis.l2p(x)).toFixed(1) + "," + (yaxis._offset + yaxis.l2p(outline[1][i])).toFixed(1);
    });
    svg.setAttribute("width", layout.width);
    svg.setAttribute("height", layout.height);
    polygon.setAttribute("points", points.join(" "));
    svg.style.display = "block";
  }

  // ---- inspector ------------------------------------------------------------------------

  function top10Figure(info, table, row, explained) {
    if (!table.top_idx) {
      return info.top10NoPredictions;
    }
    var classes = table.top_idx[row], probs = table.top_prob[row];
    var trueClass = table.model_label[row];
    var style = info.top10Style;
    var labels = classes.map(function (c) { return (table.short[c] !== undefined ? table.short[c] : String(c)) + " "; });
    var custom = classes.map(function (c, i) {
      return [c, table.classes[c] !== undefined ? table.classes[c] : String(c), probs[i]];
    });
    var bars = Object.assign({}, style.trace, {
      x: probs,
      y: labels,
      customdata: custom,
      text: probs.map(function (p) { return (100 * p).toFixed(1) + "%"; }),
      marker: {
        color: classes.map(function (c) { return c === trueClass ? style.trueColor : style.barColor; }),
        line: {
          color: classes.map(function (c) { return c === explained ? style.explainedColor : "rgba(0,0,0,0)"; }),
          width: style.lineWidth,
        },
      },
    });
    var hit = Object.assign({}, style.hitTrace, { x: classes.map(function () { return 1.0; }), y: labels, customdata: custom });
    return { data: [bars, hit], layout: info.top10Layout };
  }

  function labelsText(table, row) {
    var truth = "true: " + table.label[row];
    if (!table.pred) {
      return truth + " · predictions not computed yet";
    }
    var predicted = table.classes[table.pred[row]];
    var verdict = { 1: " ✓ correct", 0: " ✗ wrong", "-1": " (label not among the model's classes)" }[table.correct[row]];
    return truth + " · predicted: " + predicted + verdict;
  }

  var INSPECTOR_OUTPUTS = 14;

  function emptyInspector(info, hint, pinned) {
    var blank = EXPLANATION_METHODS.map(function () { return ""; });
    var figure = info && info.top10 ? info.top10 : { data: [], layout: {} };
    return [""].concat(["", "", hint, figure, ""], blank, blank, [noUpdate(), pinned === null]);
  }

  // ---- the callbacks --------------------------------------------------------------------

  dc.layerscope = {
    splitSelection: function (selection, viewKey, layerKey, sampleKey, runKey) {
      var s = selection || {};
      var run = s.run || null;
      var view = {
        run: run, layer: s.layer || null, subset: s.subset === undefined ? null : s.subset,
        method: s.method || null, perplexity: s.method === "pca" ? null : (s.perplexity || null),
        color: s.color || null,
      };
      var layer = { run: run, layer: s.layer || null };
      var sample = { run: run, layer: s.layer || null, pinned: isNumber(s.pinned) ? s.pinned : null };
      return [
        same(view, viewKey) ? noUpdate() : view,
        same(layer, layerKey) ? noUpdate() : layer,
        same(sample, sampleKey) ? noUpdate() : sample,
        same(run, runKey) ? noUpdate() : run,
      ];
    },

    hoverToSelection: function (hoverData) {
      return new dc.Patch().assign(["hovered"], rowOf(hoverData)).build();
    },

    clickToSelection: function (clickData) {
      var row = rowOf(clickData);
      if (row === null) {
        return noUpdate();
      }
      return new dc.Patch().assign(["pinned"], row).build();
    },

    unpin: function () {
      return new dc.Patch().assign(["pinned"], null).assign(["hovered"], null).build();
    },

    renderEmbedding: function (payload, selection, current) {
      var st = state.embedding;
      if (!payload || !payload.figure) {
        return noUpdate();
      }
      var pinned = selection && selection.run === payload.run && isNumber(selection.pinned) ? selection.pinned : null;
      st.latestPinned = pinned;
      if (payload.key === st.key) {
        if (pinned === st.pinned || st.animating) {
          return noUpdate();
        }
        st.pinned = pinned;
        return withPinned(current, pinned);
      }
      st.key = payload.key;
      st.pinned = pinned;
      var target = withPinned(payload.figure, pinned);
      var gd = graphDiv(IDS.EMBEDDING_GRAPH);
      if (!canAnimate(gd, current, target)) {
        st.token += 1;
        st.animating = false;
        return target;
      }
      animateTo(gd, target);
      return noUpdate();
    },

    selectLayer: function (clickData, prevClicks, nextClicks, chosen, selection, expanded, options) {
      var s = selection || {};
      var ids = (options || []).map(function (o) { return o.value; });
      var none = [noUpdate(), noUpdate(), noUpdate()];
      if (!s.run || !ids.length) {
        return none;
      }
      var trigger = dc.callback_context.triggered_id;
      var target = null, nextExpanded = noUpdate();
      if (trigger === IDS.MODEL_GRAPH) {
        var point = clickData && clickData.points && clickData.points[0];
        var custom = point && point.customdata;
        if (!Array.isArray(custom) || custom.length < 3) {
          return none;
        }
        if (custom[1] === "block" && (expanded || []).indexOf(custom[0]) < 0) {
          nextExpanded = (expanded || []).concat([custom[0]]);
        }
        target = custom[2];
      } else if (trigger === IDS.MODEL_PREV || trigger === IDS.MODEL_NEXT) {
        // Dash runs a queued callback once with the latest inputs, so two quick presses can
        // arrive as one call: step by how much each counter moved, not by one.
        var clicks = state.layerClicks;
        var step = ((nextClicks || 0) - clicks.next) - ((prevClicks || 0) - clicks.prev);
        clicks.next = nextClicks || 0;
        clicks.prev = prevClicks || 0;
        var at = ids.indexOf(s.layer);
        target = ids[at < 0 ? 0 : Math.max(0, Math.min(ids.length - 1, at + step))];
      } else {
        target = chosen;
      }
      if (ids.indexOf(target) < 0) {
        return [noUpdate(), noUpdate(), nextExpanded];
      }
      return [
        target === s.layer ? noUpdate() : new dc.Patch().assign(["layer"], target).build(),
        target === chosen ? noUpdate() : target,
        nextExpanded,
      ];
    },

    archHover: function (hoverData) {
      var gd = graphDiv(IDS.MODEL_GRAPH);
      if (!gd || !gd.layout || !gd.layout.meta || !gd.layout.meta.outlines) {
        return noUpdate();
      }
      var point = hoverData && hoverData.points && hoverData.points[0];
      var node = point && Array.isArray(point.customdata) ? point.customdata[0] : null;
      drawRing(gd, node ? gd.layout.meta.outlines[node] : null);
      return noUpdate();
    },

    renderInspector: function (selection, hoverData, table, info, explainedClass, shown) {
      var st = state.inspector;
      var s = Object.assign({}, selection || {});
      if (dc.callback_context.triggered_id === IDS.EMBEDDING_GRAPH) {
        // Straight from the hover event: one store round trip less than waiting for the
        // selection's "hovered" field (same value, a few milliseconds later).
        s.hovered = rowOf(hoverData);
      }
      var pinned = isNumber(s.pinned) ? s.pinned : null;
      if (!info || info.error || !table) {
        var message = info && info.error ? info.error : (s.run ? "loading…" : "no run selected");
        if (st.signature === "empty|" + message) {
          return new Array(INSPECTOR_OUTPUTS).fill(noUpdate());
        }
        st.signature = "empty|" + message;
        return emptyInspector(info, message, pinned);
      }
      var row = isNumber(s.hovered) ? s.hovered : pinned;
      // Hovering the pinned point itself (right after clicking it) reads as pinned: the click
      // is confirmed at once rather than when the mouse leaves the point.
      var hoveringOther = isNumber(s.hovered) && s.hovered !== pinned;
      var mode = hoveringOther ? "hover" : (pinned !== null ? "pinned" : "last");
      if (row === null && shown && shown.run === info.run && isNumber(shown.row)) {
        row = shown.row;
      }
      if (row !== null && !(row >= 0 && row < table.uid.length)) {
        row = null;
      }
      var forClass = explainedClass && explainedClass.run === info.run && explainedClass.row === row ? explainedClass : null;
      var signature = [info.run, info.version, row, mode, pinned, JSON.stringify(forClass), table.uid.length, info.explanations.join(",")].join("|");
      if (signature === st.signature) {
        return new Array(INSPECTOR_OUTPUTS).fill(noUpdate());
      }
      st.signature = signature;
      if (row === null) {
        return emptyInspector(info, "hover a point to inspect it, click to pin it", pinned);
      }
      var predicted = table.pred ? table.pred[row] : null;
      var explained = forClass && !forClass.error ? forClass.cls : predicted;
      var hint = mode === "hover" ? "row " + row + " · hovering" : (mode === "pinned" ? "row " + row + " · pinned" : "row " + row);
      var caption = "";
      if (forClass && !forClass.error) {
        caption = "Explanations for class “" + forClass.name + "” (clicked) · click another bar to compare";
      } else if (info.explanations.length) {
        caption = "Explanations for the predicted class" + (predicted !== null ? " “" + table.classes[predicted] + "”" : "") +
          (info.canExplainClass ? " · click a bar to explain another class" : "");
      }
      var images = EXPLANATION_METHODS.map(function (method) {
        if (forClass && forClass.urls) {
          return forClass.urls[method];
        }
        return info.explanations.indexOf(method) >= 0 ? fill(info.urls.explain[method], { row: row }) : "";
      });
      var notes = EXPLANATION_METHODS.map(function (method, i) {
        if (forClass && forClass.error) {
          return i === 0 ? forClass.error : "";
        }
        return images[i] ? "" : (i === 0 ? (info.explanationNote || "") : "");
      });
      var nextShown = { run: info.run, row: row };
      return [info.hasThumbnails ? fill(info.urls.thumb, { row: row }) : "", table.uid[row], labelsText(table, row), hint,
        top10Figure(info, table, row, explained), caption]
        .concat(images, notes, [same(nextShown, shown) ? noUpdate() : nextShown, pinned === null]);
    },

    syncUrl: function (view, sample) {
      if (!view || !view.run) {
        return noUpdate();
      }
      var query = new URLSearchParams();
      query.set("run", view.run);
      if (view.layer) { query.set("layer", view.layer); }
      if (view.subset !== null && view.subset !== undefined) { query.set("subset", view.subset); }
      if (view.method) { query.set("method", view.method); }
      if (view.method === "tsne" && view.perplexity) { query.set("perplexity", view.perplexity); }
      if (view.color) { query.set("color", view.color); }
      if (sample && sample.run === view.run && isNumber(sample.pinned)) { query.set("row", sample.pinned); }
      var next = "?" + query.toString();
      if (window.location.search !== next) {
        window.history.replaceState(window.history.state, "", window.location.pathname + next);
      }
      return noUpdate();
    },

    tourStep: function (start, next, back, close, step, steps) {
      var trigger = dc.callback_context.triggered_id;
      var count = (steps || []).length;
      if (trigger === IDS.TOUR_START) { return 0; }
      if (trigger === IDS.TOUR_CLOSE || step === null || step === undefined) { return null; }
      if (trigger === IDS.TOUR_NEXT) { return step + 1 < count ? step + 1 : null; }
      if (trigger === IDS.TOUR_BACK) { return Math.max(0, step - 1); }
      return noUpdate();
    },

    tourRender: function (step, steps) {
      document.querySelectorAll(".ls-tour-highlight").forEach(function (el) {
        el.classList.remove("ls-tour-highlight");
      });
      if (step === null || step === undefined || !steps || !steps[step]) {
        return [{ display: "none" }, "", "", "Next", true];
      }
      var current = steps[step];
      var target = document.getElementById(current.target);
      if (target) {
        target.classList.add("ls-tour-highlight");
        target.scrollIntoView({ behavior: "smooth", block: "center" });
      }
      return [{ display: "block" }, current.title, current.text, step === steps.length - 1 ? "Finish" : "Next", step === 0];
    },
  };

  // ---- keyboard: ← / → step layers, Escape closes the tour ---------------------------------
  document.addEventListener("keydown", function (event) {
    var target = event.target || {};
    var tag = (target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "select" || tag === "textarea" || target.isContentEditable) {
      return;
    }
    if (event.altKey || event.ctrlKey || event.metaKey || document.querySelector(".modal.show")) {
      return;
    }
    if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
      var button = document.getElementById(event.key === "ArrowLeft" ? IDS.MODEL_PREV : IDS.MODEL_NEXT);
      if (button) {
        event.preventDefault();
        button.click();
      }
    } else if (event.key === "Escape") {
      var card = document.getElementById(IDS.TOUR_CARD);
      if (card && card.style.display !== "none") {
        document.getElementById(IDS.TOUR_CLOSE).click();
      }
    }
  });
})();
