"""The Ray shell: the only modules that import ray (Train, Data, Tune and tasks around the stages),
and what must be settled before ray is imported (local_cluster)."""
