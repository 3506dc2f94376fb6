"""One module per panel, each exposing ``layout()`` and its callbacks (recorded on import)."""

from dashboard.panels import about, activations, controls, embedding, inspector, model_view, tour

__all__ = ["about", "activations", "controls", "embedding", "inspector", "model_view", "tour"]
