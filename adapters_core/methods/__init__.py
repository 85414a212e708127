"""One package per adapter method; importing this package registers every method's config and tuner."""
