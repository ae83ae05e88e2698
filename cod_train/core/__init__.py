"""The bottom layer: errors, the hub's offline handling, file and cache helpers. Imports no other cod_train package."""
