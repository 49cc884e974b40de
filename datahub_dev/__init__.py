"""The development harness: the local stack (endpoint, keys, environment), synthetic
sources, the demo and scratch databases. Not part of the product and not shipped in its
wheel; scripts/, tests/ and bench/ use it from the repository."""
