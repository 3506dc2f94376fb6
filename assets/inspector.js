/*
 * Inspector panel (dashboard/panels/inspector.py): fills the panel on hover from the per-run
 * table the server sent once (images by URL; the table's numbers packed, read by
 * ls.inspectorTable), and owns the top-10 chart. The chart is plain HTML
 * bars drawn here: a plotly chart redrawn on every hover cost ~34 ms of the main thread, more
 * than half the hover budget. A click on a bar writes {cls, name} into the class-request store,
 * which starts the server's explanations for that class.
 */
(function () {
  "use strict";

  var ls = window.layerscope;
  var dc = window.dash_clientside;
  var IDS = ls.ids;

  var state = (ls.state.inspector = { signature: null, requests: 0, table: null, info: null, warming: [] });
  var WARM_KEEP = 16; // image objects kept alive so their requests are not dropped mid-flight

  // ---- the per-run table ------------------------------------------------------------------
  // components/inspector.py packs it; every panel reads it through ls.inspectorTable, which
  // unpacks it once per table the server sent: uid and label per row as strings, the integer
  // columns as typed arrays, and each row's top-10 through top10(row).

  var unpackedTables = new WeakMap();

  function namesOf(packed, names) {
    var indices = ls.unpack(packed);
    var out = new Array(indices.length);
    for (var i = 0; i < indices.length; i++) {
      out[i] = indices[i] >= 0 ? names[indices[i]] : null;
    }
    return out;
  }

  function unpackTable(raw) {
    var topIdx = raw.top_idx ? ls.unpack(raw.top_idx) : null;
    var topProb = raw.top_prob ? ls.unpack(raw.top_prob) : null;
    var k = raw.top_idx ? raw.top_idx.shape[1] : 0;
    return {
      uid: raw.n ? raw.uids.split("\n") : [],
      label: namesOf(raw.label, raw.labelNames),
      model_label: ls.unpack(raw.model_label),
      classes: raw.classes,
      short: raw.short,
      pred: raw.pred ? ls.unpack(raw.pred) : null,
      correct: raw.correct ? ls.unpack(raw.correct) : null,
      issue: raw.issue ? namesOf(raw.issue, raw.issueNames) : null,
      hasTop10: topIdx !== null,
      // {classes, probs}: plain arrays, best first.
      top10: function (row) {
        return {
          classes: Array.from(topIdx.subarray(row * k, row * k + k)),
          probs: Array.from(topProb.subarray(row * k, row * k + k)),
        };
      },
    };
  }

  ls.inspectorTable = function (raw) {
    if (!raw) {
      return null;
    }
    var table = unpackedTables.get(raw);
    if (!table) {
      table = unpackTable(raw);
      unpackedTables.set(raw, table);
    }
    return table;
  };

  // ---- images fetched from the hover event itself ----------------------------------------
  // Dash delivers the new src ~15-25 ms after plotly's hover event (store updates, callback
  // dispatch, React render). Requesting the same URLs straight from the event overlaps that
  // with the image request; the <img> then finds them in the browser's memory cache (the
  // routes answer with Cache-Control max-age).

  function imageUrls(row) {
    var info = state.info, table = state.table;
    if (!info || info.error || !table || !(row >= 0 && row < table.uid.length)) {
      return [];
    }
    var urls = info.hasThumbnails ? [ls.fill(info.urls.thumb, { row: row })] : [];
    info.explanations.forEach(function (method) {
      urls.push(ls.fill(info.urls.explain[method], { row: row }));
    });
    return urls;
  }

  function warmImages(eventData) {
    imageUrls(ls.rowOf(eventData)).forEach(function (url) {
      var image = new Image();
      image.src = url;
      state.warming.push(image);
    });
    state.warming.splice(0, Math.max(0, state.warming.length - WARM_KEEP));
  }

  function listenToHover() {
    var gd = ls.graphDiv(IDS.EMBEDDING_GRAPH);
    if (gd && gd.on && !gd.layerscopeInspector) {
      gd.layerscopeInspector = true;
      gd.on("plotly_hover", warmImages);
    }
  }

  // ---- the top-10 bars ------------------------------------------------------------------

  function top10Element() {
    var element = document.getElementById(IDS.INSPECTOR_TOP10);
    if (element && !element.dataset.listening) {
      // One delegated listener: the bars are replaced on every hover.
      element.dataset.listening = "1";
      element.addEventListener("click", function (event) {
        var bar = event.target.closest("button.ls-bar");
        if (!bar || bar.disabled) {
          return;
        }
        state.requests += 1;
        // The bar picks its class in the class picker; `click` makes a second click on the same
        // bar a new request (e.g. after a timeout).
        dc.set_props(IDS.EXPLAIN_CLASS, { value: Number(bar.dataset.cls) });
        dc.set_props(IDS.INSPECTOR_CLASS_REQUEST, {
          data: { cls: Number(bar.dataset.cls), name: bar.dataset.name, click: state.requests },
        });
      });
    }
    return element;
  }

  function span(className, text) {
    var element = document.createElement("span");
    element.className = className;
    if (text !== undefined) {
      element.textContent = text;
    }
    return element;
  }

  function drawTop10Message(message) {
    var element = top10Element();
    if (element) {
      element.replaceChildren(span("ls-top10-message", message));
    }
  }

  // One button per class, best first: short name, a bar as wide as the probability, the
  // percentage. The true class's bar is green, the explained class's is outlined.
  // `entry`: an uploaded image's {top_idx, top_prob} instead of the table's row.
  function drawTop10(table, row, explained, clickable, entry) {
    var element = top10Element();
    if (!element) {
      return;
    }
    var top = entry ? { classes: entry.top_idx, probs: entry.top_prob } : table.top10(row);
    var classes = top.classes, probs = top.probs;
    var trueClass = entry ? null : table.model_label[row];
    var bars = classes.map(function (c, i) {
      var name = table.classes[c] !== undefined ? table.classes[c] : String(c);
      var bar = document.createElement("button");
      bar.type = "button";
      bar.className = "ls-bar" + (c === trueClass ? " is-true" : "") + (c === explained ? " is-explained" : "");
      bar.dataset.cls = String(c);
      bar.dataset.name = name;
      bar.disabled = !clickable;
      bar.title = name + "\np = " + probs[i].toFixed(4) + (clickable ? "\nclick: explain this class" : "");
      var fill = span("ls-bar-fill");
      fill.style.width = (100 * probs[i]).toFixed(1) + "%";
      var track = span("ls-bar-track");
      track.appendChild(fill);
      bar.append(
        span("ls-bar-name", table.short[c] !== undefined ? table.short[c] : String(c)),
        track,
        span("ls-bar-value", (100 * probs[i]).toFixed(1) + "%")
      );
      return bar;
    });
    element.replaceChildren.apply(element, bars);
  }

  // ---- the rest of the panel ------------------------------------------------------------

  function labelsText(table, row) {
    var truth = "true: " + table.label[row];
    if (!table.pred) {
      return truth + " · predictions not computed yet";
    }
    var predicted = table.classes[table.pred[row]];
    var verdict = { 1: " ✓ correct", 0: " ✗ wrong", "-1": " (label not among the model's classes)" }[table.correct[row]];
    var issue = table.issue && table.issue[row] ? " · likely label issue, suggested: " + table.issue[row] : "";
    return truth + " · predicted: " + predicted + verdict + issue;
  }

  function emptyInspector(hint, pinned, top10Message, methods) {
    drawTop10Message(top10Message);
    ls.explain.drawEmpty(methods);
    return { image: "", uid: "", labels: "", hint: hint, caption: "", unpinDisabled: pinned === null };
  }

  // An uploaded image in the inspector: its picture as the model sees it, the model's top-10
  // for it, and the explanations (always computed: nothing was precomputed for it).
  function uploadInspector(context, pinned) {
    var upload = context.upload, table = context.table;
    var shownMaps = ls.explain.images(context);
    ls.explain.draw(shownMaps);
    drawTop10(table, null, shownMaps.explained, true, upload);
    var predicted = table.classes[upload.pred] !== undefined ? table.classes[upload.pred] : String(upload.pred);
    return {
      image: upload.thumb,
      uid: upload.name,
      labels: "your image · predicted: " + predicted,
      hint: "your image",
      caption: shownMaps.caption,
      unpinDisabled: false,
    };
  }

  ls.define("renderInspector", function () {
    return render.apply(this, arguments);
  });

  function render(selection, hoverData, table, info, answers, methods, quickRequest, slowRequest,
                  classValue, useSelected, uploads, cancels, galleryHover, shown, session) {
    var st = state;
    table = ls.inspectorTable(table);
    var quickAnswer = (answers || {}).quick || null, slowAnswer = (answers || {}).slow || null;
    st.table = table;
    st.info = info;
    listenToHover();
    var s = selection || {};
    // The hovered row comes straight from the graph's hoverData, never through the selection
    // store: writing it there on every hover set off splitSelection, renderEmbedding and this
    // callback again, and that cascade held the main thread until the image's load event
    // (digits run, 2-core VM at load 16: fully updated 56 ms without it, 100 ms with it).
    // A thumbnail under the mouse in the gallery previews like a hovered point.
    var hovered = ls.rowOf(hoverData);
    if (hovered === null && ls.isNumber(galleryHover)) {
      hovered = galleryHover;
    }
    var pinned = ls.isNumber(s.pinned) ? s.pinned : null;
    if (!info || info.error || !table) {
      var message = info && info.error ? info.error : (s.run ? "loading…" : "no run selected");
      var empty = "empty|" + message + "|" + JSON.stringify(methods);
      if (st.signature === empty) {
        return {};
      }
      st.signature = empty;
      return emptyInspector(message, pinned, "", methods);
    }
    // The chosen upload shows unless another point is hovered.
    var upload = hovered === null ? ls.explain.uploadFor(s, uploads, session) : null;
    var row = upload ? null : (hovered !== null ? hovered : pinned);
    // Hovering the pinned point itself (right after clicking it) reads as pinned: the click
    // is confirmed at once rather than when the mouse leaves the point.
    var hoveringOther = hovered !== null && hovered !== pinned;
    var mode = upload ? "upload" : (hoveringOther ? "hover" : (pinned !== null ? "pinned" : "last"));
    if (row === null && !upload && shown && shown.run === info.run && ls.isNumber(shown.row)) {
      row = shown.row;
    }
    if (row !== null && !(row >= 0 && row < table.uid.length)) {
      row = null;
    }
    var context = {
      info: info, table: table, row: row, upload: upload, mode: mode, classValue: classValue, methods: methods,
      quick: quickAnswer, slow: slowAnswer, quickRequest: quickRequest, slowRequest: slowRequest,
      useSelected: useSelected, selection: s, cancels: cancels,
    };
    var signature = JSON.stringify([info.run, info.version, row, mode, pinned, table.uid.length, info.explanations,
      quickAnswer, slowAnswer, methods, quickRequest, slowRequest, classValue, useSelected, s.layer, upload, cancels]);
    if (signature === st.signature) {
      return {};
    }
    st.signature = signature;
    if (upload) {
      return uploadInspector(context, pinned);
    }
    if (row === null) {
      return emptyInspector("hover a point to inspect it, click to pin it", pinned, "hover a point to see its top-10 predictions", methods);
    }
    var shownMaps = ls.explain.images(context);
    ls.explain.draw(shownMaps);
    if (table.hasTop10) {
      drawTop10(table, row, shownMaps.explained, info.canExplainClass);
    } else {
      drawTop10Message("predictions are not computed yet");
    }
    var hint = mode === "hover" ? "row " + row + " · hovering" : (mode === "pinned" ? "row " + row + " · pinned" : "row " + row);
    var out = {
      image: info.hasThumbnails ? ls.fill(info.urls.thumb, { row: row }) : "",
      uid: table.uid[row],
      labels: labelsText(table, row),
      hint: hint,
      caption: shownMaps.caption,
      unpinDisabled: pinned === null,
    };
    var nextShown = { run: info.run, row: row };
    if (!ls.same(nextShown, shown)) {
      out.shown = nextShown;
    }
    return out;
  }

  ls.define("unpin", function () {
    return new dc.Patch().assign(["pinned"], null).assign(["upload"], null).build();
  });
})();
