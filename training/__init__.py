"""Training: dataset from Kafka, Horovod + TensorFlow training, evaluation report, promotion gate."""
