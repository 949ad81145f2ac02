"""The serving pool: nodes, their launcher and the load balancer in front of them."""
