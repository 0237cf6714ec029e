"""natstream: streaming request-response over NATS."""
