"""`kilotok train-draft`: self-distillation data, target features, training-time-test training, evaluation."""
