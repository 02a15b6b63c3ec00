"""The FUT twin: a simulation and load-testing digital twin of Denmark's national telemedicine
infrastructure for COPD (KOL) home monitoring."""

__version__ = "0.1.0"
