"""Search spaces: strict YAML loading, schema, genome codec."""
