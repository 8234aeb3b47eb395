"""Workstation side: train, evaluate, predict and tune emotion classifiers (Keras 3)."""
