"""The catalog service: products, categories, prices and units sold, with listing and search."""
