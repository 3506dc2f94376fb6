"""A run's training curves as one chart readable from across the room.

Loss on the left axis (train solid, held-out dashed) and accuracy on the right (same dashes),
against the epoch (fractional for points inside an epoch). Big fonts and thick lines because
the chart is shown on a projector as often as on a laptop. Pure: takes only the record, so
the About panel and a live-training page draw the same figure.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from components.theme import DANGER, SUCCESS, base_layout
from pipelines.training import TrainingCurves

LOSS_COLOR = DANGER
ACCURACY_COLOR = SUCCESS
LINE_WIDTH = 4
FONT_SIZE = 20
STATE_TEXT = {
    "training": "training…",
    "done": "done",
    "stopped early": "stopped early",
    "cancelled": "cancelled",
}


def curves_figure(curves: TrainingCurves) -> go.Figure:
    """Traces, in order: train loss, held-out loss, train accuracy, held-out accuracy (the
    held-out ones only when the run held samples out). The best epoch (lowest held-out loss) is
    marked with a vertical line."""
    points = curves.points
    epochs = [point.epoch for point in points]
    traces: list[dict[str, Any]] = []

    def line(name: str, values: list[Any], color: str, dash: str, axis: str) -> None:
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": name,
                "x": epochs,
                "y": values,
                "yaxis": axis,
                "line": {"color": color, "width": LINE_WIDTH, "dash": dash},
                "marker": {"size": 8, "color": color},
                "hovertemplate": f"{name}<br>epoch %{{x:.2f}}: %{{y:.4g}}<extra></extra>",
            }
        )

    held_out = any(point.held_out_loss is not None for point in points)
    line("train loss", [p.train_loss for p in points], LOSS_COLOR, "solid", "y")
    if held_out:
        line("held-out loss", [p.held_out_loss for p in points], LOSS_COLOR, "dash", "y")
    line("train accuracy", [p.train_accuracy for p in points], ACCURACY_COLOR, "solid", "y2")
    if held_out:
        line(
            "held-out accuracy",
            [p.held_out_accuracy for p in points],
            ACCURACY_COLOR,
            "dash",
            "y2",
        )
    best = curves.best_epoch
    title = f"Training: {len(curves.epoch_points())} of {curves.settings.epochs} epochs, "
    title += STATE_TEXT.get(curves.state, curves.state)
    accuracy = curves.best_held_out_accuracy()
    if accuracy is not None:
        # On a line of its own: one line overflowed a half-width card at 1366 px.
        title += f"<br><span style='font-size:{FONT_SIZE}px'>best held-out {accuracy:.1%}</span>"
    font = {"size": FONT_SIZE}
    layout = base_layout(
        title={"text": title, "font": {"size": FONT_SIZE + 4}},
        font=font,
        margin={"l": 80, "r": 90, "t": 90, "b": 130},
        height=460,
        xaxis={"title": {"text": "epoch", "font": font}, "tickfont": font, "rangemode": "tozero"},
        yaxis={
            "title": {"text": "loss", "font": {**font, "color": LOSS_COLOR}},
            "tickfont": {**font, "color": LOSS_COLOR},
            "rangemode": "tozero",
        },
        yaxis2={
            "title": {"text": "accuracy", "font": {**font, "color": ACCURACY_COLOR}},
            "tickfont": {**font, "color": ACCURACY_COLOR},
            "overlaying": "y",
            "side": "right",
            "range": [0, 1.02],
            "tickformat": ".0%",
            "dtick": 0.2,  # 0%, 20%, … rather than 21%, 42%, … of the padded range
            "showgrid": False,
        },
        # Below the axis title: at -0.22 the two rows of entries covered "epoch".
        legend={"orientation": "h", "y": -0.3, "yanchor": "top", "x": 0, "font": font},
        shapes=[]
        if best is None
        else [
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": best,
                "x1": best,
                "y0": 0,
                "y1": 1,
                "line": {"color": "#adb5bd", "width": 2, "dash": "dot"},
            }
        ],
    )
    return go.Figure({"data": traces, "layout": layout})
