"""The ``figure`` command: a run's architecture for a paper, as an SVG or PDF file.

The same figure and renderer as the page's "SVG" / "PDF" buttons (``components.architecture.
publication_figure`` drawn by kaleido with the machine's Chromium, see
``dashboard/figure_export.py``); the file is written atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import cast

from cli_explain import open_run
from components.architecture import publication_figure
from dashboard.figure_export import MIMETYPES, ExportFailed, Format, Renderer
from pipelines.errors import UserError
from pipelines.io import atomic_write_bytes


def output_format(out: Path) -> Format:
    """The format ``--out``'s extension names; a UserError for anything else, or a path
    that cannot be written."""
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in MIMETYPES:
        raise UserError(f"--out must end in .svg or .pdf, not '{out.name}'")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'arch.svg'}")
    if not out.parent.is_dir():
        raise UserError(f"the folder of --out, {out.parent}, does not exist; create it first")
    return cast(Format, fmt)


def figure_command(args: argparse.Namespace) -> None:
    out = Path(args.out).expanduser()
    fmt = output_format(out)
    layers = open_run(args.data_dir, args.run).read_record().layers  # the model stage is done
    renderer = Renderer(idle_close_s=0)
    try:
        data = renderer.render(publication_figure(layers, args.collapsed), fmt)
    except ExportFailed as exc:
        raise UserError(f"{exc}; try again, or check that the browser works") from None
    finally:
        renderer.close()
    try:
        atomic_write_bytes(out, data)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"wrote {out} ({len(data):,} bytes)")
