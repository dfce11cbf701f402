"""Experiment drivers built from `sidgr` commands: the pipeline stages and the demo."""
