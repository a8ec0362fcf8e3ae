"""See prokshy/__init__.py for the layer map."""
