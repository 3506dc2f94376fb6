"""Offline side of LayerScope: datasets, model adapters, precompute stages and the run store."""
