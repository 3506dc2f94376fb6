/*
 * Guided tour (dashboard/panels/tour.py): stepping, highlighting the step's panel, and Escape to
 * close it. Pure UI, so it runs here.
 */
(function () {
  "use strict";

  var ls = window.layerscope;
  var dc = window.dash_clientside;
  var IDS = ls.ids;

  ls.define("tourStep", function (start, next, back, close, step, steps) {
    var trigger = dc.callback_context.triggered_id;
    var count = (steps || []).length;
    if (trigger === IDS.TOUR_START) { return 0; }
    if (trigger === IDS.TOUR_CLOSE || step === null || step === undefined) { return null; }
    if (trigger === IDS.TOUR_NEXT) { return step + 1 < count ? step + 1 : null; }
    if (trigger === IDS.TOUR_BACK) { return Math.max(0, step - 1); }
    return ls.noUpdate();
  });

  ls.define("tourRender", function (step, steps) {
    document.querySelectorAll(".ls-tour-highlight").forEach(function (el) {
      el.classList.remove("ls-tour-highlight");
    });
    if (step === null || step === undefined || !steps || !steps[step]) {
      return { card: { display: "none" }, title: "", text: "", nextLabel: "Next", backDisabled: true };
    }
    var current = steps[step];
    var target = document.getElementById(current.target);
    if (target) {
      target.classList.add("ls-tour-highlight");
      target.scrollIntoView({ behavior: "smooth", block: "center" });
    }
    return {
      card: { display: "block" },
      title: current.title,
      text: current.text,
      nextLabel: step === steps.length - 1 ? "Finish" : "Next",
      backDisabled: step === 0,
    };
  });

  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape" || !ls.isPlainKey(event)) {
      return;
    }
    var card = document.getElementById(IDS.TOUR_CARD);
    if (card && card.style.display !== "none") {
      document.getElementById(IDS.TOUR_CLOSE).click();
    }
  });
})();
