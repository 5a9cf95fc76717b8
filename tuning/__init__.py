"""Hyperparameter tuning with Keras Tuner (`python -m tuning.tune`)."""
