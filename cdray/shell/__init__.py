"""The Ray shell: the only modules that import ray (Train, Data, Tune and tasks around the stages)."""
