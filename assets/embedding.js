/*
 * Embedding panel (dashboard/panels/embedding.py): a click writes the pinned row into the
 * selection store, so it never waits on the server (hover goes straight from the graph's
 * hoverData to the inspector, see assets/inspector.js); renderEmbedding draws the
 * server-built figure, whose coordinates arrive packed (components/packing.py) and are unpacked
 * here once per payload into typed arrays, which plotly draws as they are. When only the layer
 * changed (same trace structure, i.e. same samples in the same traces), points glide from their
 * old positions to the new ones: Scattergl traces cannot use plotly's own transitions, so the
 * interpolation runs here with requestAnimationFrame + Plotly.restyle, and the final figure is
 * handed back to Dash with set_props so its state matches what is drawn.
 *
 * Where the renderer cannot keep up (a frame of the map takes longer than SLOW_FRAME_MS: 60,000
 * points in a software-rendered browser take ~0.5 s a frame), the points jump to the end
 * instead, and maps as large are drawn without animation from then on: four slow frames made a
 * 60k-point layer switch take 3.9 s instead of one frame's time.
 *
 * The 3-D view (layout.meta.dims === 3, a Scatter3d figure in the same graph) shares all of this
 * but the animation and the selection's dimming: Scatter3d has no selectedpoints, and a 3-D
 * figure simply replaces the previous one (its camera kept by uirevision).
 */
(function () {
  "use strict";

  var ls = window.layerscope;
  var dc = window.dash_clientside;
  var IDS = ls.ids;
  var ANIMATION_MS = 650;
  // At most this much of the way per frame: where frames are slow (software WebGL, a busy
  // laptop), points still visibly travel in >= 4 steps instead of jumping.
  var MAX_STEP = 0.25;
  // Fewer than ~7 frames a second is not a glide: the points jump to their place instead.
  var SLOW_FRAME_MS = 150;

  var state = (ls.state.embedding = {
    key: null, run: null, pinned: null, latestPinned: null, token: 0, animating: false, last: null,
    // The fewest points whose animation had a slow frame (Infinity: none yet).
    slowPoints: Infinity,
    // The last payload's figure with its packed arrays unpacked.
    unpackedFrom: null, unpacked: null,
  });

  // The figure with every packed array unpacked: coordinates and continuous marker colours into
  // typed arrays, the rows in customdata into a plain array (plotly's Scattergl hover events
  // drop customdata given as a typed array).
  function unpackFigure(figure) {
    if (!figure || !figure.data) {
      return figure;
    }
    var data = figure.data.map(function (trace) {
      var out = Object.assign({}, trace);
      ["x", "y", "z"].forEach(function (axis) {
        if (ls.isPacked(trace[axis])) {
          out[axis] = ls.unpack(trace[axis]);
        }
      });
      if (ls.isPacked(trace.customdata)) {
        out.customdata = Array.from(ls.unpack(trace.customdata));
      }
      if (trace.marker && ls.isPacked(trace.marker.color)) {
        out.marker = Object.assign({}, trace.marker, { color: ls.unpack(trace.marker.color) });
      }
      return out;
    });
    return { data: data, layout: figure.layout };
  }

  function unpackedFigure(figure) {
    if (state.unpackedFrom !== figure) {
      state.unpackedFrom = figure;
      state.unpacked = unpackFigure(figure);
    }
    return state.unpacked;
  }

  function pointCount(figure) {
    var meta = figure && figure.layout && figure.layout.meta;
    return meta && ls.isNumber(meta.n) ? meta.n : 0;
  }

  // For the benchmark and the browser tests: `painted` is when the frame that shows the new
  // positions is done. A task queued from a frame callback runs after that frame's rendering,
  // WebGL draw included (in a software-rendered browser that draw is most of a 60k-point switch).
  function timePainting(last) {
    window.requestAnimationFrame(function () {
      setTimeout(function () {
        last.painted = performance.now();
      }, 0);
    });
  }

  // ... and `end` when plotly has drawn the figure Dash was handed (its afterplot event).
  function timeDrawing(gd, last) {
    if (!gd || !gd.once) {
      return;
    }
    gd.once("plotly_afterplot", function () {
      last.end = performance.now();
      timePainting(last);
    });
  }

  function pinnedCoordinates(figure, row) {
    if (!ls.isNumber(row)) {
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
        return trace.z ? [trace.x[at], trace.y[at], trace.z[at]] : [trace.x[at], trace.y[at]];
      }
    }
    return null;
  }

  // The two overlay traces the browser fills: the pinned ring and the uploads' stars. They
  // are not animated (their point counts change with the pin and the uploads).
  function isOverlay(meta, i) {
    return i === meta.pinnedTrace || i === meta.uploadsTrace;
  }

  // The workbench's selection (SELECTION_ROWS, resolved by the server): its points at full
  // strength, the rest dimmed, through plotly's own selectedpoints (a lasso draws the same way).
  // null: no selection (or everything), nothing dimmed.
  function selectionIndices(trace, chosen) {
    var custom = trace.customdata || [];
    var indices = [];
    for (var j = 0; j < custom.length; j++) {
      if (chosen.has(custom[j])) {
        indices.push(j);
      }
    }
    return indices;
  }

  function chosenRows(figure, rowsPayload) {
    if (!rowsPayload || rowsPayload.all || rowsPayload.error || !rowsPayload.rows) {
      return null;
    }
    if (state.chosenFor !== rowsPayload) {
      state.chosenFor = rowsPayload;
      state.chosen = new Set(ls.selectionRows(rowsPayload).rows);
    }
    return state.chosen;
  }

  function selectionKey(rowsPayload) {
    if (!rowsPayload || rowsPayload.all || rowsPayload.error) {
      return "none";
    }
    return rowsPayload.run + "|" + rowsPayload.sel + "|" + rowsPayload.count;
  }

  // The figure with the pinned ring on `row` and the uploads' stars where the server placed
  // them for this view (ls.state.uploads, see assets/uploads.js), and the selection highlighted.
  function withOverlays(figure, row, key) {
    if (!figure || !figure.layout || !figure.layout.meta || figure.layout.meta.pinnedTrace === undefined) {
      return figure;
    }
    var meta = figure.layout.meta;
    var at = pinnedCoordinates(figure, row);
    var uploads = ls.uploadTrace ? ls.uploadTrace(key) : null;
    var chosen = chosenRows(figure, state.rows);
    var data = figure.data.map(function (trace, i) {
      if (i === meta.pinnedTrace) {
        var ring = { x: at ? [at[0]] : [], y: at ? [at[1]] : [] };
        if (meta.dims === 3) {
          ring.z = at ? [at[2]] : [];
        }
        return Object.assign({}, trace, ring);
      }
      if (i === meta.uploadsTrace) {
        return Object.assign({}, trace, uploads || { x: [], y: [], text: [], customdata: [] });
      }
      if (meta.dims === 3) {
        return trace;
      }
      if (!chosen) {
        return Object.assign({}, trace, { selectedpoints: null });
      }
      return Object.assign({}, trace, {
        selectedpoints: selectionIndices(trace, chosen),
        selected: { marker: { opacity: 1 } },
        unselected: { marker: { opacity: 0.08 } },
      });
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
    if (!before || !after || before.structure !== after.structure || after.dims === 3) {
      return false;
    }
    if (gd.data.length !== target.data.length) {
      return false;
    }
    for (var i = 0; i < target.data.length; i++) {
      if (isOverlay(after, i)) {
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
    var st = state;
    var token = ++st.token;
    var meta = target.layout.meta;
    var indices = [], from = [], to = [];
    target.data.forEach(function (trace, i) {
      var shown = gd.data[i];
      if (isOverlay(meta, i) && (!shown.x || shown.x.length !== trace.x.length)) {
        return;
      }
      indices.push(i);
      // Read only, never written: the arrays plotly holds are replaced, not changed, by restyle.
      from.push([shown.x, shown.y]);
      to.push([trace.x, trace.y]);
    });
    st.animating = true;
    st.last = { start: performance.now(), frames: 0, end: null, painted: null, samples: [], slowFrames: 0 };
    if (target.layout.title) {
      window.Plotly.relayout(gd, { "title.text": target.layout.title.text });
    }
    var started = performance.now();
    var previousFrame = null;
    var s = 0;
    function frame() {
      if (token !== st.token) {
        return;
      }
      var now = performance.now();
      if (previousFrame !== null && now - previousFrame > SLOW_FRAME_MS) {
        st.last.slowFrames += 1;
        st.slowPoints = Math.min(st.slowPoints, pointCount(target));
      }
      previousFrame = now;
      s = st.last.slowFrames ? 1 : Math.min(1, Math.max(0, (now - started) / ANIMATION_MS), s + MAX_STEP);
      var xs = [], ys = [];
      if (s >= 1) {
        // The target's own arrays: the figure handed to Dash below holds the very same ones, so
        // plotly's react finds nothing changed and does not draw every point once more.
        to.forEach(function (pair) {
          xs.push(pair[0]);
          ys.push(pair[1]);
        });
      } else {
        var e = ease(s);
        for (var k = 0; k < indices.length; k++) {
          var fx = from[k][0], fy = from[k][1], tx = to[k][0], ty = to[k][1];
          var n = tx.length, ox = new Float32Array(n), oy = new Float32Array(n);
          for (var j = 0; j < n; j++) {
            ox[j] = fx[j] + (tx[j] - fx[j]) * e;
            oy[j] = fy[j] + (ty[j] - fy[j]) * e;
          }
          xs.push(ox);
          ys.push(oy);
        }
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
        timePainting(st.last);
        st.pinned = st.latestPinned;
        dc.set_props(IDS.EMBEDDING_GRAPH, { figure: withOverlays(target, st.latestPinned, st.key) });
      });
    }
    window.requestAnimationFrame(frame);
  }

  // ---- the map's data: fetched from the server's view route (VIEW_URL in embedding.py), not a
  // Dash callback, so that a layer click can start the request itself (ls.prefetchView, from
  // selectLayer in assets/model_view.js) two Dash rounds before the view key reaches loadView.
  function viewUrl(key, version, threeD) {
    return ls.jsonQuery(ls.constants.viewUrl, { key: key || null, version: version || null, dims: threeD ? 3 : 2 });
  }

  function messageFigure(text) {
    return {
      data: [],
      layout: {
        xaxis: { visible: false }, yaxis: { visible: false }, height: 400,
        paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
        annotations: [{ text: text, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }],
      },
    };
  }

  ls.prefetchView = function (key, version, threeD) {
    ls.prefetch(viewUrl(key, version, threeD));
  };

  ls.define("loadView", function (key, version, threeD) {
    var url = viewUrl(key, version, threeD);
    return ls.fetchOnce(url).then(function (view) {
      return { data: view.data, message: view.message, request3d: view.request3d === null ? dc.no_update : view.request3d };
    }, function (error) {
      var text = "The map could not be loaded: " + error.message;
      return { data: { key: "error|" + url, run: key ? key.run : null, figure: messageFigure(text) }, message: text };
    });
  });

  ls.define("clickToSelection", function (clickData) {
    var point = clickData && clickData.points && clickData.points[0];
    var custom = point && point.customdata;
    if (Array.isArray(custom) && custom[0] === "upload") {
      return new dc.Patch().assign(["upload"], custom[1]).assign(["pinned"], null).build();
    }
    var row = ls.rowOf(clickData);
    if (row === null) {
      return ls.noUpdate();
    }
    return new dc.Patch().assign(["pinned"], row).assign(["upload"], null).build();
  });

  // Redraw the uploads' stars after their placements arrived (the figure is otherwise unchanged).
  ls.redrawUploads = function () {
    var gd = ls.graphDiv(IDS.EMBEDDING_GRAPH);
    var meta = gd && gd.layout && gd.layout.meta;
    if (!gd || !meta || meta.uploadsTrace === undefined || !gd.data[meta.uploadsTrace] || state.animating) {
      return;
    }
    var uploads = ls.uploadTrace(state.key) || { x: [], y: [], text: [], customdata: [] };
    window.Plotly.restyle(gd, {
      x: [uploads.x], y: [uploads.y], text: [uploads.text], customdata: [uploads.customdata],
    }, [meta.uploadsTrace]);
  };

  // The selection drawn on the graph as it is, without a new figure: true if it could.
  function restyleSelection(current) {
    var gd = ls.graphDiv(IDS.EMBEDDING_GRAPH);
    var meta = gd && gd.layout && gd.layout.meta;
    if (!gd || !meta || !current || !current.layout || !current.layout.meta ||
        current.layout.meta.structure !== meta.structure || !window.Plotly) {
      return false;
    }
    if (meta.dims === 3) {
      return true; // nothing to dim: Scatter3d has no selectedpoints
    }
    var chosen = chosenRows(current, state.rows);
    var indices = [], points = [], selected = [], unselected = [];
    gd.data.forEach(function (trace, i) {
      if (isOverlay(meta, i)) {
        return;
      }
      indices.push(i);
      points.push(chosen ? selectionIndices(trace, chosen) : null);
      selected.push(chosen ? { marker: { opacity: 1 } } : {});
      unselected.push(chosen ? { marker: { opacity: 0.08 } } : {});
    });
    window.Plotly.restyle(gd, { selectedpoints: points, selected: selected, unselected: unselected }, indices);
    return true;
  }

  // A selection whose rows the click that made it fetched itself (ls.prefetchSelection),
  // highlighted the moment they arrive instead of after Dash has passed them through the
  // selection stores to renderEmbedding (four rounds of ~35 ms on 2 busy cores, often behind
  // the gallery's redraw). renderEmbedding then finds that selection drawn already.
  ls.highlightSelection = function (rowsPayload) {
    var st = state;
    var gd = ls.graphDiv(IDS.EMBEDDING_GRAPH);
    if (!rowsPayload || rowsPayload.run !== st.run || st.animating || !gd || !gd.layout) {
      return;
    }
    st.rows = rowsPayload;
    if (restyleSelection({ layout: gd.layout })) {
      st.rowsKey = selectionKey(rowsPayload);
      st.highlightedAt = performance.now();
    }
  };

  ls.define("renderEmbedding", function (payload, ready3d, selection, rowsPayload, current) {
    var st = state;
    // A 3-D t-SNE view waits for its background job: the job's answer for this very view (the
    // same key; an answer for a view left meanwhile is ignored) is drawn in its place.
    if (payload && payload.pending && ready3d && ready3d.key === payload.key && ready3d.payload) {
      // Its own key, so it is drawn over the "computing…" message that had the view's key.
      payload = Object.assign({}, ready3d.payload, { key: ready3d.key + "|computed" });
    }
    if (!payload || !payload.figure) {
      return ls.noUpdate();
    }
    var pinned = selection && selection.run === payload.run && ls.isNumber(selection.pinned) ? selection.pinned : null;
    st.latestPinned = pinned;
    var rows = rowsPayload && rowsPayload.run === payload.run ? rowsPayload : null;
    var rowsKey = selectionKey(rows);
    st.rows = rows;
    if (payload.key === st.key) {
      if ((pinned === st.pinned && rowsKey === st.rowsKey) || st.animating) {
        return ls.noUpdate();
      }
      if (pinned === st.pinned && restyleSelection(current)) {
        // Only the selection changed: restyle selectedpoints in place. Handing Dash the whole
        // figure again made plotly diff and redraw all 13k points (~0.3-1 s on 2 busy cores);
        // the next full render re-applies the selection from state.rows.
        st.rowsKey = rowsKey;
        st.highlightedAt = performance.now();
        return ls.noUpdate();
      }
      st.pinned = pinned;
      st.rowsKey = rowsKey;
      st.highlightedAt = performance.now();
      return withOverlays(current, pinned, st.key);
    }
    st.rowsKey = rowsKey;
    st.key = payload.key;
    st.run = payload.run;
    st.pinned = pinned;
    var target = withOverlays(unpackedFigure(payload.figure), pinned, payload.key);
    var gd = ls.graphDiv(IDS.EMBEDDING_GRAPH);
    if (!canAnimate(gd, current, target) || pointCount(target) >= st.slowPoints) {
      st.token += 1;
      st.animating = false;
      st.last = { start: performance.now(), frames: 0, end: null, painted: null, samples: [], slowFrames: 0 };
      timeDrawing(gd, st.last);
      return target;
    }
    animateTo(gd, target);
    return ls.noUpdate();
  });
})();
