"""prokshy's trial test suite."""
