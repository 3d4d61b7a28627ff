"""MLflow: one parent run per sweep, one child per cell, and a lean tracking server."""
