"""The version of mmptq."""
__version__ = '0.1.0'
