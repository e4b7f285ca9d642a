"""fintrace: how every TCP connection in a packet capture ended."""

from fintrace._native import choose

__version__ = "0.1.0"

#: True when the core modules run compiled (mypyc), False when pure Python;
#: ``fintrace --version`` says which.
COMPILED = choose()
