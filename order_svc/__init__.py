"""The order service: checkout, payment within the window, and the buyer's orders."""
