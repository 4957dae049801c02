"""The run store: typed marshalling, content-addressed values, runs, cache and lineage."""
