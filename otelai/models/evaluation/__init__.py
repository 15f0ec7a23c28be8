"""Evaluation of trained bundles: shared metrics (:mod:`.metrics`) and the report (:mod:`.report`)."""
