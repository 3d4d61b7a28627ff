"""The sweep's DAG: content keys, the artifact store (local or remote), the stage table, the graph and its plan."""
