"""One module per gate; ``gates.registry`` maps names to them through settings."""
