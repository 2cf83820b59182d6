"""Stream processing: faust-streaming agents wiring the pure stages to Kafka and InfluxDB."""
