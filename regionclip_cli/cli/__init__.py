"""The command-line layer: one module per command; each parses options, makes one library call and renders the result."""
