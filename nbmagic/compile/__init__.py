"""Compile a pipeline plan to a KFP v2 pipeline."""
