"""Thin typer command line apps over the engine."""
