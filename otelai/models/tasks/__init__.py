"""One training/evaluation task per data set kind (see :mod:`otelai.models.task`)."""
