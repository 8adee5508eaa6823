"""Delivery: the scheduler that claims spooled recipients, the worker processes that run the processing chain, and bounce notices."""
