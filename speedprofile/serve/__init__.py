"""Serving layer: publish speed_estimates to PostGIS, query them, draw maps, write interchange exports.

Reads the warehouse with pyarrow (no Spark). Grain everywhere: one directed segment x 5-minute local
time-of-week bucket (0..2015, Sunday 00:00 local = 0).
"""
