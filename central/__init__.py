"""Teiten central: storage, regions and reports."""
