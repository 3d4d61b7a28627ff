"""A sweep as a whole, without Ray: its plan and identity, what it logs to MLflow, and its report."""
