"""Data collection: feedback records, curated files, validation, splits and dataset versions."""
