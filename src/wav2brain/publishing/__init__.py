"""Exporting refined models, their model cards, and pushing them to the Hugging Face Hub."""
