"""The local stack: a real Kafka broker and a real InfluxDB server on 127.0.0.1."""
