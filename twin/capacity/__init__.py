"""Queueing theory, scalability fits and capacity recommendations."""
