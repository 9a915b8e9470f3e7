"""A client of the exported SavedModel: captions and attention figures."""
