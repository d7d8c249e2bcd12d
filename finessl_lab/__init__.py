"""finessl_lab: reproduce, explore and extend FineSSL (Gan & Wei, ICML 2024) and its relatives."""
__version__ = "0.1.0"
