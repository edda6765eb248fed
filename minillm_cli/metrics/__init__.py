"""Scores: Rouge-L as the paper computes it, and (later) exposure bias and calibration."""
