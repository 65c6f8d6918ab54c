"""Synthetic AvaMERG-format corpus with emotion carried by voice and face (see corpus.py)."""
