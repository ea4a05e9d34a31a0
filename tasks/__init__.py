"""The jobs built on the ``perceiver`` library: data, masking, recipes, demos."""
