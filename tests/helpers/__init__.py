"""Helpers shared by tests: fixtures that are not fixtures (servers, fixture repositories, toy nets)."""
