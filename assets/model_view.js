/*
 * Model view panel (dashboard/panels/model_view.py): selecting a layer (click a box, the
 * prev/next buttons, the arrow keys, the dropdown) and the hover ring over the diagram. The
 * server draws the diagram; both reactions are clientside so rapid presses never read a stale
 * selection and hover never waits on the server.
 */
(function () {
  "use strict";

  var ls = window.layerscope;
  var dc = window.dash_clientside;
  var IDS = ls.ids;

  var state = (ls.state.modelView = { layerClicks: { prev: 0, next: 0 } });

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

  ls.define("selectLayer", function (clickData, prevClicks, nextClicks, chosen, selection, expanded, options, version, threeD) {
    var s = selection || {};
    var ids = (options || []).map(function (o) { return o.value; });
    if (!s.run || !ids.length) {
      return {};
    }
    var trigger = dc.callback_context.triggered_id;
    var target = null, nextExpanded = null;
    if (trigger === IDS.MODEL_GRAPH) {
      var point = clickData && clickData.points && clickData.points[0];
      var custom = point && point.customdata;
      if (!Array.isArray(custom) || custom.length < 3) {
        return {};
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
      return nextExpanded ? { expanded: nextExpanded } : {};
    }
    var out = {};
    if (target !== s.layer) {
      out.selection = new dc.Patch().assign(["layer"], target).build();
      // The map's request starts now, not when the view key has gone through the store.
      ls.prefetchView(ls.selectionKeys(Object.assign({}, s, { layer: target })).viewKey, version, threeD);
    }
    if (target !== chosen) { out.dropdown = target; }
    if (nextExpanded) { out.expanded = nextExpanded; }
    return out;
  });

  // ---- the selected layer's ring and caption (an SVG overlay like the hover ring: the figure
  // does not change with the selection, so a layer click redraws nothing) ----------------------

  var SVG = "http://www.w3.org/2000/svg";

  function selectionOverlay(gd) {
    var svg = gd.parentNode.querySelector("svg.ls-selected-ring");
    if (!svg) {
      svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("class", "ls-selected-ring");
      ["polygon", "rect", "text"].forEach(function (tag) { svg.appendChild(document.createElementNS(SVG, tag)); });
      gd.parentNode.style.position = "relative";
      gd.parentNode.appendChild(svg);
    }
    return svg;
  }

  function toPixels(layout, x, y) {
    return [layout.xaxis._offset + layout.xaxis.l2p(x), layout.yaxis._offset + layout.yaxis.l2p(y)];
  }

  function drawSelection(gd) {
    var meta = gd && gd._fullLayout && gd.layout && gd.layout.meta;
    var layer = state.markedLayer;
    var node = meta && meta.nodeOfLayer && layer ? meta.nodeOfLayer[layer] : null;
    if (!gd || !gd.parentNode) {
      return;
    }
    var svg = selectionOverlay(gd);
    if (!node || !meta.rings[node]) {
      svg.style.display = "none";
      return;
    }
    var layout = gd._fullLayout;
    var ring = meta.rings[node];
    svg.setAttribute("width", layout.width);
    svg.setAttribute("height", layout.height);
    svg.style.display = "block";
    var polygon = svg.querySelector("polygon"), rect = svg.querySelector("rect"), text = svg.querySelector("text");
    polygon.setAttribute("points", ring[0].map(function (x, i) {
      return toPixels(layout, x, ring[1][i]).map(function (v) { return v.toFixed(1); }).join(",");
    }).join(" "));
    polygon.style.stroke = meta.accent;
    var anchor = toPixels(layout, meta.captions[node][0], meta.captions[node][1]);
    text.textContent = node === layer ? layer : layer + " (in " + node + ")";
    text.setAttribute("x", anchor[0].toFixed(1));
    text.setAttribute("y", (anchor[1] - 4).toFixed(1));
    text.style.fill = meta.accent;
    var box = text.getBBox();
    rect.setAttribute("x", (box.x - 3).toFixed(1));
    rect.setAttribute("y", (box.y - 1).toFixed(1));
    rect.setAttribute("width", (box.width + 6).toFixed(1));
    rect.setAttribute("height", (box.height + 2).toFixed(1));
  }

  ls.define("markLayer", function (layerKey) {
    state.markedLayer = layerKey && layerKey.layer ? layerKey.layer : null;
    var gd = ls.graphDiv(IDS.MODEL_GRAPH);
    if (gd && !gd._lsMarksLayer && typeof gd.on === "function") {
      // Every redraw (a new figure, zoom, pan, resize) moves the boxes on screen.
      gd._lsMarksLayer = true;
      gd.on("plotly_afterplot", function () { drawSelection(gd); });
    }
    drawSelection(gd);
    return ls.noUpdate();
  });

  ls.define("archHover", function (hoverData) {
    var gd = ls.graphDiv(IDS.MODEL_GRAPH);
    if (!gd || !gd.layout || !gd.layout.meta || !gd.layout.meta.outlines) {
      return ls.noUpdate();
    }
    var point = hoverData && hoverData.points && hoverData.points[0];
    var node = point && Array.isArray(point.customdata) ? point.customdata[0] : null;
    drawRing(gd, node ? gd.layout.meta.outlines[node] : null);
    return ls.noUpdate();
  });

  // ---- export: start the server's renderer when the pointer (or focus) reaches the SVG / PDF
  // buttons, once per page, so the first download skips the browser's cold start -------------
  function warmExport(event) {
    var group = document.getElementById(IDS.MODEL_EXPORT);
    var link = document.getElementById(IDS.MODEL_EXPORT_SVG);
    // No href: no run yet, or no browser on the server (the header says so).
    if (state.exportWarmed || !group || !group.contains(event.target) || !link || !link.getAttribute("href")) {
      return;
    }
    state.exportWarmed = true;
    fetch(ls.constants.warmExportUrl).catch(function () { /* the click will say what is wrong */ });
  }
  document.addEventListener("pointerover", warmExport);
  document.addEventListener("focusin", warmExport);

  // ---- keyboard: <- / -> step layers (by pressing the prev/next buttons) ---------------------
  document.addEventListener("keydown", function (event) {
    if (!ls.isPlainKey(event)) {
      return;
    }
    if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
      var button = document.getElementById(event.key === "ArrowLeft" ? IDS.MODEL_PREV : IDS.MODEL_NEXT);
      if (button) {
        event.preventDefault();
        button.click();
      }
    }
  });
})();
