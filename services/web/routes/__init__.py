"""The HTTP routes, thin: parse, call a service function, shape the answer."""
