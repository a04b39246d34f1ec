"""Measurements with torch: the plain-torch models, the profiler, the real serving loop, the Vidur
import and the calibration fit."""
