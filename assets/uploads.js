/*
 * The user's own images (dashboard/panels/uploads.py): the tab's upload session, a click on an
 * upload's button selecting it (the inspector and the activation grid then show it), and its
 * star in the map, where the server placed it for the view on screen.
 */
(function () {
  "use strict";

  var ls = window.layerscope;
  var dc = window.dash_clientside;
  var state = (ls.state.uploads = { points: null });

  ls.define("ensureUploadSession", function (_token, session) {
    if (typeof session === "string" && /^[0-9a-f]{32}$/.test(session)) {
      return dc.no_update;
    }
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.from(bytes, function (b) { return b.toString(16).padStart(2, "0"); }).join("");
  });

  ls.define("uploadsView", function (view, uploads) {
    if (!uploads || !uploads.length) {
      // Stars left from a run switch or a cleared list go; no request is made.
      if (state.points) {
        state.points = null;
        if (ls.redrawUploads) {
          ls.redrawUploads();
        }
      }
      return dc.no_update;
    }
    return Object.assign({ uploads: uploads.map(function (u) { return u.id; }) }, view);
  });

  ls.define("pickUpload", function (clicks) {
    var triggered = (dc.callback_context.triggered || [])[0];
    if (!triggered || !triggered.value) {
      return dc.no_update;  // the buttons were (re)drawn, not clicked
    }
    var id = JSON.parse(triggered.prop_id.split(".")[0]).id;
    return new dc.Patch().assign(["upload"], id).assign(["pinned"], null).build();
  });

  // The stars' trace for the embedding figure whose key is `key`, or null when the placements
  // on hand are for another view (they follow a layer switch once the server placed them).
  ls.uploadTrace = function (key) {
    var placed = state.points;
    if (!placed || !placed.points || !key || String(key).indexOf(placed.key + "|") !== 0) {
      return null;
    }
    return {
      x: placed.points.map(function (p) { return p.x; }),
      y: placed.points.map(function (p) { return p.y; }),
      text: placed.points.map(function (p) { return p.name; }),
      customdata: placed.points.map(function (p) { return ["upload", p.id]; }),
    };
  };

  // Draws the stars; says why they are missing when the server could not place them.
  ls.define("drawUploads", function (points) {
    state.points = points;
    if (ls.redrawUploads) {
      ls.redrawUploads();
    }
    return (points && points.error) || "";
  });
})();
