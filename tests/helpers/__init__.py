"""Test helpers shared by the test modules: fake API servers, plan builders, shells, the browser fixtures."""
