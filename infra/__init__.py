"""Local real services (Kafka broker in KRaft mode from Maven jars, Debian's redis-server), no Docker."""
