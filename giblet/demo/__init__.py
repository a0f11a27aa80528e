"""The built-in demo data set (DESIGN.md, "The demo data set")."""

from giblet.demo.generate import make_demo, output_paths, subject_ids

__all__ = ["make_demo", "output_paths", "subject_ids"]
