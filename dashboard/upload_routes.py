"""The "new run" page's uploads: a zip of class folders, or a TorchScript model, over HTTP.

    POST /upload/dataset   multipart: file=<the .zip>, name=<what to call it> (optional)
    POST /upload/model     multipart: file=<the TorchScript .pt>, name=<what to call it> (optional)

    200 {"spec": "folder:/…" | "torchscript:/…", "summary": "<one line for the page>"}
    400 {"error": "<what is wrong and what to do>"}   (no file, a bad archive or model)
    413 {"error": "... larger than N MB ..."}          (over the size limit)
    500 {"error": "internal error ...; see the server log"}

The request's size is capped for these routes only (``request.max_content_length``: the file's
limit plus room for the multipart headers), so Werkzeug stops reading a body past it; the import
then copies the file into the data dir with its own cap while reading. The client's file name is
never a path: it is a name to show, and the folder names come from the content's hash. Imports
run in the request (a few seconds for a large zip).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import IO

import flask
from werkzeug.exceptions import RequestEntityTooLarge

from pipelines import archives, model_uploads
from pipelines.archives import UploadTooLarge, import_dataset_zip
from pipelines.errors import UserError
from pipelines.model_uploads import import_torchscript

LOG = logging.getLogger(__name__)
DATASET_URL = "/upload/dataset"
MODEL_URL = "/upload/model"
# Multipart boundaries, part headers and the name field, beyond the file itself.
MULTIPART_ROOM = 64 << 10


def _json(body: dict[str, str], status: int) -> flask.Response:
    response = flask.jsonify(body)
    response.status_code = status
    return response


def _upload_view(
    importer: Callable[[IO[bytes], str], tuple[str, str]], limit: Callable[[], int], what: str
) -> Callable[[], flask.Response]:
    """A view that takes the multipart ``file`` and answers JSON; ``limit()`` is read per
    request, so the module constants stay the one place a limit is set."""

    def view() -> flask.Response:
        flask.request.max_content_length = limit() + MULTIPART_ROOM
        try:
            upload = flask.request.files.get("file")
            if upload is None:
                raise UserError(f"no file in the request; send the {what} as the 'file' field")
            name = flask.request.form.get("name") or Path(upload.filename or what).stem
            spec, summary = importer(upload.stream, name)
        except RequestEntityTooLarge:
            return _json({"error": archives.too_large(f"the {what}", limit())}, 413)
        except UploadTooLarge as error:
            return _json({"error": str(error)}, 413)
        except UserError as error:
            return _json({"error": str(error)}, 400)
        except Exception:  # noqa: BLE001 - log it here; the page gets one line
            LOG.exception("upload failed: %s", flask.request.path)
            return _json({"error": "internal error while importing; see the server log"}, 500)
        return _json({"spec": spec, "summary": summary}, 200)

    view.__name__ = f"layerscope_upload_{what.replace(' ', '_')}"
    return view


def register_upload_routes(server: flask.Flask, data_dir: Path) -> None:
    """Attach ``POST /upload/dataset`` and ``POST /upload/model`` for ``data_dir``."""

    def dataset(stream: IO[bytes], name: str) -> tuple[str, str]:
        imported = import_dataset_zip(stream, data_dir, name)
        return imported.spec, imported.summary()

    def model(stream: IO[bytes], name: str) -> tuple[str, str]:
        imported = import_torchscript(stream, data_dir, name)
        return imported.spec, imported.summary()

    server.add_url_rule(
        DATASET_URL,
        view_func=_upload_view(dataset, lambda: archives.MAX_ZIP_BYTES, "archive"),
        methods=["POST"],
    )
    server.add_url_rule(
        MODEL_URL,
        view_func=_upload_view(model, lambda: model_uploads.MAX_MODEL_BYTES, "model file"),
        methods=["POST"],
    )
