"""Everything that reads a finished output directory: query (trace, stats), exporters,
the dataset card and Croissant metadata, and the per-sample schema contract."""
