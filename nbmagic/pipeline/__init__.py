"""The recorded pipeline: pure data, analysis of cell code, and the notebook file."""
