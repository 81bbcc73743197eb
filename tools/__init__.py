"""Repository tools that CI runs (supply-chain policy); not part of the service or the pipeline."""
