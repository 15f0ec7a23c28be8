"""Model bundles and their lifecycle: the bundle format, training and evaluation per data set."""
