"""One module per subcommand. Modules here import only typer and the standard library at top level."""
