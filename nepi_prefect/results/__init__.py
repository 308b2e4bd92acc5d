"""Results: tables of runs and campaigns, manifests, comparisons and plots.

Import what you need from its module; this package re-exports the main entry points.
"""
