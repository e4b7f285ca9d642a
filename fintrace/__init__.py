"""fintrace: how every TCP connection in a packet capture ended."""

__version__ = "0.1.0"
