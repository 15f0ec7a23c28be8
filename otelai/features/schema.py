"""What the columns of a feature matrix mean, so a model can refuse features it was not trained on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FeatureSchema:
    """Column names of a float32 feature matrix, and a version that changes with their meaning.

    A detector saves the schema it was trained with; scoring checks equality, so a changed
    feature set fails loudly at load time instead of silently scoring garbage.
    """

    names: tuple[str, ...]
    version: str

    def __len__(self) -> int:
        return len(self.names)

    @property
    def width(self) -> int:
        """Number of columns."""
        return len(self.names)

    def index(self, name: str) -> int:
        """Column of feature ``name``."""
        return self.names.index(name)
