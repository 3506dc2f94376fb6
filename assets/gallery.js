/*
 * Gallery (dashboard/panels/gallery.py): pages through the selection's rows, which the server
 * resolved and sorted (SELECTION_ROWS). Thumbnails come by URL from the run's read-only route
 * and load lazily; captions come from the inspector's per-run table, so a page of 200 is drawn
 * without another request. Hovering a thumbnail previews the sample in the inspector
 * (GALLERY_HOVER), clicking pins it; both through set_props, as the top-10 bars do.
 */
(function () {
  "use strict";

  var ls = window.layerscope;
  var dc = window.dash_clientside;
  var IDS = ls.ids;
  var state = (ls.state.gallery = { signature: null, hovered: null, drawn: 0, drawnAt: null });

  function element() {
    var gallery = document.getElementById(IDS.GALLERY);
    if (gallery && !gallery.dataset.listening) {
      gallery.dataset.listening = "1";
      gallery.addEventListener("mouseover", function (event) {
        var item = event.target.closest(".ls-gallery-item");
        var row = item ? Number(item.dataset.row) : null;
        if (row !== state.hovered) {
          state.hovered = row;
          dc.set_props(IDS.GALLERY_HOVER, { data: row });
        }
      });
      gallery.addEventListener("mouseleave", function () {
        state.hovered = null;
        dc.set_props(IDS.GALLERY_HOVER, { data: null });
      });
      gallery.addEventListener("click", function (event) {
        var item = event.target.closest(".ls-gallery-item");
        if (item) {
          ls.pinRow(Number(item.dataset.row));
        }
      });
    }
    return gallery;
  }

  // The resolved selection (SELECTION_ROWS) as the page reads it: dashboard/panels/gallery.py
  // packs its per-row integers, unpacked here once per payload into typed arrays.
  var unpackedSelections = new WeakMap();

  ls.selectionRows = function (payload) {
    if (!payload || payload.error) {
      return payload;
    }
    var unpacked = unpackedSelections.get(payload);
    if (!unpacked) {
      unpacked = Object.assign({}, payload, {
        rows: ls.unpack(payload.rows),
        issue: ls.unpack(payload.issue),
        suggested: ls.unpack(payload.suggested),
        corrected: ls.unpack(payload.corrected),
        // What identifies the corrections in a signature: the packed text, not 60,000 numbers.
        correctedKey: ls.isPacked(payload.corrected) ? payload.corrected.bdata : "",
      });
      unpackedSelections.set(payload, unpacked);
    }
    return unpacked;
  };

  // ---- the selection's rows: fetched from the server's route (SELECTION_URL in gallery.py) by
  // resolveSelection; a click that makes a selection starts the request first
  // (ls.prefetchSelection, from assets/workbench.js). What else the answer depends on (run
  // version, corrections, order, similarity threshold) is whatever resolveSelection last ran
  // with: each of them changing runs it again.
  var resolving = { version: null, corrections: null, sort: null, threshold: null };

  function selectionUrl(key, version, corrections, sort, threshold) {
    return ls.jsonQuery(ls.constants.selectionUrl, {
      key: key || null, sort: sort || null, threshold: threshold === undefined ? null : threshold,
      version: version || null, corrections: corrections === undefined ? null : corrections,
    });
  }

  // The map highlights the answer at once (ls.highlightSelection, assets/embedding.js), unless
  // a later click has asked for another selection meanwhile. The promise settles once it has.
  var latestPrefetch = 0;

  ls.prefetchSelection = function (run, sel) {
    var r = resolving;
    var ticket = ++latestPrefetch;
    return ls.prefetch(selectionUrl({ run: run, sel: sel }, r.version, r.corrections, r.sort, r.threshold))
      .then(function (answer) {
        if (ticket === latestPrefetch && answer && ls.highlightSelection) {
          ls.highlightSelection(answer.rows);
        }
      });
  };

  ls.define("resolveSelection", function (key, version, corrections, sort, threshold) {
    resolving = { version: version, corrections: corrections, sort: sort, threshold: threshold };
    if (!key || !key.run) {
      return { rows: null, text: "" };
    }
    return ls.fetchOnce(selectionUrl(key, version, corrections, sort, threshold)).then(null, function (error) {
      var text = "The selection could not be resolved: " + error.message;
      return {
        rows: { run: key.run, error: text, rows: [], count: 0, all: true },
        text: { type: "Span", namespace: "dash_html_components", props: { children: text, className: "text-warning" } },
      };
    });
  });

  function node(tag, className, text) {
    var el = document.createElement(tag);
    el.className = className;
    if (text !== undefined) {
      el.textContent = text;
    }
    return el;
  }

  function message(gallery, text) {
    gallery.replaceChildren(node("div", "ls-hint p-2", text));
  }

  function item(payload, index, table, info, pinned) {
    var row = payload.rows[index];
    var names = payload.classNames;
    var figure = node("figure", "ls-gallery-item" + (row === pinned ? " is-pinned" : ""));
    figure.dataset.row = String(row);
    var image = document.createElement("img");
    image.loading = "lazy";
    image.decoding = "async";
    image.alt = "row " + row;
    if (info.hasThumbnails) {
      image.src = ls.fill(info.urls.thumb, { row: row });
    }
    figure.appendChild(image);
    var truth = table.label[row];
    var caption = node("figcaption", "ls-gallery-caption");
    var predicted = table.pred ? table.classes[table.pred[row]] : "?";
    var wrong = table.correct && table.correct[row] === 0;
    caption.appendChild(node("span", "ls-gallery-true", truth));
    caption.appendChild(node("span", "ls-gallery-pred" + (wrong ? " is-wrong" : ""), "→ " + predicted));
    figure.appendChild(caption);
    var title = "row " + row + "\ntrue: " + truth + "\npredicted: " + predicted;
    if (payload.issue[index]) {
      var suggested = payload.suggested[index] >= 0 ? names[payload.suggested[index]] : "?";
      figure.appendChild(node("span", "ls-gallery-mark is-issue", "!"));
      title += "\nlikely label issue; suggested: " + suggested;
    }
    if (payload.corrected[index] >= 0) {
      figure.appendChild(node("span", "ls-gallery-mark is-corrected", "✓"));
      title += "\ncorrected to: " + names[payload.corrected[index]];
    }
    if (payload.sortValue && payload.sortValue[index] !== null) {
      title += "\n" + payload.sortName + ": " + payload.sortValue[index];
    }
    figure.title = title;
    return figure;
  }

  ls.pinRow = function (row) {
    state.pins = (state.pins || 0) + 1;
    dc.set_props(IDS.GALLERY_PIN, { data: { row: row, n: state.pins } });
  };

  ls.define("pinFromGallery", function (pin) {
    if (!pin || !ls.isNumber(pin.row)) {
      return ls.noUpdate();
    }
    return new dc.Patch().assign(["pinned"], pin.row).assign(["upload"], null).build();
  });

  ls.define("renderGallery", function (payload, page, table, info, selection) {
    table = ls.inspectorTable(table);
    payload = ls.selectionRows(payload);
    var gallery = element();
    if (!gallery) {
      return {};
    }
    var pinned = selection && ls.isNumber(selection.pinned) ? selection.pinned : null;
    if (!payload || payload.error || !table || !info || info.error || payload.run !== info.run) {
      message(gallery, payload && payload.error ? payload.error : "no selection yet");
      state.signature = null;
      return { pageText: "", prevDisabled: true, nextDisabled: true };
    }
    var size = ls.constants.gallery.pageSize;
    var pages = Math.max(1, Math.ceil(payload.count / size));
    var current = Math.min(Math.max(0, page || 0), pages - 1);
    var signature = JSON.stringify([payload.sel, payload.count, payload.rows.length && payload.rows[0],
      payload.sortName, payload.corrected.length, current, info.run, info.version, pinned, payload.correctedKey, payload.issue.length]);
    var out = {
      pageText: payload.count ? "page " + (current + 1) + " of " + pages + " · " + payload.count.toLocaleString() + " samples" : "",
      prevDisabled: current <= 0,
      nextDisabled: current >= pages - 1,
    };
    if (signature === state.signature) {
      return out;
    }
    state.signature = signature;
    if (!payload.count) {
      message(gallery, "the selection is empty");
      return out;
    }
    var start = current * size, end = Math.min(payload.count, start + size);
    var items = [];
    for (var i = start; i < end; i++) {
      items.push(item(payload, i, table, info, pinned));
    }
    gallery.replaceChildren.apply(gallery, items);
    gallery.scrollTop = 0;
    state.drawn = items.length;
    state.drawnAt = performance.now();
    return out;
  });

  ls.define("galleryPage", function (prev, next, payload, page) {
    var triggered = dc.callback_context && dc.callback_context.triggered;
    var id = triggered && triggered.length ? triggered[0].prop_id.split(".")[0] : null;
    if (id === IDS.SELECTION_ROWS) {
      // A new selection or order starts at its first page; the same one re-sent (after a
      // relabel) stays where the user is.
      var what = payload ? payload.run + "|" + payload.sel + "|" + payload.sortName : null;
      var changed = what !== state.pagedFor;
      state.pagedFor = what;
      return changed ? 0 : ls.noUpdate();
    }
    var size = ls.constants.gallery.pageSize;
    var pages = payload ? Math.max(1, Math.ceil(payload.count / size)) : 1;
    var current = page || 0;
    if (id === IDS.GALLERY_PREV) {
      return Math.max(0, current - 1);
    }
    if (id === IDS.GALLERY_NEXT) {
      return Math.min(pages - 1, current + 1);
    }
    return ls.noUpdate();
  });
})();
