/*
 * The new-run page (dashboard/panels/new_run.py): which page shows (/new or the explorer), which
 * parts of the form show for the chosen sources, and the uploads. A chosen file is posted to its
 * upload route (data-upload) as multipart, with the upload's progress shown; the server checks
 * and stores it and answers {spec, summary} or {error}; the spec goes into the form's store.
 */
(function () {
  "use strict";

  var ls = window.layerscope;
  var dc = window.dash_clientside;
  var ids = ls.ids;
  var NEW_PATH = ls.constants.newPath;

  ls.define("showNewPage", function (pathname) {
    var onNew = pathname === NEW_PATH;
    return {
      explore: onNew ? { display: "none" } : {},
      page: onNew ? {} : { display: "none" },
      poll: !onNew,
      link: onNew ? "← Explore runs" : "New run",
      href: onNew ? "/" : NEW_PATH,
    };
  });

  // "ls-new-page dataset-upload model-torchvision" (+ " no-training" for a model used as it is):
  // layerscope.css shows the matching source boxes.
  ls.define("showSources", function (datasetSource, modelSource, fineTune) {
    var classes = ["ls-new-page", "dataset-" + datasetSource, "model-" + modelSource];
    if (modelSource === "upload" || (modelSource === "torchvision" && fineTune === "none")) {
      classes.push("no-training");
    }
    return classes.join(" ");
  });

  // Which store and status line belong to each file input.
  var TARGETS = {};
  TARGETS[ids.NEW_DATASET_FILE] = { store: ids.NEW_DATASET_UPLOAD, status: ids.NEW_DATASET_STATUS };
  TARGETS[ids.NEW_MODEL_FILE] = { store: ids.NEW_MODEL_UPLOAD, status: ids.NEW_MODEL_STATUS };

  function say(target, text) {
    dc.set_props(target.status, { children: text });
  }

  function megabytes(bytes) {
    return (bytes / 1048576).toFixed(1) + " MB";
  }

  function send(button, file) {
    var target = TARGETS[button.id];
    if (!target || !file) {
      return;
    }
    dc.set_props(target.store, { data: null });
    var form = new FormData();
    form.append("file", file);
    form.append("name", file.name);
    var request = new XMLHttpRequest();
    request.open("POST", button.getAttribute("data-upload"));
    request.upload.onprogress = function (event) {
      if (event.lengthComputable) {
        var percent = Math.round((100 * event.loaded) / event.total);
        say(target, "uploading " + file.name + ": " + percent + "% of " + megabytes(event.total));
      }
    };
    request.upload.onload = function () {
      say(target, "checking " + file.name + " on the server…");
    };
    request.onload = function () {
      var answer = {};
      try {
        answer = JSON.parse(request.responseText);
      } catch (e) {
        answer = { error: "the server answered " + request.status + " without a message" };
      }
      if (request.status === 200 && answer.spec) {
        dc.set_props(target.store, { data: { spec: answer.spec, summary: answer.summary } });
        say(target, "✓ " + answer.summary);
      } else {
        say(target, "✗ " + (answer.error || "upload failed (" + request.status + ")"));
      }
    };
    request.onerror = function () {
      say(target, "✗ the upload did not reach the server; is it still running?");
    };
    say(target, "uploading " + file.name + "…");
    request.send(form);
  }

  // Dash has no file input: a click on a data-upload button opens the browser's file chooser
  // through a detached <input type=file>, and the chosen file is sent at once.
  document.addEventListener("click", function (event) {
    var button = event.target && event.target.closest && event.target.closest("[data-upload]");
    if (!button) {
      return;
    }
    var input = document.createElement("input");
    input.type = "file";
    input.accept = button.getAttribute("data-accept") || "";
    input.addEventListener("change", function () {
      send(button, input.files && input.files[0]);
    });
    input.click();
  });
})();
