"""Reports: analyzers (records -> DataFrames) and renderers (DataFrames -> markdown, HTML)."""
