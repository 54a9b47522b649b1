"""Readers, writers and file-system helpers; the only place that knows file layouts."""
