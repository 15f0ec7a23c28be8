"""Per-signal features, computed on whole batches with numpy (see issue 3, item 1)."""
