/*
 * Figure downloads (components/figure_download.py): the "PNG" / "SVG" buttons beside a graph
 * save its figure as the page shows it now, drawn by plotly.js in the browser
 * (Plotly.downloadImage), with no server round trip. One callback serves every control: the
 * clicked button's id names the format, the control's store names the graph and the file.
 */
(function () {
  "use strict";

  var ls = window.layerscope;
  var dc = window.dash_clientside;

  // target: {graph, filename, scale: {png, svg}} from the control's store.
  ls.define("downloadFigure", function (pngClicks, svgClicks, target) {
    var trigger = dc.callback_context.triggered_id;
    var format = trigger && trigger.format;
    var gd = target && ls.graphDiv(target.graph);
    if (!format || !gd || !gd._fullLayout || !window.Plotly) {
      return dc.no_update;
    }
    var layout = gd._fullLayout;
    window.Plotly.downloadImage(gd, {
      format: format,
      filename: target.filename,
      width: layout.width,
      height: layout.height,
      scale: (target.scale && target.scale[format]) || 1,
    }).catch(function (error) {
      console.warn("layerscope: could not save the figure of " + target.graph + ": " + error);
    });
    return dc.no_update;
  });
})();
