"""stream-detector: streaming anomaly detection for Kafka pipelines."""

__version__ = "0.1.0"
