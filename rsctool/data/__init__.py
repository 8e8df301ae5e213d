"""Dataset readers (plain functions that return manifest records) and manifest io."""
