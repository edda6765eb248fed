"""Data in: instruction and text files, the prompt templates, tokenising and packing, token batches."""
