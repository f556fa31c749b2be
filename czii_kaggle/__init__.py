"""czii_kaggle: find protein complexes in cryo-ET tomograms with an offline YOLO 2.5D detector."""
__version__ = "0.1.0"
