"""SUPERB-style downstream probing of speech models, offline tasks included."""
