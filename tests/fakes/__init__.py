"""Protocol-faithful fake servers shared by the tests (see each module)."""
