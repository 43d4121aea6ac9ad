"""The documentation's tables, figures and plots, generated from the committed result files."""
