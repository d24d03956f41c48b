"""The inventory service: the single owner and writer of stock, under per-SKU advisory locks."""
