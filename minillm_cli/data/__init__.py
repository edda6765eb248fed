"""Data in: instruction and text files, the prompt templates, tokenising and packing, token batches.

The modules, each importing only ones listed before it: ``records`` (file readers), ``hub`` (hub datasets),
``sources`` (a data source to records), ``instructions`` (examples, field mapping), ``splits`` (train / valid /
test), ``prompts`` (templates), ``tokenization`` (token ids), ``texts`` (plain text packed for the LM loss),
``batches`` (padded token batches with the loss mask). Heavy libraries (torch, datasets, pyarrow) are imported
inside the functions that need them, so that importing these modules stays cheap.
"""
