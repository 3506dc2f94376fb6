/*
 * Explanations (dashboard/panels/explain.py): decides what the server computes and what each
 * method's image shows. Nothing is computed on hover: a hovered sample shows the maps the
 * precompute stored for its predicted class. A pinned sample (or, with nothing pinned, the last
 * one shown), a chosen class, another Grad-CAM layer or a method that was not stored makes two
 * requests: the quick methods for one background job, the slow ones for another (progress bar,
 * cancel). `images` is called by renderInspector (assets/inspector.js), the panel's one renderer.
 */
(function () {
  "use strict";

  var ls = window.layerscope;
  var dc = window.dash_clientside;
  var IDS = ls.ids;
  var METHODS = ls.constants.explainers || {};
  var NAMES = Object.keys(METHODS);
  var SHOWN = { display: "" };
  var HIDDEN = { display: "none" };
  var state = (ls.state.explain = { quick: null, slow: null, occlusion: null });

  // The uploaded image the selection names, with its prediction, or null.
  function uploadFor(selection, uploads, session) {
    var id = (selection || {}).upload;
    var found = (uploads || []).filter(function (u) { return u.id === id; })[0];
    return found && session ? Object.assign({ session: session }, found) : null;
  }

  function rowFor(selection, shown, info) {
    var s = selection || {};
    if (ls.isNumber(s.pinned)) {
      return s.pinned;
    }
    return shown && shown.run === info.run && ls.isNumber(shown.row) ? shown.row : null;
  }

  // The layer the Grad-CAM family weighs: the architecture's selected layer when the user asks
  // for it and it has channel maps, else the run's own Grad-CAM layer.
  function layerFor(useSelected, selection, info) {
    var selected = (selection || {}).layer;
    if (useSelected && info.spatialLayers.indexOf(selected) >= 0) {
      return selected;
    }
    return info.gradcamLayer || null;
  }

  function layerNote(useSelected, selection, info, layer) {
    if (!layer) {
      return "This model has no layer with channel maps, so the Grad-CAM family is not available.";
    }
    var selected = (selection || {}).layer;
    var note = "Grad-CAM layer: " + layer;
    if (useSelected && selected && selected !== layer) {
      note += " (the selected layer " + selected + " has no channel maps)";
    }
    return note;
  }

  // Whether the image of `method` for (row, cls, layer) is one the precompute stored.
  function stored(info, method, cls, predicted, layer) {
    return info.explanations.indexOf(method) >= 0 && cls === predicted &&
      (!METHODS[method].layer || layer === info.gradcamLayer);
  }

  ls.define("explainRequest", function (classValue, barClick, methods, useSelected, selection, info, uploads,
                                         table, shown, session, cancels) {
    table = ls.inspectorTable(table);
    if (!info || info.error || !table) {
      return { layerNote: "" };
    }
    var layer = layerFor(useSelected, selection, info);
    var note = layerNote(useSelected, selection, info, layer);
    var upload = uploadFor(selection, uploads, session);
    var row = upload ? null : rowFor(selection, shown, info);
    if (!upload && (row === null || !(row >= 0 && row < table.uid.length))) {
      return { layerNote: note };
    }
    var predicted = upload ? upload.pred : (table.pred ? table.pred[row] : null);
    var cls = ls.isNumber(classValue) ? classValue : predicted;
    if (!ls.isNumber(cls)) {
      return { layerNote: note };
    }
    var chosen = (methods || []).filter(function (m) { return METHODS[m]; });
    var needed = chosen.filter(function (m) { return upload || !stored(info, m, cls, predicted, layer); });
    var base = {
      run: info.run,
      row: row,
      upload: upload ? upload.id : null,
      session: upload ? session : null,
      cls: cls,
      name: table.classes[cls] !== undefined ? table.classes[cls] : String(cls),
      layer: layer,
      // A new click on the same bar asks again (e.g. after a timeout), as does the same
      // choice after a cancel.
      click: barClick && barClick.click,
      cancels: cancels || 0,
    };
    // A request equal to the last one is not sent again: the selection store changes with every
    // layer switch, and the slow job would restart (and flash its progress bar) for nothing.
    function requestOf(slow) {
      var names = needed.filter(function (m) { return METHODS[m].slow === slow; });
      var request = names.length ? Object.assign({ methods: names }, base) : null;
      var lane = slow ? "slow" : "quick";
      if (request === null || ls.same(request, state[lane])) {
        return dc.no_update;
      }
      state[lane] = request;
      return request;
    }
    return { quick: requestOf(false), slow: requestOf(true), layerNote: note };
  });

  // Copies the jobs' answers into EXPLAIN_ANSWERS with set_props (see panels/explain.py).
  ls.define("deliverAnswers", function (quick, slow) {
    dc.set_props(IDS.EXPLAIN_ANSWERS, { data: { quick: quick || null, slow: slow || null } });
    return dc.no_update;
  });

  ls.define("pickClass", function (predictedClicks, trueClicks, table, shown) {
    table = ls.inspectorTable(table);
    var triggered = (dc.callback_context.triggered || [])[0] || {};
    if (String(triggered.prop_id).indexOf(IDS.EXPLAIN_TRUE) === 0) {
      var row = shown && ls.isNumber(shown.row) ? shown.row : null;
      var label = table && row !== null ? table.model_label[row] : -1;
      // A label the model has no class for (-1) cannot be explained: keep the choice.
      return label >= 0 ? label : dc.no_update;
    }
    return null;
  });

  // An answer (quick or slow job) is for what the inspector shows when it names the same run,
  // row, class and layer.
  function answerFor(answer, info, row, upload, cls, layer) {
    return answer && answer.run === info.run && answer.row === row && (answer.upload || null) === upload &&
      answer.cls === cls && (answer.layer || null) === (layer || null) ? answer : null;
  }

  function requested(request, method, info, row, upload, cls) {
    return request && request.run === info.run && request.row === row && (request.upload || null) === upload &&
      request.cls === cls && (request.methods || []).indexOf(method) >= 0;
  }

  // Whether the slow job is still working on `request`: no answer for it yet, and no cancel
  // since it was made (a cancelled job never answers).
  function slowPending(request, answer, cancels) {
    if (!request || (cancels || 0) !== request.cancels) {
      return false;
    }
    var answered = answer && answer.run === request.run && answer.row === request.row &&
      (answer.upload || null) === (request.upload || null) && answer.cls === request.cls &&
      (answer.layer || null) === (request.layer || null);
    return !(answered && request.methods.every(function (m) {
      return (answer.urls && answer.urls[m]) || answer.error;
    }));
  }

  /*
   * What each method's figure shows for the inspector's row:
   *   context: {info, table, row, upload, mode, classValue, methods, quick, slow, quickRequest,
   *             slowRequest, useSelected, selection, cancels}  (row null, upload set for an upload)
   * Returns {images, notes, figures, legends, explained, caption, progress}.
   */
  function images(c) {
    var info = c.info, table = c.table, row = c.row;
    var upload = c.upload ? c.upload.id : null;
    var predicted = c.upload ? c.upload.pred : (table.pred ? table.pred[row] : null);
    var chosenClass = ls.isNumber(c.classValue) ? c.classValue : null;
    var layer = layerFor(c.useSelected, c.selection, info);
    // Hovering another sample shows its stored maps; the chosen class applies to the sample
    // the requests were made for.
    var cls = c.mode === "hover" || chosenClass === null ? predicted : chosenClass;
    var chosen = (c.methods || []).filter(function (m) { return METHODS[m]; });
    var answers = [answerFor(c.quick, info, row, upload, cls, layer), answerFor(c.slow, info, row, upload, cls, layer)];
    var out = {
      images: {}, notes: {}, figures: {}, legends: { heat: HIDDEN, signed: HIDDEN }, explained: cls,
      progress: slowPending(c.slowRequest, c.slow, c.cancels) ? SHOWN : HIDDEN,
    };
    NAMES.forEach(function (method) {
      var on = chosen.indexOf(method) >= 0;
      out.figures[method] = on ? SHOWN : HIDDEN;
      out.images[method] = "";
      out.notes[method] = "";
      if (!on) {
        return;
      }
      out.legends[METHODS[method].display] = SHOWN;
      var answer = answers[METHODS[method].slow ? 1 : 0];
      if (answer && answer.urls && answer.urls[method]) {
        out.images[method] = answer.urls[method];
      } else if (answer && answer.error) {
        out.notes[method] = answer.error;
      } else if (!upload && stored(info, method, cls, predicted, layer) && info.urls.explain[method]) {
        out.images[method] = ls.fill(info.urls.explain[method], { row: row });
      } else if (requested(METHODS[method].slow ? c.slowRequest : c.quickRequest, method, info, row, upload, cls)) {
        var cancelled = METHODS[method].slow && (c.cancels || 0) !== c.slowRequest.cancels;
        out.notes[method] = cancelled ? "cancelled · choose the class or method again to retry" : "computing…";
      } else if (c.mode === "hover") {
        out.notes[method] = "click the point to compute";
      } else if (!info.explanations.length && info.explanationNote) {
        out.notes[method] = info.explanationNote;
      }
    });
    var name = function (k) { return table.classes[k] !== undefined ? table.classes[k] : String(k); };
    if (!chosen.length) {
      out.caption = "Choose explanation methods above.";
    } else if (chosenClass !== null && c.mode !== "hover") {
      out.caption = "Explanations for class “" + name(chosenClass) + "” (chosen) · pick another class to compare";
    } else {
      out.caption = "Explanations for the predicted class" + (predicted !== null ? " “" + name(predicted) + "”" : "") +
        (chosenClass !== null ? " · click the point to explain “" + name(chosenClass) + "”" : " · click a bar or pick a class to explain another");
    }
    drawOcclusion(answers[1], chosen.indexOf("occlusion") >= 0, name);
    return out;
  }

  // Occlusion's probabilities beside its heat map (as Picasso shows them): the class
  // probability of the intact image, the patches whose hiding lowers it most, and every
  // patch's probability sorted as a small curve. Drawn here, not by Dash, like the top-10.
  function drawOcclusion(answer, chosen, name) {
    var element = document.getElementById(IDS.EXPLAIN_OCCLUSION);
    if (!element) {
      return;
    }
    var table = answer && answer.occlusion;
    // Redrawn only when it changes: images() runs on every hover.
    var drawn = chosen && table ? answer : null;
    if (state.occlusion === drawn) {
      return;
    }
    state.occlusion = drawn;
    if (!drawn) {
      element.replaceChildren();
      return;
    }
    var title = document.createElement("div");
    title.className = "ls-hint";
    title.textContent = "Occlusion, class “" + name(answer.cls) + "”: p = " + table.probability.toFixed(3) +
      " intact; hiding one patch (" + table.grid[0] + "×" + table.grid[1] + " grid):";
    var rows = table.patches.map(function (patch) {
      var tr = document.createElement("tr");
      [
        "row " + patch[0] + ", col " + patch[1],
        "p = " + patch[2].toFixed(3),
        "Δ " + (patch[2] - table.probability).toFixed(3),
      ].forEach(function (text) {
        var td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      });
      return tr;
    });
    var grid = document.createElement("table");
    grid.className = "ls-occlusion-table";
    grid.append.apply(grid, rows);
    element.replaceChildren(title, grid, curve(table.curve, table.probability));
  }

  // Sorted patch probabilities as an inline SVG polyline, with the intact probability dashed.
  function curve(values, intact) {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 100 30");
    svg.setAttribute("class", "ls-occlusion-curve");
    svg.setAttribute("preserveAspectRatio", "none");
    var n = Math.max(values.length - 1, 1);
    var line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", values.map(function (p, i) {
      return (100 * i / n).toFixed(2) + "," + (30 - 30 * p).toFixed(2);
    }).join(" "));
    var base = document.createElementNS(ns, "line");
    base.setAttribute("x1", "0");
    base.setAttribute("x2", "100");
    base.setAttribute("y1", String(30 - 30 * intact));
    base.setAttribute("y2", String(30 - 30 * intact));
    base.setAttribute("class", "is-intact");
    var label = document.createElementNS(ns, "title");
    label.textContent = "class probability with each patch hidden, lowest first (dashed: intact)";
    svg.append(label, base, line);
    return svg;
  }

  // ---- the figures, drawn here rather than by Dash -------------------------------------------

  function figureElements() {
    var container = document.getElementById(IDS.EXPLAIN_FIGURES);
    if (!container) {
      return null;
    }
    if (!container.dataset.built) {
      container.dataset.built = "1";
      container.replaceChildren.apply(container, NAMES.map(function (method) {
        var figure = document.createElement("figure");
        figure.className = "ls-explanation m-0";
        figure.id = "explain-figure-" + method;
        figure.style.display = "none";
        var image = document.createElement("img");
        image.className = "ls-explanation-image";
        image.id = "explain-image-" + method;
        image.alt = METHODS[method].title;
        image.setAttribute("src", "");
        var note = document.createElement("div");
        note.className = "ls-hint";
        note.id = "explain-note-" + method;
        var caption = document.createElement("figcaption");
        caption.className = "ls-caption";
        caption.textContent = METHODS[method].title;
        figure.append(image, note, caption);
        return figure;
      }));
    }
    return container;
  }

  function setDisplay(element, style) {
    var value = style && style.display === "none" ? "none" : "";
    if (element && element.style.display !== value) {
      element.style.display = value;
    }
  }

  // Apply what `images` decided to the page, touching only what changed.
  function draw(shown) {
    if (!figureElements()) {
      return;
    }
    NAMES.forEach(function (method) {
      var image = document.getElementById("explain-image-" + method);
      var note = document.getElementById("explain-note-" + method);
      var src = (shown.images || {})[method] || "";
      if (image.getAttribute("src") !== src) {
        image.setAttribute("src", src);
      }
      var text = (shown.notes || {})[method] || "";
      if (note.textContent !== text) {
        note.textContent = text;
      }
      setDisplay(document.getElementById("explain-figure-" + method), (shown.figures || {})[method] || HIDDEN);
    });
    Object.keys(shown.legends || {}).forEach(function (display) {
      setDisplay(document.getElementById(IDS.EXPLAIN_LEGEND + "-" + display), shown.legends[display]);
    });
    setDisplay(document.getElementById(IDS.EXPLAIN_PROGRESS_ROW), shown.progress || HIDDEN);
  }

  // Nothing to show (no run, no sample): every figure empty, legends and progress as chosen.
  function drawEmpty(methods) {
    var chosen = methods || [];
    var figures = {}, legends = { heat: HIDDEN, signed: HIDDEN };
    NAMES.forEach(function (method) {
      var on = chosen.indexOf(method) >= 0;
      figures[method] = on ? SHOWN : HIDDEN;
      if (on) {
        legends[METHODS[method].display] = SHOWN;
      }
    });
    draw({ images: {}, notes: {}, figures: figures, legends: legends, progress: HIDDEN });
  }

  ls.explain = { images: images, draw: draw, drawEmpty: drawEmpty, names: NAMES, uploadFor: uploadFor };
})();
