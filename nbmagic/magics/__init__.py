"""The IPython surface: one Magics class per area; each parses arguments, calls the library, displays."""
