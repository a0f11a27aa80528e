"""The built-in demo data set (DESIGN.md, "The demo data set").

``giblet.demo.generate.make_demo`` writes it; ``giblet.demo.layout`` says where, without importing
the generator.
"""
