"""SPAE lab."""
