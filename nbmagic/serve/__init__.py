"""Serving: packaging a model and its transformer, KServe's model server locally, InferenceServices."""
