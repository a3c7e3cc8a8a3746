"""Reading and writing run outputs: the results.json contract, figures, tables."""
