"""Small helpers every layer may use: torch utilities, command-line key=value parsing."""
