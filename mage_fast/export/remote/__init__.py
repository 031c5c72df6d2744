"""The files an HF export folder ships as remote code (``trust_remote_code=True``). They import
torch and transformers only: a folder that holds them loads where mage_fast is not installed."""
