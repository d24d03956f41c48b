"""The cart service: each user's cart, whose lines hold units in inventory."""
