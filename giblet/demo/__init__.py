"""The built-in demo data set: a synthetic movie, its annotations, several subjects' fMRI and the
ground truth that generated them, so the whole pipeline runs (and its scores can be checked against
known answers) without downloading anything.

``giblet.demo.generate.make_demo`` writes it; ``giblet.demo.layout`` says where, without importing
the generator.
"""
