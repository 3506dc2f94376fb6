/*
 * LayerScope's browser side, shared part: loaded first (Dash loads assets in name order, hence
 * "00-"), then one file per panel (embedding.js, inspector.js, model_view.js, page.js, tour.js)
 * adds its clientside callbacks with `define`.
 *
 * Python publishes what both sides must agree on in window.layerscopeShared (written into the
 * page by dashboard/app.py, built by dashboard/registry.py):
 *   ids        every component id (dashboard/ids.py)
 *   outputs    for each clientside callback with several outputs, its output names in the order
 *              of the Python Output list
 *   constants  values such as the explanation method names (from the pipelines.explain registry)
 * A callback with named outputs returns an object keyed by those names; `define` turns it into
 * the list Dash expects, so nothing depends on the position of a value.
 */
(function () {
  "use strict";

  var shared = window.layerscopeShared || { ids: {}, outputs: {}, constants: {} };
  var dc = (window.dash_clientside = window.dash_clientside || {});
  var callbacks = (dc.layerscope = dc.layerscope || {});

  function noUpdate() {
    return dc.no_update;
  }

  // An output declared with a wildcard (ALL) id takes an object keyed by that id field, e.g.
  // {gradcam: url, ...} for ids {"type": ..., "method": ALL}; Dash wants one value per matched
  // component, in page order, which callback_context.outputs_list gives.
  function wildcardValue(spec, value, matched) {
    if (value === undefined || value === dc.no_update) {
      return matched.map(noUpdate);
    }
    return matched.map(function (output) {
      var key = output.id[spec.by];
      return key in value ? value[key] : dc.no_update;
    });
  }

  function toOutputList(name, specs, result, matched) {
    if (result === dc.no_update) {
      result = {};
    }
    Object.keys(result).forEach(function (key) {
      if (!specs.some(function (spec) { return spec.name === key; })) {
        throw new Error("layerscope." + name + " returned unknown output '" + key + "'");
      }
    });
    return specs.map(function (spec, i) {
      if (spec.by) {
        return wildcardValue(spec, result[spec.name], matched[i] || []);
      }
      return spec.name in result ? result[spec.name] : dc.no_update;
    });
  }

  // Register clientside callback `name`. With named outputs (published by Python), `fn` returns
  // {outputName: value}, or a promise of it; an output it leaves out is not updated.
  function define(name, fn) {
    var specs = shared.outputs[name];
    callbacks[name] = !specs ? fn : function () {
      // Read now: Dash removes callback_context as soon as the function returns.
      var matched = (dc.callback_context && dc.callback_context.outputs_list) || [];
      var result = fn.apply(this, arguments);
      if (result && typeof result.then === "function") {
        return result.then(function (value) { return toOutputList(name, specs, value, matched); });
      }
      return toOutputList(name, specs, result, matched);
    };
  }

  // ---- answers the page fetches from its own routes (the map's data, a selection's rows) rather
  // than through a Dash callback. Dash runs a callback only after every callback feeding its
  // inputs, so a request waited for the click's whole chain of stores (~35 ms a round on 2
  // cores); a click that knows what it will need starts the request itself (prefetch) and the
  // callback takes that answer (fetchOnce).
  var prefetched = {}; // url -> promise of the parsed answer, until one fetchOnce takes it
  var PREFETCHES_KEPT = 8;

  function fetchJson(url) {
    return fetch(url, { credentials: "same-origin" }).then(function (response) {
      if (!response.ok) {
        return response.text().then(function (text) { throw new Error(text || response.statusText); });
      }
      return response.json();
    });
  }

  // The promise of the answer, for a caller that wants it as soon as it arrives too.
  function prefetch(url) {
    if (prefetched[url]) {
      return prefetched[url];
    }
    var urls = Object.keys(prefetched);
    if (urls.length >= PREFETCHES_KEPT) {
      delete prefetched[urls[0]]; // never taken: the page moved on before its callback ran
    }
    prefetched[url] = fetchJson(url);
    prefetched[url].catch(function () { /* the callback that takes it reports it */ });
    return prefetched[url];
  }

  function fetchOnce(url) {
    var answer = prefetched[url] || fetchJson(url);
    delete prefetched[url];
    return answer;
  }

  function jsonQuery(base, values) {
    var query = new URLSearchParams();
    Object.keys(values).forEach(function (name) {
      query.set(name, JSON.stringify(values[name] === undefined ? null : values[name]));
    });
    return base + "?" + query.toString();
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

  // The sample row of a plotly hover/click event: rows travel in customdata, never coordinates.
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

  // A key press meant for the page's shortcuts: not typed into a field, no modifier, no modal
  // open (Escape and the arrows belong to the modal then).
  function isPlainKey(event) {
    var target = event.target || {};
    var tag = (target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "select" || tag === "textarea" || target.isContentEditable) {
      return false;
    }
    return !(event.altKey || event.ctrlKey || event.metaKey || document.querySelector(".modal.show"));
  }

  // "/runs/x/thumb/{row}.png" + {row: 3} -> "/runs/x/thumb/3.png"
  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, function (match, name) {
      return name in values ? encodeURIComponent(String(values[name])) : match;
    });
  }

  // A packed array from the server (components/packing.py): {dtype, bdata (base64 of
  // little-endian bytes), shape, and lo + step when the values are lo + step * raw} -> a typed
  // array (Float32Array when scaled), flat in row-major order whatever its shape. Anything that
  // is not packed comes back as it is.
  var TYPED = {
    u1: Uint8Array, i1: Int8Array, u2: Uint16Array, i2: Int16Array,
    u4: Uint32Array, i4: Int32Array, f4: Float32Array,
  };

  function isPacked(value) {
    return !!value && typeof value === "object" && typeof value.bdata === "string" && value.dtype in TYPED;
  }

  function unpack(value) {
    if (!isPacked(value)) {
      return value;
    }
    var text = atob(value.bdata);
    var bytes = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) {
      bytes[i] = text.charCodeAt(i);
    }
    var raw = new TYPED[value.dtype](bytes.buffer);
    if (typeof value.step !== "number") {
      return raw;
    }
    var out = new Float32Array(raw.length);
    for (var j = 0; j < raw.length; j++) {
      out[j] = value.lo + value.step * raw[j];
    }
    return out;
  }

  // Exposed for the panel files, the browser tests and debugging from the console; each panel
  // keeps its state under state.<panel>.
  window.layerscope = {
    state: {},
    ids: shared.ids,
    constants: shared.constants,
    define: define,
    noUpdate: noUpdate,
    same: same,
    isNumber: isNumber,
    graphDiv: graphDiv,
    rowOf: rowOf,
    fill: fill,
    isPlainKey: isPlainKey,
    isPacked: isPacked,
    unpack: unpack,
    prefetch: prefetch,
    fetchOnce: fetchOnce,
    jsonQuery: jsonQuery,
  };
})();
