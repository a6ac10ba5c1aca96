"""Search strategies (ask/tell over genomes in [0, 1]^d; higher fitness is better)."""
