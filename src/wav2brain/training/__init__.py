"""Brain refinement as a recipe: two-stage training of ``Wav2Vec2ForBrainEncoding``."""
