"""The suite-wide audit: stock, carts, orders, payments and the catalog's units sold agree with each other."""
