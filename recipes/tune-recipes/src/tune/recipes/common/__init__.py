"""Setup steps that several recipes share: each assembles library pieces from a config section.

The training logic itself lives in the libraries; these functions only translate config values
into library calls, so that every recipe builds a model, data or outputs the same way.
"""
