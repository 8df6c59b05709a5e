"""The data quality component."""
