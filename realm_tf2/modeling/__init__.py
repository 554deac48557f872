"""REALM / ORQA Keras models, losses and train-step helpers."""
