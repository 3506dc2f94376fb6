"""Read-only image routes: every picture on the page is a URL answered here, never base64.

    /runs/<run_id>/thumb/<row>.png                           the sample's thumbnail
    /runs/<run_id>/explain/<method>/<row>.png                precomputed, predicted class
    /runs/<run_id>/explain-class/<class>/<method>/<row>.png?layer=L  computed on demand
    /runs/<run_id>/activations/<layer>/<row>.png?sort=score  the tiled activation grid
    /runs/<run_id>/upload/<session>/<id>/thumb.png                        an uploaded picture,
    /runs/<run_id>/upload/<session>/<id>/explain/<class>/<method>.png     as the run's model
    /runs/<run_id>/upload/<session>/<id>/activations/<layer>.png?sort=    sees it
    /runs/<run_id>/figures/architecture.<svg|pdf>?blocks=collapsed  the diagram for a paper,
                                                                    as a download
    /figures/warm       starts the export browser ahead of a probable click (204, or 503)
    /maps/view?key=&version=&dims=2   the map's data for a view key (JSON; embedding.py)
    /selections/rows?key=&sort=&threshold=   a selection's rows (JSON; gallery.py)
    POST /upload/dataset, POST /upload/model   the new-run page's uploads (upload_routes.py)

Safety: ``run_id`` must be one of the listed runs (``RunCatalog.open``), ``method`` a registered
explanation method, ``layer`` a layer of that run; rows and classes are ASCII digits only (the
server's ``<int:>`` is ``security.AsciiIntegerConverter``: "١٢" is no row) checked against the
run. Files are then addressed only through ``RunStore``, so no request can name a path outside
the data dir. Errors answer 404 (user-fixable) or 500 with one plain line, never a traceback; a
figure export without a browser to render it answers 503; any other path under ``/runs/``
answers 404, not the page (``security.no_page_in_server_areas``). With ``serve --auth`` every
route asks for the login first, and every answer carries the security headers
(``dashboard/security.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import flask
import numpy as np
from dash._utils import to_json

from components.activations import SORTS
from components.architecture import publication_figure
from components.images import encode_png, explanation_png
from dashboard import figure_export, ids
from dashboard.context import AppContext
from dashboard.data import RunData
from dashboard.figure_export import ExportFailed, ExportUnavailable, Format
from dashboard.upload_routes import register_upload_routes
from pipelines.errors import UserError
from pipelines.explain import EXPLAINERS

LOG = logging.getLogger(__name__)
# URLs carry the run's version (?v=), so a picture can be cached until the run is recomputed.
CACHE_SECONDS = 24 * 3600


def thumb_url(run: RunData, row: int | str) -> str:
    return f"/runs/{quote(run.run_id)}/thumb/{row}.png?v={run.version}"


def explanation_url(run: RunData, method: str, row: int | str) -> str:
    return f"/runs/{quote(run.run_id)}/explain/{method}/{row}.png?v={run.version}"


def class_explanation_url(
    run: RunData, class_index: int | str, method: str, row: int | str, layer: str | None = None
) -> str:
    """``layer``: the layer the Grad-CAM family weighs (None: the run's Grad-CAM layer)."""
    layer_query = f"&layer={quote(layer)}" if layer else ""
    return (
        f"/runs/{quote(run.run_id)}/explain-class/{class_index}/{method}/{row}.png"
        f"?v={run.version}{layer_query}"
    )


def upload_url(run: RunData, session: str, upload_id: str, rest: str) -> str:
    """``rest``: "thumb.png", "explain/<class>/<method>.png?layer=..", "activations/<layer>.png"."""
    joiner = "&" if "?" in rest else "?"
    return f"/runs/{quote(run.run_id)}/upload/{session}/{upload_id}/{rest}{joiner}v={run.version}"


def grid_url(run: RunData, layer_id: str, row: int, sort: str) -> str:
    return f"/runs/{quote(run.run_id)}/activations/{quote(layer_id)}/{row}.png?sort={sort}&v={run.version}"


def architecture_export_url(run: RunData, fmt: Format, collapsed: bool) -> str:
    blocks = "blocks=collapsed&" if collapsed else ""
    return f"/runs/{quote(run.run_id)}/figures/architecture.{fmt}?{blocks}v={run.version}"


def architecture_filename(run_id: str, fmt: Format, collapsed: bool) -> str:
    """ "digits-smallcnn-architecture.svg", "resnet50-architecture-collapsed.pdf"."""
    return f"{run_id}-architecture{'-collapsed' if collapsed else ''}.{fmt}"


WARM_EXPORT_URL = "/figures/warm"


def url_templates(run: RunData) -> dict[str, object]:
    """URL patterns with a "{row}" placeholder, for the browser's hover code. (Class
    explanations are computed on a click; their answer carries its URLs.)"""
    return {
        "thumb": thumb_url(run, "{row}"),
        "explain": {m: explanation_url(run, m, "{row}") for m in run.explanation_methods()},
    }


def _png(data: bytes) -> flask.Response:
    response = flask.Response(data, mimetype="image/png")
    response.headers["Cache-Control"] = f"private, max-age={CACHE_SECONDS}"
    return response


def _guarded(render: Callable[..., bytes]) -> Callable[..., flask.Response]:
    def view(**kwargs: object) -> flask.Response:
        try:
            return _png(render(**kwargs))
        except UserError as exc:
            return flask.Response(str(exc), status=404, mimetype="text/plain")
        except Exception:  # noqa: BLE001 - log it here; the browser gets one line
            LOG.exception("image route failed: %s", flask.request.path)
            return flask.Response(
                "internal error while drawing this image; see the server log",
                status=500,
                mimetype="text/plain",
            )

    view.__name__ = f"layerscope_{render.__name__}"
    return view


def _plain(text: str, status: int) -> flask.Response:
    return flask.Response(text, status=status, mimetype="text/plain")


def _collapsed() -> bool:
    blocks = flask.request.args.get("blocks", "expanded")
    if blocks not in ("collapsed", "expanded"):
        raise UserError("blocks must be collapsed or expanded")
    return blocks == "collapsed"


def _sort() -> str:
    sort = flask.request.args.get("sort", "score")
    if sort not in SORTS:
        raise UserError(f"sort must be one of {', '.join(SORTS)}")
    return sort


def _json_query(args: Mapping[str, str], stands_for: Mapping[str, tuple[str, str]]) -> dict:
    """The query values ``stands_for`` names, each sent as JSON and checked like the callback
    input (component id, property) it stands for; a malformed one is a UserError naming it."""
    from dashboard.callback_inputs import value_problem  # it imports the panels, they this

    values = {}
    for name, (component_id, prop) in stands_for.items():
        try:
            value = json.loads(args.get(name) or "null")
        except ValueError:
            raise UserError(f"{name} must be JSON") from None
        problem = value_problem(component_id, prop, value)
        if problem:
            raise UserError(f"{name} {problem}")
        values[name] = value
    return values


def _json_response(answer: Any) -> flask.Response:
    """An answer encoded as Dash encodes callback outputs (components, numpy, plotly)."""
    response = flask.Response(to_json(answer), mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def register_routes(server: flask.Flask, context: AppContext) -> None:
    """Attach the image routes (and the upload routes) for ``context``'s data dir to ``server``."""
    catalog, service = context.catalog, context.service
    register_upload_routes(server, context.data_dir)

    def thumbnail(run_id: str, row: int) -> bytes:
        run = catalog.open(run_id)
        return encode_png(np.asarray(run.thumbnails()[run.check_row(row)]))

    def explanation(run_id: str, method: str, row: int) -> bytes:
        run = catalog.open(run_id)
        row = run.check_row(row)
        values = run.explanation(method)[row]  # a UserError for an unknown method
        display = EXPLAINERS[method].display.value
        return explanation_png(display, values, run.thumbnails()[row])

    def class_explanation(run_id: str, class_index: int, method: str, row: int) -> bytes:
        run = catalog.open(run_id)
        layer = flask.request.args.get("layer") or None
        if layer is not None:
            run.layer(layer)
        return service.class_explanation_png(run, row, class_index, method, layer)

    def activation_grid(run_id: str, layer_id: str, row: int) -> bytes:
        run = catalog.open(run_id)
        run.layer(layer_id)
        return service.grid_png(run, row, layer_id, _sort())

    def upload_thumbnail(run_id: str, session: str, upload_id: str) -> bytes:
        run = catalog.open(run_id)
        return encode_png(service.thumbnail(run, context.uploads.sample(session, upload_id)))

    def upload_explanation(
        run_id: str, session: str, upload_id: str, class_index: int, method: str
    ) -> bytes:
        run = catalog.open(run_id)
        layer = flask.request.args.get("layer") or None
        if layer is not None:
            run.layer(layer)
        sample = context.uploads.sample(session, upload_id)
        return service.class_explanation_png(run, sample, class_index, method, layer)

    def upload_grid(run_id: str, session: str, upload_id: str, layer_id: str) -> bytes:
        run = catalog.open(run_id)
        run.layer(layer_id)
        return service.grid_png(run, context.uploads.sample(session, upload_id), layer_id, _sort())

    upload_prefix = "/runs/<run_id>/upload/<session>/<upload_id>"
    server.add_url_rule(f"{upload_prefix}/thumb.png", view_func=_guarded(upload_thumbnail))
    server.add_url_rule(
        f"{upload_prefix}/explain/<int:class_index>/<method>.png",
        view_func=_guarded(upload_explanation),
    )
    server.add_url_rule(
        f"{upload_prefix}/activations/<layer_id>.png", view_func=_guarded(upload_grid)
    )
    server.add_url_rule("/runs/<run_id>/thumb/<int:row>.png", view_func=_guarded(thumbnail))
    server.add_url_rule(
        "/runs/<run_id>/explain/<method>/<int:row>.png", view_func=_guarded(explanation)
    )
    server.add_url_rule(
        "/runs/<run_id>/explain-class/<int:class_index>/<method>/<int:row>.png",
        view_func=_guarded(class_explanation),
    )
    server.add_url_rule(
        "/runs/<run_id>/activations/<layer_id>/<int:row>.png", view_func=_guarded(activation_grid)
    )

    def architecture_export(run_id: str, fmt: Format) -> flask.Response:
        """The run's architecture in the publication style, as a file to save."""
        try:
            run = catalog.open(run_id)
            collapsed = _collapsed()
            if not run.layers:
                raise UserError(
                    f"run '{run_id}' has no layers yet (its precompute is describing the model); "
                    "try again in a moment"
                )
            data = figure_export.render(publication_figure(run.layers, collapsed), fmt)
        except ExportUnavailable as exc:
            if exc.__cause__ is None:  # no browser: the message says how to install one
                return _plain(str(exc), 503)
            # A browser that is there but would not start: the details are in the log.
            LOG.warning("figure export: %s", exc, exc_info=exc.__cause__)
            return _plain(f"{exc}; see the server log", 503)
        except UserError as exc:
            return _plain(str(exc), 404)
        except ExportFailed as exc:
            LOG.error("figure export: %s", exc, exc_info=exc.__cause__)
            return _plain(f"{exc}; see the server log", 500)
        except Exception:  # noqa: BLE001 - log it here; the browser gets one line
            LOG.exception("figure export failed: %s", flask.request.path)
            return _plain("internal error while exporting this figure; see the server log", 500)
        response = flask.Response(data, mimetype=figure_export.MIMETYPES[fmt])
        response.headers.set(
            "Content-Disposition",
            "attachment",
            filename=architecture_filename(run.run_id, fmt, collapsed),
        )
        response.headers["Cache-Control"] = f"private, max-age={CACHE_SECONDS}"
        return response

    server.add_url_rule(
        "/runs/<run_id>/figures/architecture.<any(svg, pdf):fmt>",
        endpoint="layerscope_architecture_export",
        view_func=architecture_export,
    )

    def warm_export() -> flask.Response:
        """The page's pointer reached the export buttons: start the browser now, so the click
        that follows skips its cold start (about 3 s)."""
        try:
            figure_export.warm()
        except ExportUnavailable as exc:
            return _plain(str(exc), 503)
        return flask.Response(status=204)

    server.add_url_rule(WARM_EXPORT_URL, endpoint="layerscope_warm_export", view_func=warm_export)

    # Imported here: the panels import this module for their URLs.
    from dashboard.panels import embedding, gallery

    def map_view() -> flask.Response:
        """The map's data for a view key (``embedding.view_answer``); a malformed query is a 400
        with one line. ``version`` only makes a newer run's answer a new URL."""
        try:
            query = _json_query(
                flask.request.args,
                {"key": (ids.VIEW_KEY, "data"), "version": (ids.RUN_MAPS_VERSION, "data")},
            )
            dims = flask.request.args.get("dims", "2")
            if dims not in ("2", "3"):
                raise UserError("dims must be 2 or 3")
        except UserError as exc:
            return _plain(str(exc), 400)
        return _json_response(
            embedding.view_answer(catalog, query["key"], query["version"], dims == "3")
        )

    def selection_rows() -> flask.Response:
        """A selection's rows (``gallery.selection_answer``); a malformed query is a 400 with
        one line. ``version`` and ``corrections`` only make a changed run's answer a new URL."""
        try:
            query = _json_query(
                flask.request.args,
                {
                    "key": (ids.SEL_KEY, "data"),
                    "sort": (ids.GALLERY_SORT, "value"),
                    "threshold": (ids.QUALITY_THRESHOLD, "value"),
                },
            )
        except UserError as exc:
            return _plain(str(exc), 400)
        return _json_response(
            gallery.selection_answer(catalog, query["key"], query["sort"], query["threshold"])
        )

    server.add_url_rule(embedding.VIEW_URL, endpoint="layerscope_map_view", view_func=map_view)
    server.add_url_rule(
        gallery.SELECTION_URL, endpoint="layerscope_selection_rows", view_func=selection_rows
    )
