"""Model files: resolution and hashing on the client, the classifier, random-weight demo models."""
