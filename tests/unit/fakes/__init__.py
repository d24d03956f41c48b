"""In-memory stand-ins for the cart's and the order's repositories, pool and the services they call."""
