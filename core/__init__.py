"""What every stage shares: the config schema, text and vocabulary helpers,
the caption metrics, the feature extractors and the names of features and
signatures. It imports no other package of this project."""
